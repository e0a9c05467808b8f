"""Bad arguments of ``na2d`` and ``ghost_head_aggregate`` raise ``ValueError``/``TypeError``
naming the argument (and, for shapes, the expected shape), before any kernel runs."""
import pytest
import torch

import mmattn.ops.ghost_head as ghost_head
import mmattn.ops.neighborhood as neighborhood
from mmattn.ops import ghost_head_aggregate, na2d

B, HEADS, H, W, D, KS = 1, 2, 6, 7, 4, 3


def na2d_args(**changes):
    """Valid arguments of ``na2d`` (k = 3, all optional tensors given), with ``changes``."""
    shape = (B, HEADS, H, W, D)
    args = dict(q=torch.randn(shape), k=torch.randn(shape), v=torch.randn(shape), kernel_size=KS,
                dilation=1, border='mask', rpb=torch.randn(HEADS, 2 * KS - 1, 2 * KS - 1),
                rpe=torch.randn(HEADS, KS, KS, D), bias=torch.randn(B, HEADS, H, W, KS * KS),
                scale=None)
    args.update(changes)
    return args


def call_na2d(args):
    args = dict(args)
    q, k, v, ks = args.pop('q'), args.pop('k'), args.pop('v'), args.pop('kernel_size')
    return na2d(q, k, v, ks, **args)


NA2D_ERRORS = [
    # id, changes, exception, regex naming the argument, text of the expected shape (or None)
    ('q-rank4', dict(q=torch.randn(HEADS, H, W, D)), ValueError, r'^q\b', '(B, heads, H, W, D)'),
    ('q-not-a-tensor', dict(q=[[1.0]]), TypeError, r'^q\b', None),
    ('q-int64', dict(q=torch.ones(B, HEADS, H, W, D, dtype=torch.long)), TypeError, r'^q\b', None),
    ('k-shape', dict(k=torch.randn(B, HEADS, H, W - 1, D)), ValueError, r'^k\b',
     str((B, HEADS, H, W, D))),
    ('v-shape', dict(v=torch.randn(B, HEADS, H, W, D + 1)), ValueError, r'^v\b',
     str((B, HEADS, H, W, D))),
    ('k-rank6', dict(k=torch.randn(1, B, HEADS, H, W, D)), ValueError, r'^k\b', None),
    ('k-float64', dict(k=torch.randn(B, HEADS, H, W, D, dtype=torch.float64)), TypeError, r'^k\b',
     None),
    ('v-bfloat16', dict(v=torch.randn(B, HEADS, H, W, D).bfloat16()), TypeError, r'^v\b', None),
    ('k-int32', dict(k=torch.ones(B, HEADS, H, W, D, dtype=torch.int32)), TypeError, r'^k\b',
     None),
    ('k-meta-device', dict(k=torch.empty(B, HEADS, H, W, D, device='meta')), ValueError, r'^k\b',
     None),
    ('kernel-even', dict(kernel_size=4), ValueError, r'^kernel_size\b', None),
    ('kernel-zero', dict(kernel_size=0), ValueError, r'^kernel_size\b', None),
    ('kernel-float', dict(kernel_size=3.0), TypeError, r'^kernel_size\b', None),
    ('kernel-bool', dict(kernel_size=True), TypeError, r'^kernel_size\b', None),
    ('kernel-tuple', dict(kernel_size=(3, 3)), TypeError, r'^kernel_size\b', None),
    ('dilation-zero', dict(dilation=0), ValueError, r'^dilation\b', None),
    ('dilation-negative', dict(dilation=-1), ValueError, r'^dilation\b', None),
    ('dilation-float', dict(dilation=2.0), TypeError, r'^dilation\b', None),
    ('border-unknown', dict(border='zeros'), ValueError, r'^border\b', None),
    ('clamp-kernel-larger-than-map', dict(border='clamp', rpe=None, kernel_size=7,
                                          rpb=None, bias=None),
     ValueError, r"border='clamp'.*kernel_size", None),
    ('clamp-dilated-window-larger-than-map', dict(border='clamp', rpe=None, dilation=3),
     ValueError, r"border='clamp'.*dilation", None),
    ('rpe-in-clamp-mode', dict(border='clamp'), ValueError, r'^rpe\b', None),
    ('rpb-shape', dict(rpb=torch.randn(HEADS, KS, KS)), ValueError, r'^rpb\b',
     str((HEADS, 2 * KS - 1, 2 * KS - 1))),
    ('rpb-heads', dict(rpb=torch.randn(HEADS + 1, 2 * KS - 1, 2 * KS - 1)), ValueError,
     r'^rpb\b', str((HEADS, 2 * KS - 1, 2 * KS - 1))),
    ('rpb-rank2', dict(rpb=torch.randn(2 * KS - 1, 2 * KS - 1)), ValueError, r'^rpb\b',
     '(heads, 2k-1, 2k-1)'),
    ('rpb-float64', dict(rpb=torch.randn(HEADS, 2 * KS - 1, 2 * KS - 1, dtype=torch.float64)),
     TypeError, r'^rpb\b', None),
    ('rpe-shape', dict(rpe=torch.randn(HEADS, KS, KS, D + 1)), ValueError, r'^rpe\b',
     str((HEADS, KS, KS, D))),
    ('rpe-int', dict(rpe=torch.ones(HEADS, KS, KS, D, dtype=torch.long)), TypeError, r'^rpe\b',
     None),
    ('bias-shape', dict(bias=torch.randn(B, HEADS, H, W, KS * KS - 1)), ValueError, r'^bias\b',
     str((B, HEADS, H, W, KS * KS))),
    ('bias-rank4', dict(bias=torch.randn(HEADS, H, W, KS * KS)), ValueError, r'^bias\b',
     '(B, heads, H, W, k*k)'),
    ('bias-float16', dict(bias=torch.randn(B, HEADS, H, W, KS * KS).half()), TypeError,
     r'^bias\b', None),
    ('scale-string', dict(scale='0.5'), TypeError, r'^scale\b', None),
]


