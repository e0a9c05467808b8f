"""Plain-PyTorch references of mmattn's compiled ops.

Written for clarity from the definitions in ``specs/ops.md``, independently of the kernels: they
are the test oracles and the fallback when ``mmattn._C`` is not built. Both materialise the
``k x k`` neighbourhood of every pixel (an "unfold"), so they need ``k*k`` times the memory of
their inputs.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def window_taps(length: int, kernel_size: int, dilation: int, border: str,
                device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window of every query along one axis.

    Returns:
        tuple: ``(keys, valid, offset)``, each ``(length, kernel_size)``: the key coordinate of
        each tap (clamped to 0 where invalid), whether the tap is inside the image, and the
        relative-position-bias index ``(key - query) / dilation + kernel_size - 1``.
    """
    r = kernel_size // 2
    i = torch.arange(length, device=device)[:, None]
    a = torch.arange(kernel_size, device=device)[None, :]
    if border == 'mask':
        keys = i + (a - r) * dilation
        valid = (keys >= 0) & (keys < length)
    else:  # 'clamp': NATTEN; each dilation group is its own sub-grid and the window is shifted in
        group, ig = i % dilation, i // dilation
        group_len = (length - group + dilation - 1) // dilation
        start = torch.minimum(torch.clamp(ig - r, min=0), group_len - kernel_size)
        keys = (start + a) * dilation + group
        valid = torch.ones_like(keys, dtype=torch.bool)
    offset = torch.div(keys - i, dilation, rounding_mode='floor') + kernel_size - 1
    return keys.clamp(0, length - 1), valid, offset


def _windows(length_h: int, length_w: int, kernel_size: int, dilation: int, border: str,
             device: torch.device):
    """Row/column key indices, validity mask and bias offsets of every ``k x k`` window."""
    ki, vi, oi = window_taps(length_h, kernel_size, dilation, border, device)
    kj, vj, oj = window_taps(length_w, kernel_size, dilation, border, device)
    rows, cols = ki[:, None, :, None], kj[None, :, None, :]
    valid = vi[:, None, :, None] & vj[None, :, None, :]
    return rows, cols, valid, (oi[:, None, :, None], oj[None, :, None, :])


def na2d_qk_reference(q: torch.Tensor, k: torch.Tensor, kernel_size: int, dilation: int = 1,
                      border: str = 'mask', rpb: Optional[torch.Tensor] = None,
                      rpe: Optional[torch.Tensor] = None,
                      scale: Optional[float] = None) -> torch.Tensor:
    """The ``(B, heads, H, W, k*k)`` logits of :func:`mmattn.ops.na2d` (``-inf`` at taps outside
    the image in ``'mask'`` mode), before any ``bias``."""
    B, heads, H, W, D = q.shape
    scale = D**-0.5 if scale is None else scale
    rows, cols, valid, (oi, oj) = _windows(H, W, kernel_size, dilation, border, q.device)
    keys = k[:, :, rows, cols]  # (B, heads, H, W, k, k, D): the keys of every window
    if rpe is not None:
        keys = keys + rpe[:, None, None]
    logits = scale * torch.einsum('nhijd,nhijabd->nhijab', q, keys)
    if rpb is not None:
        logits = logits + rpb[:, oi, oj]
    return logits.masked_fill(~valid, float('-inf')).flatten(-2)


def na2d_av_reference(attn: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
                      border: str = 'mask') -> torch.Tensor:
    """``sum_slots attn * v[window]``: the aggregation of :func:`mmattn.ops.na2d`."""
    B, heads, H, W, D = v.shape
    rows, cols, valid, _ = _windows(H, W, kernel_size, dilation, border, v.device)
    attn = attn.view(B, heads, H, W, kernel_size, kernel_size).masked_fill(~valid, 0.)
    return torch.einsum('nhijab,nhijabd->nhijd', attn, v[:, :, rows, cols])


def na2d_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                   dilation: int = 1, border: str = 'mask', rpb: Optional[torch.Tensor] = None,
                   rpe: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention by gathering every window (see :func:`mmattn.ops.na2d`)."""
    logits = na2d_qk_reference(q, k, kernel_size, dilation, border, rpb, rpe, scale)
    if bias is not None:
        logits = logits + bias
    return na2d_av_reference(logits.softmax(-1), v, kernel_size, dilation, border)


def ghost_head_aggregate_reference(v: torch.Tensor, attn: torch.Tensor,
                                   ghost_mul: Optional[torch.Tensor] = None,
                                   ghost_add: Optional[torch.Tensor] = None,
                                   kernel_size: int = 7, dilation: int = 1) -> torch.Tensor:
    """ELSA's ghost-head aggregation with ``F.unfold`` (see :func:`mmattn.ops.ghost_head_aggregate`)."""
    B, C, H, W = v.shape
    G = attn.shape[1]
    kk = kernel_size * kernel_size
    pad = (kernel_size // 2) * dilation
    taps = F.unfold(v, kernel_size, dilation=dilation, padding=pad)  # zero padding
    taps = taps.view(B, G, C // G, kk, H, W)
    weight = attn.unsqueeze(2)  # (B, G, 1, kk, H, W)
    if ghost_mul is not None:
        weight = weight * ghost_mul.reshape(1, G, C // G, kk, 1, 1)
    if ghost_add is not None:
        weight = weight + ghost_add.reshape(1, G, C // G, kk, 1, 1)
    return (taps * weight).sum(3).reshape(B, C, H, W)
