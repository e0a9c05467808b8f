"""The vectorised CPU kernels: every capability build (AVX512, AVX2, DEFAULT) against the
plain-PyTorch references written from the spec.

The in-process op tests run the build this machine's capability selects; here each build runs in
a child process with ``ATEN_CPU_CAPABILITY`` lowered, on shapes that exercise the vector body and
its tails: map widths that are not multiples of the vector width (8 or 16 lanes), head dims that
are not multiples of 8 (the channel block and the strip copy's transpose tiles) and shapes that
are, both borders, dilation, rpb, rpe and bias, and strided (non-contiguous) inputs; and the
grouped convolution's row kernel and weight-gradient kernel.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from mmattn.ops import has_compiled_ops

pytestmark = pytest.mark.skipif(not has_compiled_ops(), reason='mmattn._C is not built')

CHILD = r'''
import json, sys, torch
from mmattn import _C
from mmattn.ops import (concat_relative_embedding, ghost_head_aggregate,
                        ghost_head_aggregate_reference, ghost_head_softmax_aggregate,
                        hadamard_conv_gelu, na2d, na2d_reference, na2d_split_rpe)

torch.manual_seed(0)
errors = {}


def rnd(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def compare(name, fn, ref, tensors):
    # forward and gradients in float64, compiled vs reference; the float32 forward too
    xs = [t.clone().requires_grad_() for t in tensors]
    ys = [t.clone().requires_grad_() for t in tensors]
    out, expect = fn(*xs), ref(*ys)
    g = torch.randn_like(out)
    out.backward(g)
    expect.backward(g)
    err = (out - expect).abs().max().item()
    for a, b in zip(xs, ys):
        err = max(err, (a.grad - b.grad).abs().max().item())
    with torch.no_grad():
        f32 = fn(*[t.float() for t in tensors]).double()
        err32 = ((f32 - expect).abs().max() / expect.abs().max()).item()
    errors[name] = [err, err32]


for border, dilation in (('mask', 1), ('mask', 2), ('clamp', 1), ('clamp', 2)):
    # (W, D) multiples of 8 or not: the contiguous inputs' strip copy transposes 8 x 8 tiles
    # and copies the columns and channels left over one by one
    for (H, W, D) in ((9, 17, 5), (6, 23, 12), (20, 33, 3), (5, 24, 16)):
        ks = 3 if dilation == 2 else 5
        if border == 'clamp' and min(H, W) // dilation < ks:
            continue
        heads = 2
        q, k, v = (rnd(1, heads, H, W, D) for _ in range(3))
        rpb = rnd(heads, 2 * ks - 1, 2 * ks - 1)
        bias = rnd(1, heads, H, W, ks * ks)
        extras = dict(rpb=rpb, bias=bias)
        if border == 'mask':
            extras['rpe'] = rnd(heads, ks, ks, D)
        names = list(extras)

        def fn(q, k, v, *ex, _f=na2d):
            return _f(q, k, v, ks, dilation, border, **dict(zip(names, ex)))

        def ref(q, k, v, *ex):
            return fn(q, k, v, *ex, _f=na2d_reference)

        compare(f'na2d {border} d{dilation} {H}x{W} D={D}', fn, ref, [q, k, v, *extras.values()])
        if border == 'mask':  # without bias: the fused training kernel and its backward
            compare(f'na2d fused-train d{dilation} {H}x{W} D={D}',
                    lambda q, k, v, rpb, rpe: na2d(q, k, v, ks, dilation, rpb=rpb, rpe=rpe),
                    lambda q, k, v, rpb, rpe: na2d_reference(q, k, v, ks, dilation, rpb=rpb,
                                                             rpe=rpe),
                    [q, k, v, rpb, extras['rpe']])

        if border == 'mask':
            # a separable rpe (each channel depends on the window row or on the window column
            # only, as SASA's concatenated tables; here interleaved, one channel constant),
            # which the logits kernels split into 2k dot products per query, and the same with
            # one entry changed (not separable: the general kernels)
            rows, cols = rnd(heads, ks, 1, D).expand(-1, -1, ks, -1), rnd(heads, 1, ks, D)
            by_row = torch.arange(D) % 2 == 0
            sep = torch.where(by_row, rows, cols.expand(-1, ks, -1, -1)).contiguous()
            sep[:, :, :, -1] = 0.5
            broken = sep.clone()
            broken[1, ks - 1, 0, 0] += 1.0
            for label, rpe in (('separable', sep), ('non-separable', broken)):
                compare(f'na2d {label} rpe d{dilation} {H}x{W} D={D}',
                        lambda q, k, v, rpe, bias: na2d(q, k, v, ks, dilation, rpe=rpe,
                                                        bias=bias),
                        lambda q, k, v, rpe, bias: na2d_reference(q, k, v, ks, dilation,
                                                                  rpe=rpe, bias=bias),
                        [q, k, v, rpe, bias])
                compare(f'na2d fused-train {label} rpe d{dilation} {H}x{W} D={D}',
                        lambda q, k, v, rpe: na2d(q, k, v, ks, dilation, rpe=rpe),
                        lambda q, k, v, rpe: na2d_reference(q, k, v, ks, dilation, rpe=rpe),
                        [q, k, v, rpe])

        # strided inputs, (B, heads, H, W, D) views of (B, heads, D, H, W) buffers as SASA
        # passes them: outputs and gradients take that layout (clone keeps the strides)
        strided = [rnd(1, heads, D, H, W).permute(0, 1, 3, 4, 2) for _ in range(3)]
        compare(f'na2d strided {border} d{dilation} {H}x{W} D={D}',
                lambda q, k, v: na2d(q, k, v, ks, dilation, border),
                lambda q, k, v: na2d_reference(q, k, v, ks, dilation, border), strided)
        with torch.no_grad():
            layout = na2d(*strided, ks, dilation, border).stride() == strided[0].stride()
        errors[f'na2d output layout {border} d{dilation} {H}x{W} D={D}'] = [
            0.0 if layout else 1.0, 0.0]

# W-contiguous views (SASA's layout) through the strip copy's vector path: maps narrower than a
# vector (the element loop: 5 columns, and 8 and 13 with 16 lanes), exactly one 8-lane vector,
# partial last vectors (13, 19, 37), and zero padding (k // 2) * d of 3 to 17 columns, wider than
# a 4-, 8- or 16-lane vector
for (H, W, D, ks, dilation) in ((6, 5, 3, 7, 1), (7, 8, 5, 5, 3), (11, 13, 4, 3, 9),
                                (9, 19, 4, 3, 6), (4, 37, 3, 3, 17)):
    views = [rnd(1, 2, D, H, W).permute(0, 1, 3, 4, 2) for _ in range(3)]
    compare(f'na2d W-contiguous {H}x{W} k={ks} d={dilation}',
            lambda q, k, v: na2d(q, k, v, ks, dilation),
            lambda q, k, v: na2d_reference(q, k, v, ks, dilation), views)

# SASA's split tables given to na2d_split_rpe (the ops build the kernels' separable form from
# them), on W-contiguous views, in inference and training: head dims 6, 10 and 16 (half-tables
# of 3, 5 and 8 channels), widths with partial last vectors, dilation 2, a map smaller than the
# window
for (H, W, D, ks, dilation) in ((9, 17, 6, 5, 1), (6, 23, 16, 7, 1), (11, 13, 10, 3, 2),
                                (3, 5, 4, 7, 1)):
    views = [rnd(1, 2, D, H, W).permute(0, 1, 3, 4, 2) for _ in range(3)]
    rel = [rnd(2, ks, D // 2) for _ in range(2)]
    expect = na2d_reference(*views, ks, dilation, rpe=concat_relative_embedding(*rel), scale=1.0)
    with torch.no_grad():
        out = na2d_split_rpe(*views, ks, *rel, dilation, scale=1.0)
        f32 = na2d_split_rpe(*[t.float() for t in views], ks, *[t.float() for t in rel],
                             dilation, scale=1.0).double()
    errors[f'na2d split rpe {H}x{W} D={D} k={ks} d={dilation}'] = [
        (out - expect).abs().max().item(),
        ((f32 - expect).abs().max() / expect.abs().max()).item()]
    # training (na2d_split_rpe_train and its backward): gradients of the views' parent and tables
    compare(f'na2d split rpe training {H}x{W} D={D} k={ks} d={dilation}',
            lambda x, h, w: na2d_split_rpe(*(t.view(1, 2, D, H, W).permute(0, 1, 3, 4, 2)
                                             for t in x.split(2 * D, 1)), ks, h, w, dilation, 1.0),
            lambda x, h, w: na2d_reference(*(t.view(1, 2, D, H, W).permute(0, 1, 3, 4, 2)
                                             for t in x.split(2 * D, 1)), ks, dilation,
                                           rpe=concat_relative_embedding(h, w), scale=1.0),
            [rnd(1, 6 * D, H, W), *rel])

# heads of 3, 1, 5 (4 + 1) and 8 channels; widths with and without a partial last vector, with
# several row chunks (70 and 33 columns); maps of fewer rows than a band (8) and than the window
for (C, G, H, W, ks, d) in ((6, 2, 9, 17, 5, 1), (4, 4, 7, 23, 3, 2), (3, 1, 20, 33, 7, 1),
                            (10, 2, 11, 70, 5, 2), (8, 1, 5, 32, 7, 1)):
    v = rnd(2, C, H, W)
    attn = rnd(2, G, ks * ks, H, W).softmax(2)
    mul, add = rnd(C, ks, ks), rnd(C, ks, ks)
    compare(f'ghost C={C} G={G} {H}x{W} k={ks} d={d}',
            lambda *t: ghost_head_aggregate(*t, ks, d),
            lambda *t: ghost_head_aggregate_reference(*t, ks, d), [v, attn, mul, add])

# the inference kernel with the softmax over the taps inside (no gradient asked for), the same
# shapes, with and without the logits' bias and M; logits scaled so that the softmax is peaked
for (C, G, H, W, ks, d) in ((6, 2, 9, 17, 5, 1), (4, 4, 7, 23, 3, 2), (3, 1, 20, 33, 7, 1),
                            (10, 2, 11, 70, 5, 2), (8, 1, 5, 32, 7, 1)):
    v, logits = rnd(2, C, H, W), 4 * rnd(2, G, ks * ks, H, W)
    for bias, mul in ((rnd(G * ks * ks), None), (None, rnd(C, ks, ks))):
        add = rnd(C, ks, ks)
        z = logits if bias is None else logits + bias.view(1, G, -1, 1, 1)
        expect = ghost_head_aggregate_reference(v, z.softmax(2), mul, add, ks, d)
        as32 = [None if t is None else t.float() for t in (v, logits, bias, mul, add)]
        with torch.no_grad():
            out = ghost_head_softmax_aggregate(v, logits, bias, mul, add, ks, d)
            f32 = ghost_head_softmax_aggregate(*as32, ks, d).double()
        if bias is None:  # v as ELSA's channel slice of a channels-last map, read in place
            parent = torch.zeros(2, C + 5, H, W, dtype=torch.float64).contiguous(
                memory_format=torch.channels_last)
            parent[:, 2:2 + C] = v
            with torch.no_grad():
                sliced = ghost_head_softmax_aggregate(parent[:, 2:2 + C], logits, bias, mul,
                                                      add, ks, d)
            errors[f'ghost softmax channels-last slice C={C} {H}x{W} k={ks} d={d}'] = [
                (sliced - expect).abs().max().item(), 0.0]
        errors[f'ghost softmax C={C} G={G} {H}x{W} k={ks} d={d} bias={bias is not None}'] = [
            (out - expect).abs().max().item(),
            ((f32 - expect).abs().max() / expect.abs().max()).item()]

# ELSA's grouped convolution (4 channels per group): the AVX2 row kernel in float32 (8-column
# blocks and every narrower last block), the scalar loop in float64 and in the DEFAULT build
for (C, H, W, ks) in ((8, 5, 13, 7), (16, 6, 8, 3), (24, 4, 23, 9), (8, 7, 3, 5)):
    x = rnd(2, C, H, W).contiguous(memory_format=torch.channels_last)
    compare(f'grouped conv C={C} {H}x{W} k={ks}',
            lambda x, w, b: torch.ops.mmattn.grouped_conv2d(x, w, b),
            lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=ks // 2,
                                                       groups=C // 4),
            [x, rnd(C, 4, ks, ks), rnd(C)])

# GELU of the convolution of q * k (ELSA's inference): q and k channel slices of one channels-last
# map; the AVX2 row kernel with the product and GELU inside where it runs (the AVX2 and AVX512
# builds), the composition in the DEFAULT build
for (C, H, W, ks) in ((8, 5, 13, 7), (16, 6, 8, 3), (24, 4, 23, 9)):
    parent = rnd(2, 2 * C + 3, H, W).contiguous(memory_format=torch.channels_last)
    q, k = parent[:, :C], parent[:, C + 3:]
    w, b = rnd(C, 4, ks, ks) / ks, rnd(C)
    expect = torch.nn.functional.gelu(torch.nn.functional.conv2d(q * k, w, b, padding=ks // 2,
                                                                 groups=C // 4))
    with torch.no_grad():
        f32 = hadamard_conv_gelu(q.float(), k.float(), w.float(), b.float()).double()
    errors[f'hadamard conv gelu C={C} {H}x{W} k={ks}'] = [
        0.0, ((f32 - expect).abs().max() / expect.abs().max()).item()]

# its weight and bias gradients in float32 (the AVX2 kernel: blocks of 3 and 2 window columns, two
# images summed; the scalar loop in the DEFAULT build) against float64 autograd of F.conv2d
for (C, H, W, ks) in ((8, 5, 13, 7), (16, 6, 4, 5), (24, 3, 9, 9), (8, 7, 3, 3)):
    x, w, b = rnd(2, C, H, W), rnd(C, 4, ks, ks), rnd(C)
    g = rnd(2, C, H, W)
    ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
    torch.nn.functional.conv2d(x, ws, bs, padding=ks // 2, groups=C // 4).backward(g)
    dw, db = torch.ops.mmattn.grouped_conv2d_weight_grad(g.float(), x.float(), ks, 4, True)
    err32 = max(((dw.double() - ws.grad).abs().max() / ws.grad.abs().max()).item(),
                ((db.double() - bs.grad).abs().max() / bs.grad.abs().max()).item())
    errors[f'grouped conv weight grad C={C} {H}x{W} k={ks}'] = [0.0, err32]

print(json.dumps(dict(kernels=_C.cpu_kernels(), na2d_kernels=_C.na2d_cpu_kernels(),
                      errors=errors)))
'''


def run_child(capability):
    # na2d's build follows the capability here, also on CPUs where 'auto' would pick AVX2
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, MMATTN_NA2D_KERNELS=capability,
               OMP_NUM_THREADS='2')
    out = subprocess.run([sys.executable, '-c', CHILD], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def available():
    """The capability builds this machine can run: DEFAULT always, then AVX2 and AVX512."""
    caps = ['default']
    have = torch.backends.cpu.get_cpu_capability()
    if have in ('AVX2', 'AVX512'):
        caps.append('avx2')
    if have == 'AVX512':
        caps.append('avx512')
    return caps


def test_cpu_kernels_follow_aten_capability():
    from mmattn import _C
    expect = {'AVX512': 'AVX512', 'AVX2': 'AVX2'}.get(torch.backends.cpu.get_cpu_capability(),
                                                       'DEFAULT')
    assert _C.cpu_kernels() == expect


def na2d_kernels_in_child(**env) -> subprocess.CompletedProcess:
    code = 'import mmattn.ops, mmattn._C as c; print(c.cpu_kernels(), c.na2d_cpu_kernels())'
    env = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, timeout=120)


def test_na2d_runs_avx2_where_avx512_is_split(splits_avx512):
    """'auto' (the default): na2d runs the AVX2 build on AMD Zen 4, whose AVX-512 is two
    256-bit halves (the AVX2 build is 1.3-1.7x faster there); ATen's capability elsewhere."""
    from mmattn import _C
    if os.environ.get('MMATTN_NA2D_KERNELS', 'auto') != 'auto':
        pytest.skip('MMATTN_NA2D_KERNELS is set')
    aten = _C.cpu_kernels()
    expect = 'AVX2' if aten == 'AVX512' and splits_avx512 else aten
    assert _C.na2d_cpu_kernels() == expect


