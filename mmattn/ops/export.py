"""Export of models that call mmattn's ops: decompositions into standard PyTorch operators.

``torch.export`` keeps every ``mmattn::`` op as one node (their fake kernels give it the shapes).
:func:`decompositions` maps each of them to its plain-PyTorch definition (``reference.py``:
gathers, ``einsum``, masked softmax), and :func:`export_program` exports a module and applies
them, so that the result holds ATen operators only: ``torch.onnx.export`` turns it into standard
ONNX operators, and ONNX Runtime runs it with no custom operator library. The decompositions are
shape-generic: batch and spatial sizes stay dynamic.

Imports torch only (the ONNX pieces live in :mod:`mmattn.utils.onnx_export`).
"""
from typing import Callable, Dict, Sequence, Tuple

import torch

from .reference import (ghost_head_aggregate_reference, na2d_av_reference, na2d_qk_reference,
                        na2d_reference)


def _border(clamp: bool) -> str:
    return 'clamp' if clamp else 'mask'


def _na2d_fused(q, k, v, rpb, rpe, bias, kernel_size, dilation, clamp, scale):
    return na2d_reference(q, k, v, kernel_size, dilation, _border(clamp), rpb, rpe, bias, scale)


def _na2d_qk(q, k, rpb, rpe, kernel_size, dilation, clamp, scale):
    return na2d_qk_reference(q, k, kernel_size, dilation, _border(clamp), rpb, rpe, scale)


def _na2d_av(attn, v, kernel_size, dilation, clamp):
    return na2d_av_reference(attn, v, kernel_size, dilation, _border(clamp))


def _ghost(v, attn, ghost_mul, ghost_add, kernel_size, dilation):
    return ghost_head_aggregate_reference(v, attn, ghost_mul, ghost_add, kernel_size, dilation)


def _bins(length, bins: int, device) -> torch.Tensor:
    """``(bins, length)`` membership of adaptive pooling: bin ``i`` covers
    ``[floor(i L / n), ceil((i + 1) L / n))``, PyTorch's rule, from the (symbolic) length."""
    i = torch.arange(bins, device=device)[:, None]
    pos = torch.arange(length, device=device)[None, :]
    start = torch.div(i * length, bins, rounding_mode='floor')
    end = torch.div((i + 1) * length + bins - 1, bins, rounding_mode='floor')
    return (pos >= start) & (pos < end)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling as two matrix products with bin-membership matrices, which
    stay exact for any (dynamic) input size; the stock translation fixes the input size."""
    oh, ow = output_size
    rows = _bins(x.shape[-2], oh, x.device).to(x.dtype)
    cols = _bins(x.shape[-1], ow, x.device).to(x.dtype)
    rows = rows / rows.sum(1, keepdim=True)
    cols = cols / cols.sum(1, keepdim=True)
    return rows @ x @ cols.transpose(0, 1)


def adaptive_max_pool2d(x, output_size):
    """Adaptive max pooling, separably (columns, then rows) with masked maxima; the indices are
    the row-major position of the first maximum, as PyTorch's kernel returns them."""
    oh, ow = output_size
    h, w = x.shape[-2], x.shape[-1]
    cols = _bins(w, ow, x.device)  # (ow, W)
    rows = _bins(h, oh, x.device)  # (oh, H)
    low = torch.finfo(x.dtype).min
    by_col = x.unsqueeze(-2).masked_fill(~cols, low)  # (..., H, ow, W)
    col_max, col_idx = by_col.max(dim=-1)  # (..., H, ow)
    by_row = col_max.unsqueeze(-3).masked_fill(~rows[..., None], low)  # (..., oh, H, ow)
    values, row_idx = by_row.max(dim=-2)  # (..., oh, ow)
    col_at = torch.gather(col_idx, -2, row_idx)  # the column of the winning row
    return values, row_idx * w + col_at


def decompositions() -> Dict[object, Callable]:
    """``torch.export``'s default decomposition table plus one entry per mmattn op
    (``na2d_fused``, ``na2d_qk``, ``na2d_av``, ``ghost_head_aggregate``) and size-generic
    adaptive pooling (UperNet's PPM, PLG-ViT's global branch)."""
    table = dict(torch.export.default_decompositions())
    table[torch.ops.aten._adaptive_avg_pool2d.default] = adaptive_avg_pool2d
    table[torch.ops.aten.adaptive_max_pool2d.default] = adaptive_max_pool2d
    ops = getattr(torch.ops, 'mmattn', None)
    if ops is not None and hasattr(ops, 'na2d_fused'):  # only with the compiled extension
        table.update({ops.na2d_fused.default: _na2d_fused, ops.na2d_qk.default: _na2d_qk,
                      ops.na2d_av.default: _na2d_av,
                      ops.ghost_head_aggregate.default: _ghost})
    return table


def mmattn_nodes(program: 'torch.export.ExportedProgram') -> Sequence[str]:
    """Names of the ``mmattn::`` operators left in an exported program's graph."""
    return [str(node.target) for node in program.graph.nodes
            if node.op == 'call_function' and str(node.target).startswith('mmattn.')]


def export_program(model: torch.nn.Module, example: torch.Tensor,
                   dynamic: bool = True) -> 'torch.export.ExportedProgram':
    """Exports ``model(example)`` (eval mode, no grad) with the mmattn ops decomposed.

    Args:
        model: a module taking one ``(B, C, H, W)`` tensor.
        example: the example input. For a dynamic export its batch must be at least 2 and its
            sides at least 2 (torch specialises sizes 0 and 1).
        dynamic: batch, height and width dynamic (one program for every size). Defaults to True.

    Raises:
        ValueError: when the model cannot be exported with dynamic sizes (it branches on them in
            a way the exporter cannot keep symbolic), naming the dimension and what to do.
    """
    if example.dim() != 4:
        raise ValueError(f'example must be (B, C, H, W), got shape {tuple(example.shape)}')
    dims = None
    if dynamic:
        if example.shape[0] < 2 or min(example.shape[2:]) < 2:
            raise ValueError('a dynamic export needs an example with batch >= 2 and sides >= 2, '
                             f'got {tuple(example.shape)}')
        dyn = torch.export.Dim.DYNAMIC
        dims = ({0: dyn, 2: dyn, 3: dyn}, )
    model = model.eval()
    with torch.no_grad():
        try:
            program = torch.export.export(model, (example, ), dynamic_shapes=dims, strict=False)
        except torch._dynamo.exc.UserError as e:  # constraint violations of dynamic sizes
            first = str(e).strip().splitlines()
            raise ValueError(f'{type(model).__name__} cannot be exported with dynamic batch/height/'
                             f'width: {" ".join(first[:3])[:500]}. Export it at a fixed size '
                             '(dynamic=False, or pytorch2onnx.py without --dynamic).') from e
        program = program.run_decompositions(decompositions())
    left = mmattn_nodes(program)
    if left:
        raise ValueError(f'these mmattn ops have no decomposition: {sorted(set(left))}')
    return program


def example_sizes(shape: Tuple[int, int], dynamic: bool) -> Tuple[Tuple[int, int], ...]:
    """The sizes a check of an export runs at: the export size, and a second, different one
    (neither a multiple of the other's strides) for a dynamic export."""
    h, w = shape
    return ((h, w), (h + 24, max(w - 16, 32))) if dynamic else ((h, w), )
