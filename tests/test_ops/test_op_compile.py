"""The ops under ``torch.compile``, ``torch.export``, ``torch.fx`` and ``torch.jit.trace``.

Compiled and traced modules are compared with the same module running the plain-PyTorch
references (and with eager mode); graphs must hold the ``mmattn::`` ops as single nodes.
"""
import pytest
import torch
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx

from mmattn.ops import ghost_head_aggregate, ghost_head_aggregate_reference, na2d, na2d_reference

# float32 module outputs and gradients against the reference modules (same parameters); the
# gradients of the position tables are sums over every pixel, hence the looser atol.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
FP32_GRAD_TOL = dict(rtol=1e-5, atol=1e-4)


class NAModule(nn.Module):
    """q, k, v and a per-query bias from a linear map of the input, plus rpb and rpe tables."""

    def __init__(self, dim=8, heads=2, kernel_size=3, dilation=1, border='mask', impl=na2d):
        super().__init__()
        self.ks, self.dilation, self.border, self.impl = kernel_size, dilation, border, impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.to_bias = nn.Linear(dim, kernel_size * kernel_size)
        self.rpb = nn.Parameter(torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.rpe = (nn.Parameter(0.1 * torch.randn(heads, kernel_size, kernel_size, dim))
                    if border == 'mask' else None)

    def forward(self, x):  # x: (B, heads, H, W, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        bias = self.to_bias(x)
        return self.impl(q, k, v, self.ks, self.dilation, self.border, rpb=self.rpb, rpe=self.rpe,
                         bias=bias)


class GhostModule(nn.Module):
    """ELSA-style: attention over the taps from a 1x1 conv, then the ghost-head filter."""

    def __init__(self, channels=6, heads=3, kernel_size=3, dilation=1,
                 impl=ghost_head_aggregate):
        super().__init__()
        self.heads, self.ks, self.dilation, self.impl = heads, kernel_size, dilation, impl
        self.to_attn = nn.Conv2d(channels, heads * kernel_size * kernel_size, 1)
        self.ghost_mul = nn.Parameter(torch.rand(channels, kernel_size, kernel_size) + 0.5)
        self.ghost_add = nn.Parameter(0.1 * torch.randn(channels, kernel_size, kernel_size))

    def forward(self, x):  # x: (B, C, H, W)
        B, _, H, W = x.shape
        attn = self.to_attn(x).view(B, self.heads, self.ks * self.ks, H, W).softmax(2)
        return self.impl(x, attn, self.ghost_mul, self.ghost_add, self.ks, self.dilation)


def make_pair(module_cls, ref_impl, **kwargs):
    """The module and a copy with the same parameters that runs the reference."""
    torch.manual_seed(0)
    module = module_cls(**kwargs)
    reference = module_cls(**kwargs)
    reference.load_state_dict(module.state_dict())
    if ref_impl is not None:
        reference.impl = ref_impl
    return module, reference


def forward_backward(module, x):
    x = x.detach().requires_grad_()
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [x.grad] + [p.grad for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return out.detach(), grads


def assert_forward_backward_match(compiled, eager, reference, x):
    with torch.no_grad():  # inference: the fused kernel
        expected = reference(x)
        torch.testing.assert_close(compiled(x), expected, **FP32_TOL)
        torch.testing.assert_close(eager(x), expected, **FP32_TOL)
    out, grads = forward_backward(compiled, x)
    out_ref, grads_ref = forward_backward(reference, x)
    out_eager, grads_eager = forward_backward(eager, x)
    torch.testing.assert_close(out, out_ref, **FP32_TOL)
    assert len(grads) == len(grads_ref) and all(g is not None for g in grads)
    for g, g_ref, g_eager in zip(grads, grads_ref, grads_eager):
        torch.testing.assert_close(g, g_ref, **FP32_GRAD_TOL)
        torch.testing.assert_close(g, g_eager, **FP32_GRAD_TOL)


@pytest.mark.parametrize('backend', ['eager', 'aot_eager'])
@pytest.mark.parametrize('border, dilation', [('mask', 2), ('clamp', 1)],
                         ids=['mask-d2', 'clamp-d1'])
def test_compile_na2d(border, dilation, backend):
    torch._dynamo.reset()
    module, reference = make_pair(NAModule, na2d_reference, border=border, dilation=dilation)
    compiled = torch.compile(module, backend=backend, fullgraph=True)  # no graph break
    x = torch.randn(2, 2, 7, 9, 8)
    assert_forward_backward_match(compiled, module, reference, x)


@pytest.mark.parametrize('backend', ['eager', 'aot_eager'])
def test_compile_ghost_head_aggregate(backend):
    torch._dynamo.reset()
    module, reference = make_pair(GhostModule, ghost_head_aggregate_reference, dilation=2)
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    x = torch.randn(2, 6, 7, 9)
    assert_forward_backward_match(compiled, module, reference, x)


def test_compile_inductor():
    # the default backend, forward and backward, both ops (a few seconds on 2 CPU cores)
    torch._dynamo.reset()

    class Both(nn.Module):
        def __init__(self, na_impl=na2d, ghost_impl=ghost_head_aggregate):
            super().__init__()
            self.na = NAModule(dim=6, heads=1, impl=na_impl)
            self.ghost = GhostModule(channels=6, heads=3, impl=ghost_impl)

        def forward(self, x):  # x: (B, 6, H, W)
            y = self.na(x.permute(0, 2, 3, 1).unsqueeze(1)).squeeze(1).permute(0, 3, 1, 2)
            return self.ghost(y + x)

    module, reference = make_pair(Both, None)
    reference.na.impl, reference.ghost.impl = na2d_reference, ghost_head_aggregate_reference
    compiled = torch.compile(module, fullgraph=True)
    assert_forward_backward_match(compiled, module, reference, torch.randn(2, 6, 7, 8))


def test_compile_dynamic_shapes():
    # symbolic H and W: the fake kernels must not specialise on sizes
    torch._dynamo.reset()
    module, reference = make_pair(NAModule, na2d_reference, border='mask', dilation=1)
    compiled = torch.compile(module, backend='aot_eager', fullgraph=True, dynamic=True)
    for H, W in ((7, 9), (8, 5), (11, 6)):
        x = torch.randn(1, 2, H, W, 8)
        assert_forward_backward_match(compiled, module, reference, x)


def _mmattn_targets(graph):
    return [str(n.target) for n in graph.nodes
            if n.op == 'call_function' and str(n.target).startswith('mmattn.')]


def test_make_fx_records_the_ops():
    module, reference = make_pair(NAModule, na2d_reference, border='mask', dilation=2)
    x = torch.randn(1, 2, 6, 7, 8)
    with torch.no_grad():
        inference = make_fx(module)(x)
    assert _mmattn_targets(inference.graph) == ['mmattn.na2d_fused.default']
    training = make_fx(module)(x)  # the parameters require grad: the training path
    assert _mmattn_targets(training.graph) == ['mmattn.na2d_qk.default', 'mmattn.na2d_av.default']
    x2 = torch.randn(1, 2, 6, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(inference(x2), reference(x2), **FP32_TOL)


@pytest.mark.parametrize('tracing_mode', ['fake', 'symbolic'])
def test_make_fx_fake_and_symbolic_shapes(tracing_mode):
    # the fake kernels give the output shapes without running the ops
    def attention(q, k, v, rpb, rpe):
        return na2d(q, k, v, 3, 2, 'mask', rpb=rpb, rpe=rpe)

    def attention_clamp(q, k, v, rpb):
        return na2d(q, k, v, 3, 1, 'clamp', rpb=rpb)

    def ghost(v, attn, ghost_mul, ghost_add):
        return ghost_head_aggregate(v, attn, ghost_mul, ghost_add, 3, 2)

    qkv = [torch.randn(2, 2, 6, 7, 4, requires_grad=True) for _ in range(3)]
    rpb, rpe = torch.randn(2, 5, 5), torch.randn(2, 3, 3, 4)
    graph = make_fx(attention, tracing_mode=tracing_mode)(*qkv, rpb, rpe).graph
    # CPU training with border 'mask': the fused training op, whose second output (the saved
    # probabilities) is (B, heads, H, k*k, Wp), Wp = 2 * (k // 2) * dilation + 16
    assert _mmattn_targets(graph) == ['mmattn.na2d_fused_train.default']
    node = [n for n in graph.nodes if n.target == torch.ops.mmattn.na2d_fused_train.default][0]
    assert [tuple(v.shape) for v in node.meta['val']] == [(2, 2, 6, 7, 4), (2, 2, 6, 9, 20)]
    outputs = [n for n in graph.nodes if n.op == 'output'][0].args[0]
    assert tuple(outputs.meta['val'].shape) == (2, 2, 6, 7, 4)
    graph = make_fx(attention_clamp, tracing_mode=tracing_mode)(*qkv, rpb).graph
    assert _mmattn_targets(graph) == ['mmattn.na2d_qk.default', 'mmattn.na2d_av.default']
    outputs = [n for n in graph.nodes if n.op == 'output'][0].args[0]
    assert tuple(outputs.meta['val'].shape) == (2, 2, 6, 7, 4)
    args = (torch.randn(2, 6, 5, 7), torch.rand(2, 3, 9, 5, 7), torch.randn(6, 3, 3),
            torch.randn(6, 3, 3))
    graph = make_fx(ghost, tracing_mode=tracing_mode)(*args).graph
    assert _mmattn_targets(graph) == ['mmattn.ghost_head_aggregate.default']
    outputs = [n for n in graph.nodes if n.op == 'output'][0].args[0]
    assert tuple(outputs.meta['val'].shape) == (2, 6, 5, 7)


def test_export_records_the_ops():
    module, reference = make_pair(NAModule, na2d_reference, border='clamp', dilation=1)
    x = torch.randn(1, 2, 6, 7, 8)
    with torch.no_grad():
        program = torch.export.export(module, (x,))
    assert _mmattn_targets(program.graph) == ['mmattn.na2d_fused.default']
    x2 = torch.randn(1, 2, 6, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x2), reference(x2), **FP32_TOL)


class PlainNA(nn.Module):
    def forward(self, q, k, v, rpb):
        return na2d(q, k, v, 3, 1, 'mask', rpb=rpb)


def test_fx_symbolic_trace_with_autowrap():
    # symbolic_trace cannot run the Python argument checks on Proxies: the op function is a leaf
    # of the trace (autowrap), and the traced module computes the same thing
    tracer = torch.fx.Tracer(autowrap_functions=(na2d,))
    graph = tracer.trace(PlainNA())
    assert [n.target for n in graph.nodes if n.op == 'call_function'] == [na2d]
    traced = torch.fx.GraphModule(tracer.root, graph)
    q, k, v = (torch.randn(1, 2, 6, 7, 4) for _ in range(3))
    rpb = torch.randn(2, 5, 5)
    torch.testing.assert_close(traced(q, k, v, rpb), na2d_reference(q, k, v, 3, rpb=rpb),
                               **FP32_TOL)


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # sizes become constants
def test_jit_trace_records_the_ops():
    module, reference = make_pair(NAModule, na2d_reference, border='mask', dilation=2)
    x, x2 = torch.randn(1, 2, 6, 7, 8), torch.randn(1, 2, 6, 7, 8)
    with torch.no_grad():
        inference = torch.jit.trace(module, x)
    assert 'mmattn::na2d_fused' in str(inference.graph)
    # the training trace takes the other branch (grad mode), so skip the re-trace check
    training = torch.jit.trace(module, x, check_trace=False)
    assert 'mmattn::na2d_qk' in str(training.graph) and 'mmattn::na2d_av' in str(training.graph)
    with torch.no_grad():
        torch.testing.assert_close(inference(x2), reference(x2), **FP32_TOL)
    out, grads = forward_backward(training, x2)
    out_ref, grads_ref = forward_backward(reference, x2)
    torch.testing.assert_close(out, out_ref, **FP32_TOL)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **FP32_GRAD_TOL)

    ghost, ghost_ref = make_pair(GhostModule, ghost_head_aggregate_reference)
    y = torch.randn(1, 6, 5, 6)
    traced = torch.jit.trace(ghost, y)
    assert 'mmattn::ghost_head_aggregate' in str(traced.graph)
    y2 = torch.randn(1, 6, 5, 6)
    torch.testing.assert_close(traced(y2), ghost_ref(y2), **FP32_TOL)