@pytest.mark.parametrize('request_,capability,expect', [
    ('avx2', None, 'AVX2'), ('default', None, 'DEFAULT'), ('avx512', 'avx2', 'AVX2'),
    ('auto', 'default', 'DEFAULT')], ids=str)
def test_na2d_kernels_variable_lowers_the_build(request_, capability, expect):
    """MMATTN_NA2D_KERNELS picks na2d's build, never above ATen's capability; the other ops
    keep the capability's build."""
    from mmattn import _C
    if expect == 'AVX2' and 'avx2' not in available():
        pytest.skip('this CPU cannot run the avx2 build')
    out = na2d_kernels_in_child(MMATTN_NA2D_KERNELS=request_, ATEN_CPU_CAPABILITY=capability)
    assert out.returncode == 0, out.stderr[-2000:]
    aten, na2d_build = out.stdout.split()
    assert na2d_build == expect
    assert aten == (capability.upper() if capability else _C.cpu_kernels())


def test_bad_na2d_kernels_variable_is_a_value_error():
    out = na2d_kernels_in_child(MMATTN_NA2D_KERNELS='sse4')
    assert out.returncode != 0
    assert "ValueError: MMATTN_NA2D_KERNELS must be auto, avx512, avx2 or default, got 'sse4'" \
        in out.stderr


