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


def na2d_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                   dilation: int = 1, border: str = 'mask', rpb: Optional[torch.Tensor] = None,
                   rpe: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention by gathering every window (see :func:`mmattn.ops.na2d`)."""
    B, heads, H, W, D = q.shape
    ks = kernel_size
    scale = D**-0.5 if scale is None else scale
    ki, vi, oi = window_taps(H, ks, dilation, border, q.device)
    kj, vj, oj = window_taps(W, ks, dilation, border, q.device)
    # (B, heads, H, W, k, k, D): the keys and values of every window
    rows, cols = ki[:, None, :, None], kj[None, :, None, :]
    keys = k[:, :, rows, cols]
    values = v[:, :, rows, cols]
    if rpe is not None:
        keys = keys + rpe[:, None, None]
    logits = scale * torch.einsum('nhijd,nhijabd->nhijab', q, keys)
    if rpb is not None:
        logits = logits + rpb[:, oi[:, None, :, None], oj[None, :, None, :]]
    if bias is not None:
        logits = logits + bias.view(B, heads, H, W, ks, ks)
    valid = vi[:, None, :, None] & vj[None, :, None, :]
    logits = logits.masked_fill(~valid, float('-inf'))
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum('nhijab,nhijabd->nhijd', attn, values)


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
