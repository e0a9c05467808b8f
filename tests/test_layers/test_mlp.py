"""``mmattn.layers.Mlp`` (``layers/blocks.py``), the MLP of every transformer family: its CPU
inference path (oneDNN's matmuls with GELU fused into fc1's, ``mkldnn::_linear_pointwise``)
against the formula ``fc2(GELU(fc1(x)))`` written here with ``torch.nn.functional``, and which
path each case takes (recorded dispatched ops)."""
import pytest
import torch
import torch.nn.functional as F

from mmattn.layers.blocks import Mlp, _has_mkldnn_linear

FUSED = 'mkldnn::_linear_pointwise'
needs_mkldnn = pytest.mark.skipif(not _has_mkldnn_linear(), reason='torch without oneDNN')


def make(dim=24, hidden=96, drop=0., approximate='none', seed=0):
    torch.manual_seed(seed)
    mlp = Mlp(dim, hidden, drop)
    mlp.act.approximate = approximate
    with torch.no_grad():
        for p in mlp.parameters():
            p.uniform_(-0.5, 0.5)
    return mlp


def formula(mlp, x):
    """fc2(GELU(fc1(x))) in float64 (dropout inactive)."""
    d = {k: v.double() for k, v in mlp.state_dict().items()}
    h = F.gelu(F.linear(x.double(), d['fc1.weight'], d['fc1.bias']),
               approximate=mlp.act.approximate)
    return F.linear(h, d['fc2.weight'], d['fc2.bias'])


@needs_mkldnn
@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('shape', [(2, 49, 24), (3, 24), (1, 7, 5, 24)], ids=str)
def test_inference_path_matches_the_formula(shape, approximate, record_ops):
    mlp = make(approximate=approximate).eval()
    x = torch.randn(*shape)
    with torch.no_grad(), record_ops() as rec:
        out = mlp(x)
    assert rec.ops.count(FUSED) == 2 and 'aten::gelu' not in rec.ops
    assert out.shape == shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), formula(mlp, x), rtol=1e-5, atol=1e-5)
    # a strided input (a token-major view of a channel-major map)
    xt = torch.randn(2, 24, 9).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(mlp(xt).double(), formula(mlp, xt), rtol=1e-5, atol=1e-5)


@needs_mkldnn
def test_which_path_runs(record_ops):
    """oneDNN only where nothing can see the difference: no gradient asked for, dropout off,
    float32, eager, no hooks; else the modules (whose gradients are checked against the
    formula)."""
    x = torch.randn(2, 5, 24)

    def fused(mlp, inp=x, grad=False):
        with torch.set_grad_enabled(grad), record_ops() as rec:
            mlp(inp)
        return FUSED in rec.ops

    mlp = make().eval()
    assert fused(mlp)
    assert not fused(mlp, grad=True)  # parameters require grad: training
    mlp.requires_grad_(False)
    assert fused(mlp, grad=True)  # a frozen MLP builds no graph
    assert not fused(mlp, x.clone().requires_grad_(), grad=True)  # a graph through the input
    assert not fused(make().double().eval(), x.double())
    assert not fused(make(drop=0.1).train())  # active dropout
    assert fused(make(drop=0.1).eval()) and fused(make(drop=0.).train())
    hooked = make().eval()
    seen = []
    handle = hooked.fc1.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    assert not fused(hooked) and seen == [(2, 5, 96)]
    handle.remove()
    assert fused(hooked)
    traced = torch.jit.trace(make().eval(), x)
    graph = str(traced.inlined_graph)  # a trace (FLOP counting, export) sees the modules
    assert 'aten::linear' in graph and 'aten::gelu' in graph and 'mkldnn' not in graph

    # the training path's values and gradients against the formula
    mlp = make().train()
    xg = x.clone().requires_grad_()
    out = mlp(xg)
    xr = x.double().requires_grad_()
    ref = formula(mlp, xr)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