@pytest.mark.parametrize('capability', ['default', 'avx2', 'avx512'])
def test_capability_build_matches_reference(capability):
    if capability not in available():
        pytest.skip(f'this CPU cannot run the {capability} build')
    result = run_child(capability)
    assert result['kernels'] == result['na2d_kernels'] == capability.upper()
    assert result['errors'], 'no case ran'
    for name, (err64, err32) in result['errors'].items():
        assert err64 < 1e-9, f'{capability} {name}: float64 error {err64:.3g}'
        assert err32 < 1e-4, f'{capability} {name}: float32 relative error {err32:.3g}'


def test_reused_strip_buffers_hold_no_stale_data():
    """The entry points reuse their strips' and temporaries' memory from call to call (per
    thread): calls of shrinking and growing maps, both dtypes and both borders ('mask' runs the
    fused training ops, 'clamp' na2d_qk -> softmax -> na2d_av), each forward and backward with
    rpb (and rpe for 'mask') against the reference, so padding, rows or d_rpb partials left over
    from a larger call would show."""
    from mmattn.ops import na2d, na2d_reference
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        for (H, W, D, border) in ((12, 40, 8, 'mask'), (5, 9, 3, 'mask'), (7, 21, 6, 'clamp'),
                                  (9, 33, 16, 'mask'), (6, 11, 4, 'clamp')):
            # non-zero, large values everywhere, so stale strip contents would not cancel
            q, k, v = (torch.randn(1, 2, H, W, D, dtype=dtype).add_(3).requires_grad_()
                       for _ in range(3))
            rpb = torch.randn(2, 9, 9, dtype=dtype).requires_grad_()
            rpe = (torch.randn(2, 5, 5, D, dtype=dtype).requires_grad_() if border == 'mask'
                   else None)
            inputs = (q, k, v, rpb) + ((rpe, ) if rpe is not None else ())
            out = na2d(q, k, v, 5, border=border, rpb=rpb, rpe=rpe)
            grads = torch.autograd.grad(out.sum(), inputs)
            ref = na2d_reference(q, k, v, 5, border=border, rpb=rpb, rpe=rpe)
            ref_grads = torch.autograd.grad(ref.sum(), inputs)
            scale = ref.abs().max().item()
            assert (out - ref).abs().max().item() <= tol * scale, (dtype, H, W, D, border)
            for name, a, b in zip('q k v rpb rpe'.split(), grads, ref_grads):
                assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item()), \
                    (name, dtype, H, W, D, border)


