"""``nn.MultiheadAttention`` under tuckerize, TDLRT and adapters (issue 13.12).

The packed ``in_proj_weight`` ``(3E, E)`` is served by a contained TuckerLinear and
``out_proj`` (a ``NonDynamicallyQuantizableLinear``) becomes a TuckerLinear by the
isinstance dispatch. At full rank the converted module is the dense one: outputs and
attention weights agree to rounding (float64) in every mode (batch_first both ways,
attention and key-padding masks, the fused inference fast path), and TDLRT at full
rank with ``tol=0`` takes the dense SGD step.
"""

from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerLinear,
    TuckerMultiheadAttention,
    add_tucker_adapters,
    compression_report,
    merge_adapters,
    trainable_parameters,
    tuckerize,
)

D = torch.float64
E, HEADS = 8, 2


class _Block(nn.Module):
    def __init__(self, batch_first, **kwargs):
        super().__init__()
        self.attn = nn.MultiheadAttention(
            E, HEADS, batch_first=batch_first, dtype=D, **kwargs
        )
        self.batch_first = batch_first

    def forward(self, x, **masks):
        out, weights = self.attn(x, x, x, **masks)
        return out, weights


def _inputs(batch_first, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, E, generator=generator, dtype=D)  # (batch, seq, E)
    attn_mask = torch.rand(5, 5, generator=generator) > 0.6
    attn_mask[:, 0] = False  # every query sees key 0: no row is fully masked
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -2:] = True
    return (x if batch_first else x.transpose(0, 1)), attn_mask, padding


def _full_tucker(block):
    """tuckerize at full rank, ranks pinned (the converted module is exact)."""
    model = copy.deepcopy(block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank stores more than dense
        # rank E is full for the (3E, E) in_proj and the (E, E) out_proj
        tuckerize(model, rank=E, min_rank=E, max_rank=E, cap_at_dense=False)
    return model


@pytest.mark.parametrize("add_bias_kv", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_tuckerized_attention_at_full_rank_is_the_dense_attention(
    batch_first, add_bias_kv
):
    torch.manual_seed(0)
    block = _Block(batch_first, add_bias_kv=add_bias_kv)
    model = _full_tucker(block)
    attention = model.attn
    assert isinstance(attention, TuckerMultiheadAttention)
    assert isinstance(attention.in_proj, TuckerLinear)
    assert isinstance(attention.out_proj, TuckerLinear)
    assert attention.in_proj.rank == (E, E)  # a (3E, E) matrix has rank <= E
    assert "in_proj_weight" not in dict(attention.named_parameters())
    x, attn_mask, padding = _inputs(batch_first)
    for masks in (
        {},
        {"attn_mask": attn_mask},
        {"key_padding_mask": padding},
        {"attn_mask": attn_mask, "key_padding_mask": padding},
    ):
        expected, expected_weights = block(x, **masks)
        got, weights = model(x, **masks)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-12)
    probe = torch.randn_like(expected)
    x = x.clone().requires_grad_(True)
    (grad_dense,) = torch.autograd.grad((block(x)[0] * probe).sum(), x)
    (grad_tucker,) = torch.autograd.grad((model(x)[0] * probe).sum(), x)
    torch.testing.assert_close(grad_tucker, grad_dense, rtol=0, atol=1e-12)


def test_the_fused_inference_fast_path_runs_on_the_rebuilt_weights(monkeypatch):
    torch.manual_seed(0)
    block = _Block(batch_first=True).eval()
    model = _full_tucker(block).eval()
    calls = []
    native = torch._native_multi_head_attention

    def spy(*args, **kwargs):
        calls.append(args[5])  # the in_proj_weight it was given
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", spy)
    x, _, padding = _inputs(batch_first=True)
    with torch.no_grad():
        expected, _ = block(x, key_padding_mask=padding)
        got, _ = model(x, key_padding_mask=padding)
    assert len(calls) == 2, "both modules should take the fast path"
    torch.testing.assert_close(calls[1], block.attn.in_proj_weight, atol=1e-13, rtol=0)
    # padded positions of the fast path's nested output are zeros on both sides
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_transformer_encoder_layer_converts_attention_and_feed_forward():
    torch.manual_seed(0)
    dense = nn.TransformerEncoderLayer(
        E, HEADS, dim_feedforward=16, dropout=0.0, batch_first=True, dtype=D
    )
    model = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuckerize(model, tol=0.0, cap_at_dense=False)
    assert isinstance(model.self_attn, TuckerMultiheadAttention)
    assert isinstance(model.linear1, TuckerLinear)
    names = [row["name"] for row in compression_report(model).rows]
    assert names == ["self_attn.out_proj", "self_attn.in_proj", "linear1", "linear2"]
    x = torch.randn(2, 5, E, dtype=D)
    torch.testing.assert_close(model(x), dense(x), rtol=0, atol=1e-12)
    model.eval(), dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=0, atol=1e-12)


def test_skipping_out_proj_converts_only_in_proj():
    block = _Block(batch_first=True)
    out_proj = block.attn.out_proj
    tuckerize(block, rank=2, skip=("attn.out_proj",))
    assert isinstance(block.attn, TuckerMultiheadAttention)
    assert block.attn.out_proj is out_proj  # the model's own module, untouched
    assert block.attn.in_proj.rank == (2, 2)