@pytest.mark.parametrize('fallback', [False, True], ids=['compiled', 'fallback'])
@pytest.mark.parametrize('changes, exc, match, shape_text',
                         [pytest.param(*case[1:], id=case[0]) for case in NA2D_ERRORS])
def test_na2d_bad_arguments(changes, exc, match, shape_text, fallback, monkeypatch):
    if fallback:  # the checks run before the choice of implementation
        monkeypatch.setattr(neighborhood, 'has_compiled_ops', lambda: False)
    for grad in (False, True):  # fused and training paths
        args = na2d_args(**changes)
        if grad and isinstance(args['q'], torch.Tensor) and args['q'].is_floating_point():
            args['q'] = args['q'].detach().requires_grad_()
        with pytest.raises(exc, match=match) as info:
            call_na2d(args)
        if shape_text is not None:
            assert shape_text in str(info.value)


def test_na2d_valid_arguments_pass():
    # the baseline of the table above is valid: every error comes from the one change
    assert call_na2d(na2d_args()).shape == (B, HEADS, H, W, D)
    clamp = na2d_args(border='clamp', rpe=None, kernel_size=5, rpb=None, bias=None, dilation=1)
    assert call_na2d(clamp).shape == (B, HEADS, H, W, D)


C, G = 6, 3


def ghost_args(**changes):
    args = dict(v=torch.randn(B, C, H, W), attn=torch.rand(B, G, KS * KS, H, W),
                ghost_mul=torch.randn(C, KS, KS), ghost_add=torch.randn(C, KS, KS),
                kernel_size=KS, dilation=1)
    args.update(changes)
    return args


GHOST_ERRORS = [
    ('v-rank3', dict(v=torch.randn(C, H, W)), ValueError, r'^v\b', '(B, C, H, W)'),
    ('v-int64', dict(v=torch.ones(B, C, H, W, dtype=torch.long)), TypeError, r'^v\b', None),
    ('attn-rank4', dict(attn=torch.rand(B, KS * KS, H, W)), ValueError, r'^attn\b',
     '(B, G, k*k, H, W)'),
    ('G-does-not-divide-C', dict(attn=torch.rand(B, 4, KS * KS, H, W)), ValueError, r'attn',
     'C=6'),
    ('attn-taps', dict(attn=torch.rand(B, G, KS * KS + 1, H, W)), ValueError, r'^attn\b',
     str((B, G, KS * KS, H, W))),
    ('attn-size', dict(attn=torch.rand(B, G, KS * KS, H + 1, W)), ValueError, r'^attn\b',
     str((B, G, KS * KS, H, W))),
    ('attn-batch', dict(attn=torch.rand(B + 1, G, KS * KS, H, W)), ValueError, r'^attn\b',
     str((B, G, KS * KS, H, W))),
    ('attn-float64', dict(attn=torch.rand(B, G, KS * KS, H, W, dtype=torch.float64)), TypeError,
     r'^attn\b', None),
    ('attn-meta-device', dict(attn=torch.empty(B, G, KS * KS, H, W, device='meta')), ValueError,
     r'^attn\b', None),
    ('ghost_mul-shape', dict(ghost_mul=torch.randn(C, 5, 5)), ValueError, r'^ghost_mul\b',
     str((C, KS, KS))),
    ('ghost_mul-per-head', dict(ghost_mul=torch.randn(G, KS, KS)), ValueError, r'^ghost_mul\b',
     str((C, KS, KS))),
    ('ghost_add-shape', dict(ghost_add=torch.randn(C - 1, KS, KS)), ValueError, r'^ghost_add\b',
     str((C, KS, KS))),
    ('ghost_add-rank4', dict(ghost_add=torch.randn(1, C, KS, KS)), ValueError, r'^ghost_add\b',
     '(C, k, k)'),
    ('ghost_mul-float64', dict(ghost_mul=torch.randn(C, KS, KS, dtype=torch.float64)),
     TypeError, r'^ghost_mul\b', None),
    ('kernel-even', dict(kernel_size=2, attn=torch.rand(B, G, 4, H, W), ghost_mul=None,
                         ghost_add=None), ValueError, r'^kernel_size\b', None),
    ('kernel-float', dict(kernel_size=3.0), TypeError, r'^kernel_size\b', None),
    ('dilation-zero', dict(dilation=0), ValueError, r'^dilation\b', None),
    ('dilation-float', dict(dilation=1.0), TypeError, r'^dilation\b', None),
]


@pytest.mark.parametrize('fallback', [False, True], ids=['compiled', 'fallback'])
@pytest.mark.parametrize('changes, exc, match, shape_text',
                         [pytest.param(*case[1:], id=case[0]) for case in GHOST_ERRORS])
def test_ghost_bad_arguments(changes, exc, match, shape_text, fallback, monkeypatch):
    if fallback:
        monkeypatch.setattr(ghost_head, 'has_compiled_ops', lambda: False)
    with pytest.raises(exc, match=match) as info:
        ghost_head_aggregate(**ghost_args(**changes))
    if shape_text is not None:
        assert shape_text in str(info.value)


def test_ghost_valid_arguments_pass():
    assert ghost_head_aggregate(**ghost_args()).shape == (B, C, H, W)
    assert ghost_head_aggregate(**ghost_args(ghost_mul=None, ghost_add=None)).shape == (B, C, H, W)
