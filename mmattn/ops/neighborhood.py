"""Two-dimensional neighbourhood attention, ``mmattn.ops.na2d``.

Inference (nothing requires grad) runs the fused ``na2d_fused`` kernel, which keeps no ``k*k``
logits buffer. Training on the CPU with border 'mask' and no ``bias`` runs ``na2d_fused_train``,
the same kernel saving the probabilities in its own (strip) layout, and one backward op; every
other training case runs three ops (``na2d_qk`` -> softmax -> ``na2d_av``), each with its own
backward kernel. The ops are ``torch.library`` operators with fake kernels, so
``torch.compile``, ``torch.fx`` and ``torch.jit.trace`` see them as single nodes.

``mmattn.ops.na2d_split_rpe`` is ``na2d`` with SASA's relative embedding given as its row and
column tables; its CPU ops (``na2d_split_rpe``, ``na2d_split_rpe_train``) take the tables as they
are.
"""
from typing import Optional

import torch

from ._checks import check_na2d, check_split_rpe
from ._ext import capturing_graph, cpu_inference_runs, has_compiled_ops
from .reference import na2d_reference


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
         border: str = 'mask', rpb: Optional[torch.Tensor] = None,
         rpe: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
         scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention over a ``kernel_size x kernel_size`` window around each pixel.

    Per query ``(i, j)`` and window slot ``(a, b)`` with key position ``p``::

        logit = scale * q[i, j] . (k[p] + rpe[a, b]) + rpb[offset(p - (i, j))] + bias[i, j, a*k+b]
        out[i, j] = sum over valid slots of softmax(logit) * v[p]

    Args:
        q, k, v (Tensor): ``(B, heads, H, W, D)``, same dtype and device.
        kernel_size (int): odd window size ``k >= 1``.
        dilation (int): distance between window taps. Defaults to 1.
        border (str): ``'mask'`` keeps the window centred and drops taps outside the image;
            ``'clamp'`` shifts the window inside the image (NATTEN). Defaults to ``'mask'``.
        rpb (Tensor, optional): ``(heads, 2k-1, 2k-1)`` relative position bias.
        rpe (Tensor, optional): ``(heads, k, k, D)`` relative position embedding added to the
            keys of each window slot (SASA); ``'mask'`` mode only.
        bias (Tensor, optional): ``(B, heads, H, W, k*k)`` additive logits.
        scale (float, optional): multiplies ``q . k``. Defaults to ``D ** -0.5``.

    Returns:
        Tensor: ``(B, heads, H, W, D)``.
    """
    check_na2d(q, k, v, kernel_size, dilation, border, rpb, rpe, bias, scale)
    scale = float(q.shape[-1]**-0.5 if scale is None else scale)
    if not has_compiled_ops():
        return na2d_reference(q, k, v, kernel_size, dilation, border, rpb, rpe, bias, scale)
    clamp = border == 'clamp'
    if q.device.type != 'cpu':  # the CPU kernels copy any strides into their own layout
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    rpb = None if rpb is None else rpb.contiguous()
    rpe = None if rpe is None else rpe.contiguous()
    bias = None if bias is None else bias.contiguous()
    tensors = (q, k, v, rpb, rpe, bias)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return torch.ops.mmattn.na2d_fused(q, k, v, rpb, rpe, bias, kernel_size, dilation, clamp,
                                           scale)
    if (q.device.type == 'cpu' and not clamp and bias is None
            and q.dtype in (torch.float32, torch.float64)):
        return torch.ops.mmattn.na2d_fused_train(q, k, v, rpb, rpe, kernel_size, dilation,
                                                 scale)[0]
    logits = torch.ops.mmattn.na2d_qk(q, k, rpb, rpe, kernel_size, dilation, clamp, scale)
    if bias is not None:
        logits = logits + bias
    # fp16/bf16 logits: the softmax runs in fp32 (SASA's unscaled logits grow with the head dim)
    low_precision = logits.dtype in (torch.float16, torch.bfloat16)
    attn = logits.softmax(dim=-1, dtype=torch.float32 if low_precision else None).to(v.dtype)
    return torch.ops.mmattn.na2d_av(attn, v, kernel_size, dilation, clamp)


def concat_relative_embedding(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """SASA's ``rpe`` of :func:`na2d` from its row and column tables ``(heads, k, d)``:
    ``(heads, k, k, 2d)``, ``rpe[h, u, v] = concat(rel_h[h, u], rel_w[h, v])``."""
    h, k, half = rel_h.shape
    return torch.cat([rel_h[:, :, None, :].expand(h, k, k, half),
                      rel_w[:, None, :, :].expand(h, k, k, rel_w.shape[-1])], dim=-1)


def na2d_split_rpe(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                   rel_h: torch.Tensor, rel_w: torch.Tensor, dilation: int = 1,
                   scale: Optional[float] = None) -> torch.Tensor:
    """:func:`na2d` with border ``'mask'`` and SASA's relative embedding given by its two tables:
    ``na2d(q, k, v, kernel_size, dilation, rpe=concat_relative_embedding(rel_h, rel_w), scale)``,
    ``rpe[h, a, b] = concat(rel_h[h, a], rel_w[h, b])``.

    On the CPU the ops take the tables as they are: the ``(heads, k, k, D)`` table is not
    concatenated, and the kernels do not test it for that form on every call (together about 60
    us per call of SASA-ResNet, 16 calls per forward). Where no gradient is asked for
    (:func:`~mmattn.ops._ext.cpu_inference_runs`) that is ``mmattn::na2d_split_rpe``; training
    in float32/float64 runs ``mmattn::na2d_split_rpe_train``, whose backward computes the tables'
    gradients and the rpe's share of ``d_q`` from the logits' gradient summed over the window
    columns (rows) and rows (columns), not from the ``(heads, k, k, D)`` gradient of the table.
    Elsewhere (other dtypes, CUDA, a trace for FLOP counting or export) it is exactly the
    :func:`na2d` call above.

    Args:
        q, k, v (Tensor): ``(B, heads, H, W, D)``, same dtype and device, ``D`` even.
        kernel_size (int): odd window size ``k >= 1``.
        rel_h, rel_w (Tensor): ``(heads, k, D/2)`` tables of the window row and column offsets.
        dilation (int): distance between window taps. Defaults to 1.
        scale (float, optional): multiplies ``q . (k + rpe)``. Defaults to ``D ** -0.5``.

    Returns:
        Tensor: ``(B, heads, H, W, D)``.
    """
    check_na2d(q, k, v, kernel_size, dilation, 'mask', None, None, None, scale)
    check_split_rpe(q, rel_h, rel_w, kernel_size)
    op_scale = float(q.shape[-1]**-0.5 if scale is None else scale)
    if cpu_inference_runs(q, k, v, rel_h, rel_w):
        # .default: the overload itself, without the packet's overload resolution (a few us)
        return torch.ops.mmattn.na2d_split_rpe.default(q, k, v, rel_h, rel_w, kernel_size,
                                                       dilation, op_scale)
    if _split_training_runs(q, k, v, rel_h, rel_w):
        return torch.ops.mmattn.na2d_split_rpe_train.default(q, k, v, rel_h, rel_w, kernel_size,
                                                             dilation, op_scale)[0]
    return na2d(q, k, v, kernel_size, dilation, 'mask',
                rpe=concat_relative_embedding(rel_h, rel_w), scale=scale)


def _split_training_runs(*tensors: torch.Tensor) -> bool:
    """Whether :func:`na2d_split_rpe` trains through ``mmattn::na2d_split_rpe_train`` (where
    :func:`na2d` would run ``na2d_fused_train``): compiled ops, eager execution, CPU tensors of
    float32 or float64."""
    if not has_compiled_ops() or capturing_graph():
        return False
    return all(t.device.type == 'cpu' and t.dtype in (torch.float32, torch.float64)
               for t in tensors)


def strip_width(W: int, kernel_size: int, dilation: int) -> int:
    """Row length ``Wp`` of the CPU kernels' strip layout: ``W`` rounded up to 16 plus
    ``(kernel_size // 2) * dilation`` zero columns on each side (``na2d_kernels.h``)."""
    return 2 * (kernel_size // 2) * dilation + (W + 15) // 16 * 16


def _register() -> None:
    """Fake kernels and autograd of the ``mmattn::na2d_*`` ops (once, on first import).

    Outputs shaped like q, k or v take their memory layout (``empty_like``; the CPU entry points
    accept strided inputs, the CUDA ones get contiguous inputs); logits and d_attn are
    contiguous (``new_empty``)."""
    lib = torch.library

    def extras_grads_fake(q, rpe, kernel_size, with_rpb):  # d_rpb, d_rpe (empty when not asked)
        r = 2 * kernel_size - 1
        drpb = q.new_empty((q.shape[1], r, r)) if with_rpb else q.new_empty(0)
        drpe = rpe.new_empty(rpe.shape) if rpe is not None else q.new_empty(0)
        return drpb, drpe

    @lib.register_fake('mmattn::na2d_qk')
    def _qk_fake(q, k, rpb, rpe, kernel_size, dilation, clamp, scale):
        return q.new_empty((*q.shape[:4], kernel_size * kernel_size))

    @lib.register_fake('mmattn::na2d_qk_backward')
    def _qk_backward_fake(grad, q, k, rpe, kernel_size, dilation, clamp, scale, with_rpb):
        return (torch.empty_like(q), torch.empty_like(k),
                *extras_grads_fake(q, rpe, kernel_size, with_rpb))

    @lib.register_fake('mmattn::na2d_av')
    def _av_fake(attn, v, kernel_size, dilation, clamp):
        return torch.empty_like(v)

    @lib.register_fake('mmattn::na2d_av_backward')
    def _av_backward_fake(grad, attn, v, kernel_size, dilation, clamp):
        return attn.new_empty(attn.shape), torch.empty_like(v)

    @lib.register_fake('mmattn::na2d_fused')
    def _fused_fake(q, k, v, rpb, rpe, bias, kernel_size, dilation, clamp, scale):
        return torch.empty_like(q)

    @lib.register_fake('mmattn::na2d_split_rpe')
    def _split_rpe_fake(q, k, v, rel_h, rel_w, kernel_size, dilation, scale):
        return torch.empty_like(q)

    @lib.register_fake('mmattn::na2d_split_rpe_train')
    def _split_rpe_train_fake(q, k, v, rel_h, rel_w, kernel_size, dilation, scale):
        return _fused_train_fake(q, k, v, None, None, kernel_size, dilation, scale)

    @lib.register_fake('mmattn::na2d_split_rpe_train_backward')
    def _split_rpe_train_backward_fake(grad, q, k, v, attn_s, rel_h, rel_w, kernel_size,
                                       dilation, scale):
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
                rel_h.new_empty(rel_h.shape), rel_w.new_empty(rel_w.shape))

    @lib.register_fake('mmattn::na2d_fused_train')
    def _fused_train_fake(q, k, v, rpb, rpe, kernel_size, dilation, scale):
        B, heads, H, W = q.shape[:4]
        return torch.empty_like(q), q.new_empty(
            (B, heads, H, kernel_size * kernel_size, strip_width(W, kernel_size, dilation)))

    @lib.register_fake('mmattn::na2d_fused_train_backward')
    def _fused_train_backward_fake(grad, q, k, v, attn_s, rpe, kernel_size, dilation, scale,
                                   with_rpb):
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
                *extras_grads_fake(q, rpe, kernel_size, with_rpb))

    def fused_train_setup(ctx, inputs, output):
        q, k, v, rpb, rpe, kernel_size, dilation, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero (B, heads, H, k*k, Wp) gradient for attn_s
        ctx.save_for_backward(q, k, v, rpe, output[1])
        ctx.args = (kernel_size, dilation, scale)
        ctx.with_rpb = rpb is not None

    def fused_train_backward(ctx, grad, _grad_attn_s):
        if grad is None:  # an undefined output gradient (gradcheck checks this case)
            return (None, ) * 8
        q, k, v, rpe, attn_s = ctx.saved_tensors
        with_rpb = ctx.with_rpb and ctx.needs_input_grad[3]
        dq, dk, dv, drpb, drpe = torch.ops.mmattn.na2d_fused_train_backward(
            grad, q, k, v, attn_s, rpe, *ctx.args, with_rpb)
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
                drpb if with_rpb else None, drpe if rpe is not None and need[4] else None,
                None, None, None)

    def split_train_setup(ctx, inputs, output):
        q, k, v, rel_h, rel_w, kernel_size, dilation, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # as fused_train_setup
        ctx.save_for_backward(q, k, v, rel_h, rel_w, output[1])
        ctx.args = (kernel_size, dilation, scale)

    def split_train_backward(ctx, grad, _grad_attn_s):
        if grad is None:
            return (None, ) * 8
        q, k, v, rel_h, rel_w, attn_s = ctx.saved_tensors
        grads = torch.ops.mmattn.na2d_split_rpe_train_backward(grad, q, k, v, attn_s, rel_h,
                                                               rel_w, *ctx.args)
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)),
                None, None, None)

    def qk_setup(ctx, inputs, output):
        q, k, rpb, rpe, kernel_size, dilation, clamp, scale = inputs
        ctx.save_for_backward(q, k, rpe)
        ctx.args = (kernel_size, dilation, clamp, scale)
        ctx.with_rpb = rpb is not None

    def qk_backward(ctx, grad):
        q, k, rpe = ctx.saved_tensors
        with_rpb = ctx.with_rpb and ctx.needs_input_grad[2]
        dq, dk, drpb, drpe = torch.ops.mmattn.na2d_qk_backward(
            grad if grad.device.type == 'cpu' else grad.contiguous(), q, k, rpe, *ctx.args,
            with_rpb)
        return (dq, dk, drpb if with_rpb else None, drpe if rpe is not None else None,
                None, None, None, None)

    def av_setup(ctx, inputs, output):
        attn, v, kernel_size, dilation, clamp = inputs
        ctx.save_for_backward(attn, v)
        ctx.args = (kernel_size, dilation, clamp)

    def av_backward(ctx, grad):
        attn, v = ctx.saved_tensors
        grad = grad if grad.device.type == 'cpu' else grad.contiguous()
        dattn, dv = torch.ops.mmattn.na2d_av_backward(grad, attn, v, *ctx.args)
        return dattn, dv, None, None, None

    lib.register_autograd('mmattn::na2d_fused_train', fused_train_backward,
                          setup_context=fused_train_setup)
    lib.register_autograd('mmattn::na2d_split_rpe_train', split_train_backward,
                          setup_context=split_train_setup)
    lib.register_autograd('mmattn::na2d_qk', qk_backward, setup_context=qk_setup)
    lib.register_autograd('mmattn::na2d_av', av_backward, setup_context=av_setup)


if has_compiled_ops():
    _register()
