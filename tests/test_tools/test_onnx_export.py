"""ONNX export: mmattn's ops as standard operators, every registered backbone, whole segmentors.

Every export is dynamic (batch, height, width) and run by ONNX Runtime at two sizes from the
same file, against PyTorch eager in fp32 (1e-4 of the output scale); the graphs may contain the
standard domain only. Backbones come from ``BACKBONES`` and their arch tables, so a family that
lands later is covered with no new test code.
"""
import os.path as osp
import sys

import pytest
import torch
import torch.nn as nn

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from _toy import ROOT, TOY, run  # noqa: E402

from mmattn.backbones import BACKBONES  # noqa: E402
from mmattn.backbones._variants import smallest_variant  # noqa: E402
from mmattn.ops import ghost_head_aggregate, has_compiled_ops, na2d  # noqa: E402
from mmattn.ops.export import (adaptive_avg_pool2d, adaptive_max_pool2d,  # noqa: E402
                               _na2d_av, _na2d_qk, decompositions, export_program)
from mmattn.utils.onnx_export import compare, export_onnx, onnx_domains  # noqa: E402

TOL = 1e-4
SIZES = ((64, 64), (88, 48))


class EveryOpMode(nn.Module):
    """One graph holding every mode of both ops, so one export checks them all."""

    def __init__(self, dim: int = 16, heads: int = 2, k: int = 5):
        super().__init__()
        self.heads, self.k = heads, k
        d = dim // heads
        self.rpb = nn.Parameter(torch.randn(heads, 2 * k - 1, 2 * k - 1))
        self.rpe = nn.Parameter(torch.randn(heads, k, k, d) * 0.2)
        self.to_bias = nn.Parameter(torch.randn(d, k * k) * 0.2)
        self.attn = nn.Conv2d(dim, heads * k * k, 1)
        self.ghost_mul = nn.Parameter(torch.rand(dim, k, k) + 0.5)
        self.ghost_add = nn.Parameter(torch.randn(dim, k, k) * 0.1)

    def forward(self, x):
        b, c, h, w = x.shape
        q = x.view(b, self.heads, c // self.heads, h, w).permute(0, 1, 3, 4, 2)
        kk, vv = q.flip(-1) * 0.5, q.tanh()
        bias = q @ self.to_bias
        outs = [na2d(q, kk, vv, self.k, 1, 'mask', rpb=self.rpb),
                na2d(q, kk, vv, self.k, 2, 'mask', rpe=self.rpe, bias=bias),
                na2d(q, kk, vv, self.k, 1, 'clamp', rpb=self.rpb, bias=bias),
                na2d(q, kk, vv, self.k, 2, 'clamp')]
        attn = self.attn(x).view(b, self.heads, self.k * self.k, h, w).softmax(2)
        outs += [ghost_head_aggregate(x, attn, None, None, self.k),
                 ghost_head_aggregate(x, attn, self.ghost_mul, None, self.k),
                 ghost_head_aggregate(x, attn, None, self.ghost_add, self.k, 2),
                 ghost_head_aggregate(x, attn, self.ghost_mul, self.ghost_add, self.k)]
        return tuple(outs)


def _check(model, tmp_path, name, sizes=SIZES, in_channels=3):
    path = export_onnx(model, str(tmp_path / f'{name}.onnx'), sizes[0], in_channels, dynamic=True)
    assert onnx_domains(path) == [''], 'non-standard operators in the graph'
    rows = (compare(model, path, sizes, in_channels=in_channels) +
            compare(model, path, sizes[:1], batch=3, in_channels=in_channels))
    for row in rows:
        assert row['rel'] <= TOL, (name, row)
    return path


@pytest.mark.skipif(not has_compiled_ops(), reason='the mmattn:: ops need the compiled extension')
def test_every_op_mode_exports_as_standard_operators(tmp_path):
    torch.manual_seed(0)
    model = EveryOpMode().eval()
    program = export_program(model, torch.randn(2, 16, 20, 24))
    assert not [n for n in program.graph.nodes if 'mmattn' in str(n.target)]
    # before the decompositions the graph does hold the ops, so the test exercises them
    with torch.no_grad():
        raw = torch.export.export(model, (torch.randn(2, 16, 20, 24), ), strict=False)
    assert {'mmattn.na2d_fused.default', 'mmattn.ghost_head_aggregate.default'} <= {
        str(n.target) for n in raw.graph.nodes}
    _check(model, tmp_path, 'ops', sizes=((20, 24), (33, 17)), in_channels=16)


@pytest.mark.skipif(not has_compiled_ops(), reason='the mmattn:: ops need the compiled extension')
@pytest.mark.parametrize('clamp', [False, True])
def test_training_op_decompositions_match_the_kernels(clamp):
    """``na2d_qk`` / ``na2d_av`` (the grad-mode pair) decompose to the same values."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 11, 13, 8) for _ in range(3))
    rpb = torch.randn(2, 9, 9)
    logits = torch.ops.mmattn.na2d_qk(q, k, rpb, None, 5, 2, clamp, 0.3)
    ref = _na2d_qk(q, k, rpb, None, 5, 2, clamp, 0.3)
    valid = torch.isfinite(ref)
    torch.testing.assert_close(logits[valid], ref[valid])
    attn = ref.softmax(-1)
    torch.testing.assert_close(torch.ops.mmattn.na2d_av(attn, v, 5, 2, clamp),
                               _na2d_av(attn, v, 5, 2, clamp))
    assert torch.ops.mmattn.na2d_qk.default in decompositions()


@pytest.mark.parametrize('shape', [(2, 3, 20, 24), (1, 2, 7, 5), (1, 1, 13, 31)])
@pytest.mark.parametrize('out', [(1, 1), (3, 3), (2, 4), (7, 7)])
def test_adaptive_pooling_decompositions_are_exact(shape, out):
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d(x, out),
                               nn.functional.adaptive_avg_pool2d(x, out))
    values, indices = nn.functional.adaptive_max_pool2d(x, out, return_indices=True)
    got_values, got_indices = adaptive_max_pool2d(x, out)
    assert torch.equal(got_values, values) and torch.equal(got_indices, indices)


class ShiftedWindowBlock(nn.Module):
    """Patch embedding + one shifted Swin block, on maps that need padding to the window."""

    def __init__(self):
        super().__init__()
        from mmattn.layers.window_attention import SwinBlock
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.block = SwinBlock(16, 2, window_size=7, shift=True)

    def forward(self, x):
        x = self.embed(x)
        b, c, h, w = x.shape
        y = self.block(x.flatten(2).transpose(1, 2), (h, w))
        return y.transpose(1, 2).reshape(b, c, h, w)


def test_shifted_window_attention_exports_dynamic_padded_sizes(tmp_path):
    """16x16 and 22x12 maps padded to multiples of 7. Two exporter pitfalls this guards: the
    floor division of a negative size (ceil as ``-(-h // w)``) becomes ONNX's truncating Div, and
    the region mask built by slice assignment gives a Transpose ONNX Runtime rejects."""
    torch.manual_seed(0)
    _check(ShiftedWindowBlock().eval(), tmp_path, 'swin-block')


def test_dynamic_export_fixed_by_a_single_window_is_refused_at_export(tmp_path):
    """At 28x28 the map is one 7x7 window and the exporter fixes that window count: the file
    would fail at every other size, so the export says so and what to do."""
    from mmattn.utils.onnx_export import export_onnx
    with pytest.raises(ValueError, match=r'made at 28x28 does not run at 52x32.*larger shape'):
        export_onnx(ShiftedWindowBlock().eval(), str(tmp_path / 'one-window.onnx'), (28, 28))


@pytest.mark.slow  # minutes per backbone on 2 cores: `pytest -m slow tests/test_tools/test_onnx_export.py`
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_smallest_variant_of_every_backbone_exports(name, tmp_path):
    cls = BACKBONES[name]
    variant, kwargs = smallest_variant(cls)
    torch.manual_seed(0)
    model = cls(**kwargs)
    model.init_weights()
    from mmattn.utils.onnx_export import FeaturesForExport
    _check(FeaturesForExport(model).eval(), tmp_path, f'{name}-{variant}')


def test_toy_segmentor_exports_whole_through_the_tool(tmp_path):
    """The CLI: a toy UperNet with an mmattn backbone, dynamic export, verified by the tool."""
    pytest.importorskip('mmseg')
    config = osp.join(TOY, 'sasa-resnet-26-w16_upernet_toy-shapes-128x128.py')
    out = tmp_path / 'upernet.onnx'
    proc = run([sys.executable, osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py'),
                config, '--shape', '64', '96', '--dynamic', '--verify', '--out', str(out)],
               tmp_path)
    assert "operator domains: ['']" in proc.stdout
    assert proc.stdout.count('[pytorch2onnx] verify') == 2 and 'verified' in proc.stdout
    # logits for the 3 toy classes (+ background) at the image size
    import onnxruntime as ort
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    logits = session.run(None, {'input': torch.randn(1, 3, 80, 72).numpy()})[0]
    assert logits.shape == (1, 3, 80, 72)
