"""PyTorch adapter: Tucker layers, model conversion, adapters, the TDLRT optimizer.

The only part of tuckerflow that imports torch. The mathematics lives in the core
(:mod:`tuckerflow`), called here with TensorLy's pytorch backend.
"""

from . import models as models  # tuckerflow.nn.models.LeNet5, as api.rst lists
from .adapters import add_tucker_adapters, merge_adapters, trainable_parameters
from .attention import TuckerMultiheadAttention
from .checkpoint import load_checkpoint, save_checkpoint
from .convert import CompressionReport, compression_report, tuckerize
from .distributed import prepare_ddp
from .layers import TuckerConv1d, TuckerConv2d, TuckerConv3d, TuckerLayer, TuckerLinear
from .optim import TDLRT, linear_budget, register_ordinary_rule
from .registry import register_tucker_layer, registered_tucker_layers
from .transposed import (
    TuckerConvTranspose1d,
    TuckerConvTranspose2d,
    TuckerConvTranspose3d,
)

__all__ = [
    "TDLRT",
    "CompressionReport",
    "TuckerConv1d",
    "TuckerConv2d",
    "TuckerConv3d",
    "TuckerConvTranspose1d",
    "TuckerConvTranspose2d",
    "TuckerConvTranspose3d",
    "TuckerLayer",
    "TuckerLinear",
    "TuckerMultiheadAttention",
    "add_tucker_adapters",
    "compression_report",
    "linear_budget",
    "load_checkpoint",
    "merge_adapters",
    "prepare_ddp",
    "register_ordinary_rule",
    "register_tucker_layer",
    "registered_tucker_layers",
    "save_checkpoint",
    "trainable_parameters",
    "tuckerize",
]
