"""``mmattn.layers.Mlp`` (``layers/blocks.py``), the MLP of the transformer families, and
Castling-ViT's mmcv-layout ``FFN``: their CPU inference path (``fused_mlp``: oneDNN's matmuls with
GELU fused into fc1's, ``mkldnn::_linear_pointwise``) against the formula ``fc2(GELU(fc1(x)))``
written here with ``torch.nn.functional``, and which path each case takes (recorded dispatched
ops)."""
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
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
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
    for hook in ('register_forward_pre_hook', 'register_forward_hook'):
        for name in ('fc1', 'act', 'fc2', 'drop'):
            hooked = make().eval()
            handle = getattr(getattr(hooked, name), hook)(lambda *args: None)
            assert not fused(hooked), (hook, name)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert not fused(make().eval())  # a global hook
    finally:
        handle.remove()
    assert fused(make().eval())
    with torch.backends.mkldnn.flags(enabled=False):
        assert not fused(make().eval())
    frozen = make().eval().requires_grad_(False)
    with torch.no_grad():  # a trace (FLOP counting, export) sees the modules, even in inference
        traced = torch.jit.trace(frozen, x)
    graph = str(traced.inlined_graph)
    assert 'aten::linear' in graph and 'aten::gelu' in graph and 'mkldnn' not in graph
    with torch.no_grad():
        for captured in (torch.fx.symbolic_trace(frozen), torch.jit.script(frozen)):
            torch.testing.assert_close(captured(x).double(), formula(frozen, x), rtol=1e-5,
                                       atol=1e-5)

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


@needs_mkldnn
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')  # quantize_dynamic's
def test_what_the_modules_would_do_is_kept(record_ops):
    """Cases where the fused path would silently differ from the modules: dropout switched on
    inside an eval model (MC dropout), a Linear subclass or a quantised Linear, CPU autocast,
    forward-mode AD; each takes the modules."""
    x = torch.randn(4, 10, 24)
    mlp = make(drop=0.5).eval()
    mlp.drop.train()  # MC dropout
    with torch.no_grad(), record_ops() as rec:
        out = mlp(x)
    assert FUSED not in rec.ops and (out == 0).any()

    class Scaled(torch.nn.Linear):
        def forward(self, t):
            return 2 * super().forward(t)

    mlp = make().eval()
    scaled = Scaled(96, 24)
    scaled.load_state_dict(mlp.fc2.state_dict())
    mlp.fc2 = scaled
    with torch.no_grad(), record_ops() as rec:
        out = mlp(x)
    assert FUSED not in rec.ops
    torch.testing.assert_close(out.double(), 2 * formula(make().eval(), x), rtol=1e-5, atol=1e-5)

    quantised = torch.ao.quantization.quantize_dynamic(make().eval(), {torch.nn.Linear})
    with torch.no_grad():  # runs (int8 weights: close to the formula on average)
        assert (quantised(x).double() - formula(make(), x)).abs().mean() < 0.05

    mlp = make().eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), record_ops() as rec:
        out = mlp(x)
    assert FUSED not in rec.ops and out.dtype == torch.bfloat16

    frozen = make().eval().requires_grad_(False)
    t = torch.randn_like(x)
    _, tangent = torch.func.jvp(frozen, (x, ), (t, ))
    _, expect = torch.func.jvp(lambda a: formula(frozen, a), (x.double(), ), (t.double(), ))
    torch.testing.assert_close(tangent.double(), expect, rtol=1e-5, atol=1e-5)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual_out = frozen(fwAD.make_dual(x, t))
        torch.testing.assert_close(fwAD.unpack_dual(dual_out).tangent.double(), expect,
                                   rtol=1e-5, atol=1e-5)


@needs_mkldnn
@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
def test_castling_ffn_takes_the_same_path(record_ops):
    """Castling-ViT's FFN (layers.0.0 Linear, GELU, Dropout; layers.1 Linear; Dropout): the fused
    path in inference, the modules with a hook on a container, active dropout or gradients."""
    from mmattn.backbones.castling_vit import FFN
    torch.manual_seed(0)
    ffn = FFN(24, 96, drop=0.1).eval()
    mlp = make()
    ffn.layers[0][0].load_state_dict(mlp.fc1.state_dict())
    ffn.layers[1].load_state_dict(mlp.fc2.state_dict())
    x = torch.randn(2, 7, 24)

    def run(module, grad=False):
        with torch.set_grad_enabled(grad), record_ops() as rec:
            out = module(x)
        return out, FUSED in rec.ops

    out, fused = run(ffn)
    assert fused
    torch.testing.assert_close(out.double(), formula(mlp, x), rtol=1e-5, atol=1e-5)
    assert not run(ffn, grad=True)[1]
    handle = ffn.layers[0].register_forward_hook(lambda *args: None)
    assert not run(ffn)[1]
    handle.remove()
    ffn.layers[2].train()  # the last dropout on, inside an eval model
    assert not run(ffn)[1]
    ffn.eval()
    scripted = torch.jit.script(ffn)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), out)
