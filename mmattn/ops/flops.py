"""FLOP handles of mmattn's ops for mmengine's (and fvcore's) jit-based complexity analysis.

Convention of both analyzers: one fused multiply-add counts as one FLOP. Without these handles
the analyzers report the ``mmattn::*`` ops as unsupported and count them as free.
"""
from math import prod
from typing import Any, Dict, List

import torch


def _shape(value: Any) -> List[int]:
    return list(value.type().sizes())


def _is_none(value: Any) -> bool:
    return isinstance(value.type(), torch._C.NoneType)


def na2d_qk_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``q . k`` for every window slot (plus ``q . rpe`` when given)."""
    logits = prod(_shape(outputs[0]))  # B * heads * H * W * k*k
    depth = _shape(inputs[0])[-1]
    return logits * depth * (1 if _is_none(inputs[3]) else 2)


def na2d_av_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``attn * v`` for every window slot."""
    return prod(_shape(inputs[0])) * _shape(inputs[1])[-1]


def _fused_products(inputs: List[Any], kernel_size_index: int) -> int:
    """Logits (with ``rpe``, input 4) and aggregation of a fused kernel (q is input 0)."""
    B, heads, H, W, D = _shape(inputs[0])
    kernel_size = inputs[kernel_size_index].toIValue()
    slots = B * heads * H * W * kernel_size * kernel_size
    return slots * D * (2 if _is_none(inputs[4]) else 3)


def na2d_fused_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Logits (with ``rpe``) and aggregation of the fused inference kernel."""
    return _fused_products(inputs, 6)


def na2d_fused_train_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """The fused training forward: the same products as the inference kernel."""
    return _fused_products(inputs, 5)


def ghost_head_aggregate_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """Per tap and channel: one multiply-add for the attention term ``x * A``, one more for each
    ghost matrix present (``x * S`` and ``A * M``), the convention of ``specs/elsa_swin.md`` 6.4
    (2 C k^2 per pixel for ELSA-Swin)."""
    B, C, H, W = _shape(inputs[0])
    kk = _shape(inputs[1])[2]
    per_tap = 1 + (not _is_none(inputs[2])) + (not _is_none(inputs[3]))
    return B * C * H * W * kk * per_tap


def sdpa_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention`` (mmpretrain's ViTs call it), which mmengine does
    not count: ``q @ k^T`` and ``attn @ v``, ``L * S * (E + Ev)`` multiply-adds per batch and
    head."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for n in q[:-2]:
        batch *= n
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


FLOP_HANDLES: Dict[str, Any] = {
    'mmattn::na2d_qk': na2d_qk_flops,
    'mmattn::na2d_av': na2d_av_flops,
    'mmattn::na2d_fused': na2d_fused_flops,
    'mmattn::na2d_fused_train': na2d_fused_train_flops,
    'mmattn::ghost_head_aggregate': ghost_head_aggregate_flops,
    'aten::scaled_dot_product_attention': sdpa_flops,
}

# operators mmengine leaves uncounted that cost no multiply-adds by the convention of the papers'
# FLOP tables (element-wise arithmetic and activations, normalisation arithmetic, pooling,
# padding, data movement); any other uncounted operator is an error in strict counts
ZERO_COST_OPS = frozenset({
    'aten::add', 'aten::add_', 'aten::sub', 'aten::rsub', 'aten::mul', 'aten::div',
    'aten::neg', 'aten::clamp_min', 'aten::ne', 'aten::fill_', 'aten::expand_as',
    'aten::unflatten', 'aten::im2col', 'aten::pad', 'aten::gelu', 'aten::silu', 'aten::sigmoid',
    'aten::softmax', 'aten::mean', 'aten::linalg_vector_norm', 'aten::max_pool2d',
    'aten::avg_pool2d', 'aten::adaptive_max_pool2d', 'aten::adaptive_avg_pool2d',
})


def strict_flops(model: Any, inputs: tuple) -> int:
    """Multiply-adds of ``model(*inputs)`` by mmengine's analyzer with mmattn's handles.

    Raises:
        RuntimeError: when the model runs an operator that has no FLOP handle and is not one of
            :data:`ZERO_COST_OPS` (it would silently count as 0), naming the operators.
    """
    from mmengine.analysis import FlopAnalyzer
    register_flop_handles()
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    total = analyzer.total()
    missing = sorted(set(analyzer.unsupported_ops()) - ZERO_COST_OPS)
    if missing:
        raise RuntimeError(f'{type(model).__name__}: operators without a FLOP handle (they would '
                           f'count as 0): {missing}; add a handle to mmattn/ops/flops.py')
    return int(total)


def _bicubic_flops(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::upsample_bicubic2d`` (position-embedding resizing): 16 taps per output element,
    mmengine's convention for the bilinear one (4 taps)."""
    n = 1
    for d in _shape(outputs[0]):
        n *= d
    return 16 * n


FLOP_HANDLES['aten::upsample_bicubic2d'] = _bicubic_flops


def register_flop_handles() -> None:
    """Adds the handles to the default op tables of mmengine's and fvcore's analyzers.

    The activation analyzer counts the output elements of every op, as it does for convolutions
    and matmuls.
    """
    from mmengine.analysis import complexity_analysis
    from mmengine.analysis.jit_handles import generic_activation_jit
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.update(FLOP_HANDLES)
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS.update(
        {name: generic_activation_jit() for name in FLOP_HANDLES})
    try:
        from fvcore.nn import flop_count
    except ImportError:
        return
    flop_count._DEFAULT_SUPPORTED_OPS.update(FLOP_HANDLES)