@pytest.mark.parametrize('border,ks,dilation', [
    ('mask', 7, 1),   # a row pair reads k + 1 = 8 consecutive key rows: the ring of 8, full
    ('mask', 3, 1),   # 4 rows, the ring of 4, full
    ('mask', 5, 3),   # rows 3 apart over k*d + 1 = 16 rows, the ring of 16
    ('mask', 3, 3),   # over 10 rows, the ring of 16
    ('clamp', 3, 3),  # d_k/d_v: a key-row pair's query rows span (2k-1)*d + 1 = 16 rows
    ('clamp', 5, 1),  # 10 rows, the ring of 16; pairs and single rows at the shifted borders
])
@pytest.mark.parametrize('threads', [1, 3])
def test_strip_rings_at_their_tightest(border, ks, dilation, threads):
    """Every kernel copies the q/k/v/d_out rows it reads into per-thread rings of a power of two
    rows, sized for the rows one step (a row or a pair of rows) reads; a ring too small evicts
    rows still in use (halving the window rings fails the d=1 cases). Windows that fill their
    ring, several planes, and thread splits inside a plane (1 or 3 threads over 2 x 2 planes of
    19 rows): forward and every gradient in float64 against the reference, through the fused
    ops ('mask') and the three-op path ('clamp', and 'mask' with a bias)."""
    from mmattn.ops import na2d, na2d_reference
    torch.manual_seed(0)
    H, W, D = 19, 3 * ks * dilation + 2, 6
    q, k, v = (torch.randn(2, 2, H, W, D, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    rpb = torch.randn(2, 2 * ks - 1, 2 * ks - 1, dtype=torch.float64).requires_grad_()
    bias = torch.randn(2, 2, H, W, ks * ks, dtype=torch.float64).requires_grad_()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for extra in (dict(rpb=rpb), dict(rpb=rpb, bias=bias)):
            inputs = (q, k, v) + tuple(extra.values())
            out = na2d(q, k, v, ks, dilation, border, **extra)
            grads = torch.autograd.grad((out * out).sum(), inputs)
            ref = na2d_reference(q, k, v, ks, dilation, border, **extra)
            ref_grads = torch.autograd.grad((ref * ref).sum(), inputs)
            assert (out - ref).abs().max().item() < 1e-10, sorted(extra)
            for name, a, b in zip(['q', 'k', 'v'] + sorted(extra, key=list(extra).index),
                                  grads, ref_grads):
                assert (a - b).abs().max().item() < 1e-9, (name, sorted(extra))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize('case', ['sasa-views', 'bias-dilation2', 'clamp-d16'])
def test_full_channel_blocks_do_not_depend_on_thread_count(case):
    """Float32 bits with 1, 3 and 5 threads. Which rows run as pairs (the row-pair kernels) and
    which alone depends on where a thread's range starts, and the two paths are inlined separately
    (gcc may contract a multiply and an add into an FMA in one copy and not the other, which
    once gave other bits with other thread counts). test_na2d's thread test runs D=6; here D=16:
    full 8-channel blocks, their 8x8 transposed stores and strip copies, a map width of 21 (full
    vectors and a tail for 8 and 16 lanes) and k=5 (a 4-column register block and one left
    over), with SASA's separable rpe on W-contiguous views (fused inference and fused training),
    a bias with dilation 2 (fused inference), and 'clamp' (fused inference)."""
    from mmattn.ops import concat_relative_embedding, na2d, na2d_split_rpe
    B, heads, H, W, D, ks = 1, 2, 13, 21, 16, 5
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3, 5):
            torch.set_num_threads(threads)
            g = torch.Generator().manual_seed(3)
            if case == 'sasa-views':
                x = torch.randn(B, 3 * heads * D, H, W, generator=g).requires_grad_()
                q, k, v = (t.view(B, heads, D, H, W).permute(0, 1, 3, 4, 2)
                           for t in x.split(heads * D, dim=1))
                rel = [torch.randn(heads, ks, D // 2, generator=g).requires_grad_()
                       for _ in range(2)]
                kwargs = dict(rpe=concat_relative_embedding(*rel), scale=1.0)
                with torch.no_grad():
                    out = [na2d(q, k, v, ks, **kwargs)]
                trained = na2d(q, k, v, ks, **kwargs)
                grad_out = torch.randn(trained.shape, generator=g)
                out += [trained, *torch.autograd.grad(trained, [x] + rel, grad_out)]
                # the same through the two tables (na2d_split_rpe and its training op, whose
                # backward sums over the queries in its GEMMs)
                with torch.no_grad():
                    out.append(na2d_split_rpe(q, k, v, ks, *rel, scale=1.0))
                trained = na2d_split_rpe(q, k, v, ks, *rel, scale=1.0)
                out += [trained, *torch.autograd.grad(trained, [x] + rel, grad_out)]
            else:
                q, k, v = (torch.randn(B, heads, H, W, D, generator=g) for _ in range(3))
                rpb = torch.randn(heads, 2 * ks - 1, 2 * ks - 1, generator=g)
                if case == 'bias-dilation2':
                    bias = torch.randn(B, heads, H, W, ks * ks, generator=g)
                    out = [na2d(q, k, v, ks, 2, 'mask', rpb=rpb, bias=bias)]
                else:
                    out = [na2d(q, k, v, ks, 1, 'clamp', rpb=rpb)]
            results.append(out)
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert torch.equal(a, b), (case, i)