@pytest.mark.parametrize("batch_first", [False, True])
def test_tdlrt_at_full_rank_takes_the_dense_sgd_step(batch_first):
    torch.manual_seed(0)
    block = _Block(batch_first)
    model = _full_tucker(block)
    dense, tucker = block.attn, model.attn
    start = dense.in_proj_weight.detach().clone()
    runs = [
        (block, torch.optim.SGD(block.parameters(), lr=0.1)),
        (model, TDLRT(model.parameters(), lr=0.1, tol=0.0)),
    ]
    x, attn_mask, padding = _inputs(batch_first, seed=3)
    for step in range(2):
        for module, optimizer in runs:
            optimizer.zero_grad()
            out, _ = module(x + step, attn_mask=attn_mask, key_padding_mask=padding)
            out.pow(2).mean().backward()
            optimizer.step()
    moved = (dense.in_proj_weight - start).norm()
    assert moved > 1e-3 * start.norm()
    assert tucker.in_proj.gradient_source == "weight"  # TDLRT took the layer
    for got, expected in (
        (tucker.in_proj_weight, dense.in_proj_weight),
        (tucker.out_proj.weight, dense.out_proj.weight),
        (tucker.in_proj_bias, dense.in_proj_bias),
        (tucker.out_proj.bias, dense.out_proj.bias),
    ):
        error = (got.detach() - expected.detach()).norm()
        assert error <= 1e-12 * expected.norm(), float(error)


def test_standalone_construction_and_state_dict():
    torch.manual_seed(0)
    attention = TuckerMultiheadAttention(E, HEADS, rank=3, batch_first=True, dtype=D)
    assert attention.in_proj.rank == (3, 3) and attention.out_proj.rank == (3, 3)
    keys = set(attention.state_dict())
    assert {"in_proj.core", "in_proj_bias", "out_proj.core"} <= keys
    assert "in_proj_weight" not in keys
    other = TuckerMultiheadAttention(E, HEADS, rank=5, batch_first=True, dtype=D)
    other.load_state_dict(attention.state_dict())
    x = torch.randn(2, 4, E, dtype=D)
    torch.testing.assert_close(other(x, x, x)[0], attention(x, x, x)[0])
    clone = copy.deepcopy(attention)
    torch.testing.assert_close(clone(x, x, x)[0], attention(x, x, x)[0])
    with pytest.raises(ValueError, match="kdim=4 must equal embed_dim"):
        TuckerMultiheadAttention(E, HEADS, kdim=4)
    with pytest.raises(TypeError, match=r"dense nn\.MultiheadAttention"):
        TuckerMultiheadAttention.from_dense(attention)
    dense = attention.to_dense()
    assert type(dense) is nn.MultiheadAttention
    torch.testing.assert_close(dense(x, x, x)[0], attention(x, x, x)[0])


def test_separate_qkv_weights_stay_dense_with_a_warning_and_out_proj_converts():
    model = _Block(batch_first=True, kdim=4, vdim=4)
    with pytest.warns(UserWarning, match=r"attn \(MultiheadAttention: separate"):
        tuckerize(model, rank=2)
    assert type(model.attn) is nn.MultiheadAttention
    assert isinstance(model.attn.out_proj, TuckerLinear)


def test_adapters_on_attention_start_at_the_base_train_and_merge_back():
    torch.manual_seed(0)
    block = _Block(batch_first=True)
    head = nn.Linear(E, 2, dtype=D)
    x, attn_mask, _ = _inputs(batch_first=True, seed=5)
    before = block(x, attn_mask=attn_mask)[0].detach()
    add_tucker_adapters(block, ["attn"], rank=2, verbose=False)
    attention = block.attn
    assert isinstance(attention, TuckerMultiheadAttention)
    assert attention.in_proj.offset is not None
    assert isinstance(attention.out_proj, TuckerLinear)
    assert attention.out_proj.offset is not None
    torch.testing.assert_close(block(x, attn_mask=attn_mask)[0], before)
    trainable, _ = trainable_parameters(block)
    assert trainable == sum(
        m.core.numel() + sum(f.numel() for f in m.factors)
        for m in (attention.in_proj, attention.out_proj)
    )
    frozen_bias = attention.in_proj_bias.detach().clone()
    optimizer = TDLRT(
        [p for p in block.parameters() if p.requires_grad], lr=0.2, tol=0.01
    )
    target = torch.tensor([0, 1, 1])
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        out = block(x, attn_mask=attn_mask)[0].mean(dim=1)
        loss = nn.functional.cross_entropy(head(out), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    torch.testing.assert_close(attention.in_proj_bias, frozen_bias, rtol=0, atol=0)
    adapted = block(x, attn_mask=attn_mask)[0].detach()
    merge_adapters(block)
    assert type(block.attn) is nn.MultiheadAttention
    assert type(block.attn.out_proj) is nn.Linear
    torch.testing.assert_close(
        block(x, attn_mask=attn_mask)[0], adapted, rtol=0, atol=1e-12
    )


def test_adapting_only_out_proj_leaves_in_proj_dense():
    block = _Block(batch_first=True)
    add_tucker_adapters(block, ["attn.out_proj"], rank=2, verbose=False)
    assert type(block.attn) is nn.MultiheadAttention
    assert isinstance(block.attn.out_proj, TuckerLinear)
    assert not block.attn.in_proj_weight.requires_grad
