"""PyTorch adapter (Tucker layers, conversion, the TDLRT optimizer).

Reserved: the only place in tuckerflow that imports torch.
"""
