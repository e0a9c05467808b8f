"""Argument checks of the public ops, in one place.

Every violation raises a ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong value, shape
or device) that names the argument and what was expected. Non-contiguous tensors are accepted:
the ops make them contiguous.
"""
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BORDERS = ('mask', 'clamp')


def check_tensor(name: str, t: object, ndim: int, layout: str) -> torch.Tensor:
    """Checks that ``t`` is a floating-point tensor of rank ``ndim``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}')
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f'{name} must be float16, bfloat16, float32 or float64, got {t.dtype}')
    if t.dim() != ndim:
        raise ValueError(f'{name} must have shape {layout} ({ndim} dims), got {tuple(t.shape)}')
    return t


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], layout: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f'{name} must have shape {layout} = {tuple(expected)}, got {tuple(t.shape)}')


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must share dtype and device with ``ref``."""
    if t.dtype != ref.dtype:
        raise TypeError(f'{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}')
    if t.device != ref.device:
        raise ValueError(f'{name} must be on the device of {ref_name} ({ref.device}), '
                         f'got {t.device}')


def check_int(name: str, value: object, minimum: int, odd: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {type(value).__name__} ({value!r})')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}')
    if odd and value % 2 == 0:
        raise ValueError(f'{name} must be odd, got {value}')
    return value


def check_na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
               dilation: int, border: str, rpb: Optional[torch.Tensor],
               rpe: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               scale: Optional[float]) -> None:
    """Validates the arguments of :func:`mmattn.ops.na2d`."""
    qkv_layout = '(B, heads, H, W, D)'
    check_tensor('q', q, 5, qkv_layout)
    for name, t in (('k', k), ('v', v)):
        check_tensor(name, t, 5, qkv_layout)
        check_shape(name, t, q.shape, f'{qkv_layout} like q')
        check_like(name, t, 'q', q)
    ks = check_int('kernel_size', kernel_size, 1, odd=True)
    d = check_int('dilation', dilation, 1)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    B, heads, H, W, D = q.shape
    if border == 'clamp' and (H // d < ks or W // d < ks):
        raise ValueError(
            f"border='clamp' needs H // dilation >= kernel_size and W // dilation >= kernel_size "
            f'(the shifted window must fit in the map); got H={H}, W={W}, dilation={d}, '
            f"kernel_size={ks}. Use border='mask' for small maps")
    if rpb is not None:
        check_tensor('rpb', rpb, 3, '(heads, 2k-1, 2k-1)')
        check_shape('rpb', rpb, (heads, 2 * ks - 1, 2 * ks - 1), '(heads, 2k-1, 2k-1)')
        check_like('rpb', rpb, 'q', q)
    if rpe is not None:
        if border != 'mask':
            raise ValueError("rpe (relative position embedding) needs border='mask', "
                             f'got border={border!r}')
        check_tensor('rpe', rpe, 4, '(heads, k, k, D)')
        check_shape('rpe', rpe, (heads, ks, ks, D), '(heads, k, k, D)')
        check_like('rpe', rpe, 'q', q)
    if bias is not None:
        check_tensor('bias', bias, 5, '(B, heads, H, W, k*k)')
        check_shape('bias', bias, (B, heads, H, W, ks * ks), '(B, heads, H, W, k*k)')
        check_like('bias', bias, 'q', q)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f'scale must be a float or None, got {type(scale).__name__}')


def check_split_rpe(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                    kernel_size: int) -> None:
    """Validates the tables of :func:`mmattn.ops.na2d_split_rpe` (after :func:`check_na2d`):
    ``(heads, k, D/2)`` each, with ``D`` even."""
    heads, D = q.shape[1], q.shape[-1]
    if D % 2:
        raise ValueError(f'the head dim D of q must be even (half pairs with rel_h, half with '
                         f'rel_w), got q of shape {tuple(q.shape)}')
    for name, t in (('rel_h', rel_h), ('rel_w', rel_w)):
        check_tensor(name, t, 3, '(heads, k, D/2)')
        check_shape(name, t, (heads, kernel_size, D // 2), '(heads, k, D/2)')
        check_like(name, t, 'q', q)


def check_ghost(v: torch.Tensor, attn: torch.Tensor, ghost_mul: Optional[torch.Tensor],
                ghost_add: Optional[torch.Tensor], kernel_size: int, dilation: int,
                attn_name: str = 'attn') -> None:
    """Validates the arguments of :func:`mmattn.ops.ghost_head_aggregate` (and of
    :func:`mmattn.ops.ghost_head_softmax_aggregate`, whose attention is named ``logits``)."""
    check_tensor('v', v, 4, '(B, C, H, W)')
    check_tensor(attn_name, attn, 5, '(B, G, k*k, H, W)')
    ks = check_int('kernel_size', kernel_size, 1, odd=True)
    check_int('dilation', dilation, 1)
    B, C, H, W = v.shape
    G = attn.shape[1]
    if G < 1 or C % G != 0:
        raise ValueError(f'{attn_name}.shape[1] (heads G) must divide the channels of v (C={C}), '
                         f'got G={G}')
    check_shape(attn_name, attn, (B, G, ks * ks, H, W), '(B, G, k*k, H, W)')
    check_like(attn_name, attn, 'v', v)
    for name, t in (('ghost_mul', ghost_mul), ('ghost_add', ghost_add)):
        if t is not None:
            check_tensor(name, t, 3, '(C, k, k)')
            check_shape(name, t, (C, ks, ks), '(C, k, k)')
            check_like(name, t, 'v', v)
