"""Where one query pixel attends in one attention layer (``tools/analysis_tools/vis_attention.py``).

A family makes its attention visible by registering a hook for its attention module class with
:func:`register_attention_hook`. The model runs once on the image while the layer's call (its
arguments and output, :class:`LayerCall`) is recorded; the hook then reads, or re-runs the layer
to capture, what the layer computes, finds the map pixel of the query (given in image pixels,
with the image size) and returns that query's weights as a :class:`QueryMap`. The tool itself
knows no family (no ``if`` chain): ``ATTENTION_HOOKS`` is looked up by class.

Registered here:

* ELSA (``ELSAAttention``): the softmax window of every head and the effective per-tap weights
  with the ghost head, ``attn * ghost_mul + ghost_add``, averaged over channels;
* SASA (``SASAAttention``): the masked softmax window of ``na2d``, logits ``q . (k + rpe)``;
* LaViT (``LaViTAttentionVA`` / ``LaViTAttentionLA``): the softmax over the pooled ``P x P`` key
  grid that the layer returns (computed, or transformed from the previous layer's);
* PLG-ViT (``PLGAttention``): the local branch's softmax over the query's window and the global
  branch's softmax of the query's pooled cell over the ``G' x G'`` pooled grid;
* Castling-ViT (``LinearAngularAttention``, and ``MultiScaleLinearAngularAttention`` of
  Castling-MViTv2 over its pooled key grid): the linear-angular weights ``q^ . k^ / pi`` of the
  query over the keys (the ``0.5 v`` identity term and the conv term are not attention over keys
  and are left out).
"""
import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn


@dataclass
class QueryMap:
    """The attention of one query.

    Attributes:
        maps: named weights. ``layout='window'``: ``(k, k)`` window weights centred on the
            query, NaN at taps outside the map (masked, or zero padding that the layer attends
            to: see ``outside``). ``layout='grid'``: an ``(h, w)`` array whose cells tile the
            whole image (a pooled key grid, or a map-sized array with NaN where the query has
            no key).
        query: the query's ``(row, col)`` on the layer's map.
        map_size: the layer's map ``(H, W)``.
        dilation: spacing of the window's taps on the map (``'window'``).
        outside: per map, the total weight the layer puts on taps outside the map (0 where they
            are masked; ELSA attends to its zero padding).
        layout: ``'window'`` or ``'grid'``.
    """
    maps: Dict[str, np.ndarray]
    query: Tuple[int, int]
    map_size: Tuple[int, int]
    dilation: int = 1
    outside: Dict[str, float] = field(default_factory=dict)
    layout: str = 'window'


@dataclass
class LayerCall:
    """One recorded call of a layer: positional and keyword arguments and the output."""
    args: tuple
    kwargs: dict
    output: object


Hook = Callable[[nn.Module, LayerCall, Tuple[int, int], Tuple[int, int]], QueryMap]
ATTENTION_HOOKS: Dict[type, Hook] = {}


def register_attention_hook(cls: type):
    """Decorator: ``hook(module, call, query_px, image_size) -> QueryMap`` for ``cls`` modules;
    ``call`` is the :class:`LayerCall` recorded while the model ran, ``query_px`` is
    ``(row, col)`` in an image of ``image_size`` ``(H, W)``."""
    def wrap(fn):
        ATTENTION_HOOKS[cls] = fn
        return fn
    return wrap


def attention_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the attention layers of ``model`` that have a hook, in order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in ATTENTION_HOOKS]


@contextlib.contextmanager
def _capture(namespace, name: str, calls: list):
    """Replaces ``namespace.name`` (a function the layer calls: a module global, or a method of
    the layer instance) by a wrapper recording ``(args, kwargs, output)`` of every call."""
    original = getattr(namespace, name)
    own = name in vars(namespace)  # a module global, not a method looked up on the class

    def recorder(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    setattr(namespace, name, recorder)
    try:
        yield
    finally:
        if own:
            setattr(namespace, name, original)
        else:
            delattr(namespace, name)


def _window(weights: torch.Tensor, valid: torch.Tensor, k: int) -> np.ndarray:
    out = weights.detach().double().reshape(k, k).cpu().numpy().copy()
    out[~valid.reshape(k, k).cpu().numpy()] = np.nan
    return out


def _window_maps(a: torch.Tensor, valid: torch.Tensor,
                 k: int) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """Per-head and mean ``(k, k)`` windows of ``a`` ``(heads, k*k)``, and each head's weight on
    the taps outside the map."""
    maps = {f'head {i}': _window(a[i], valid, k) for i in range(a.shape[0])}
    maps['mean over heads'] = _window(a.mean(0), valid, k)
    outside = {f'head {i}': float(a[i][~valid.flatten()].sum()) for i in range(a.shape[0])}
    return maps, outside


def _valid_taps(row: int, col: int, h: int, w: int, k: int, dilation: int) -> torch.Tensor:
    r = k // 2
    ys = row + (torch.arange(k) - r) * dilation
    xs = col + (torch.arange(k) - r) * dilation
    return ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]


def query_map(layer: nn.Module, call, query_px: Tuple[int, int],
              image_size: Tuple[int, int]) -> QueryMap:
    """The registered hook of ``type(layer)`` on its recorded ``call`` (batch element 0; a bare
    tensor is taken as the only argument) for the query at image pixel ``query_px`` of an
    ``image_size`` image."""
    hook = ATTENTION_HOOKS.get(type(layer))
    if hook is None:
        known = ', '.join(sorted(c.__name__ for c in ATTENTION_HOOKS))
        raise ValueError(f'no attention-map hook for {type(layer).__name__}; layers with one: '
                         f'{known} (register one with mmattn.utils.attention_maps.'
                         'register_attention_hook)')
    if not (0 <= query_px[0] < image_size[0] and 0 <= query_px[1] < image_size[1]):
        raise ValueError(f'query must lie in the {image_size[0]}x{image_size[1]} image, got '
                         f'{tuple(query_px)}')
    if isinstance(call, torch.Tensor):
        call = LayerCall((call, ), {}, None)
    return hook(layer, call, query_px, image_size)


def _rerun(layer: nn.Module, call: LayerCall):
    with torch.no_grad():
        return layer(*call.args, **call.kwargs)


def _elsa_hook(layer: nn.Module, call: LayerCall, query_px: Tuple[int, int],
               image_size: Tuple[int, int]) -> QueryMap:
    import mmattn.layers.elsa_attention as elsa
    calls: list = []
    fused: list = []  # inference on CPU: the softmax runs inside ghost_head_softmax_aggregate
    with _capture(elsa, 'ghost_head_aggregate', calls), \
            _capture(elsa, 'ghost_head_softmax_aggregate', fused):
        _rerun(layer, call)
    if fused:
        v, logits, bias, mul, add, k, dilation = fused[-1][0]
        if bias is not None:
            logits = logits + bias.view(1, logits.shape[1], -1, 1, 1)
        attn = logits.softmax(dim=2)
    else:
        v, attn, mul, add, k, dilation = calls[-1][0]
    _, heads, _, h, w = attn.shape
    row, col = image_to_map(query_px, image_size, (h, w))
    valid = _valid_taps(row, col, h, w, k, dilation)
    a = attn[0, :, :, row, col]  # (heads, k*k)
    maps, outside = _window_maps(a, valid, k)
    if mul is not None or add is not None:
        c = v.shape[1]
        eff = a.repeat_interleave(c // heads, dim=0)  # per channel (C, k*k)
        if mul is not None:
            eff = eff * mul.reshape(c, -1)
        if add is not None:
            eff = eff + add.reshape(c, -1)
        maps['with ghost head (mean over channels)'] = _window(eff.mean(0), valid, k)
    return QueryMap(maps, (row, col), (h, w), dilation, outside)


def _sasa_hook(layer: nn.Module, call: LayerCall, query_px: Tuple[int, int],
               image_size: Tuple[int, int]) -> QueryMap:
    import mmattn.layers.sasa_attention as sasa
    from mmattn.ops import concat_relative_embedding
    from mmattn.ops.reference import na2d_qk_reference
    calls: list = []
    with _capture(sasa, 'na2d_split_rpe', calls):
        _rerun(layer, call)
    bound = inspect.signature(sasa.na2d_split_rpe).bind(*calls[-1][0], **calls[-1][1])
    bound.apply_defaults()
    a = bound.arguments
    kernel, dilation = a['kernel_size'], a['dilation']
    logits = na2d_qk_reference(a['q'], a['k'], kernel, dilation, 'mask', None,
                               concat_relative_embedding(a['rel_h'], a['rel_w']), a['scale'])
    attn = logits.softmax(-1)  # (1, heads, H, W, k*k), 0 at masked taps
    _, _, h, w, _ = attn.shape
    row, col = image_to_map(query_px, image_size, (h, w))
    valid = _valid_taps(row, col, h, w, kernel, dilation)
    maps, outside = _window_maps(attn[0, :, row, col], valid, kernel)
    return QueryMap(maps, (row, col), (h, w), dilation, outside)


def _per_head(weights: torch.Tensor, shape: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """``weights`` ``(heads, n)`` -> named ``shape`` arrays per head and their mean."""
    w = weights.detach().double().cpu()
    maps = {f'head {i}': w[i].reshape(shape).numpy() for i in range(w.shape[0])}
    maps['mean over heads'] = w.mean(0).reshape(shape).numpy()
    return maps


def _lavit_hook(layer: nn.Module, call: LayerCall, query_px: Tuple[int, int],
                image_size: Tuple[int, int]) -> QueryMap:
    attn = call.output[2]  # (B, heads, N, P*P): what the layer returned
    h, w = call.args[1] if len(call.args) > 1 else call.kwargs['hw_shape']
    row, col = image_to_map(query_px, image_size, (h, w))
    p = layer.pool_size
    return QueryMap(_per_head(attn[0, :, row * w + col], (p, p)), (row, col), (h, w),
                    layout='grid')


def _plg_hook(layer: nn.Module, call: LayerCall, query_px: Tuple[int, int],
              image_size: Tuple[int, int]) -> QueryMap:
    """Local: the softmax of the query's (unshifted) window, placed on the map; global: the
    softmax of the query's pooled cell over the pooled grid."""
    seen: Dict[str, torch.Tensor] = {}
    hooks = [layer.local_attn.attn_drop.register_forward_hook(
                 lambda m, a, out: seen.__setitem__('local', out)),
             layer.global_attn.attn_drop.register_forward_hook(
                 lambda m, a, out: seen.__setitem__('global', out))]
    try:
        _rerun(layer, call)
    finally:
        for hk in hooks:
            hk.remove()
    x = call.args[0]
    _, h, w, _ = x.shape
    row, col = image_to_map(query_px, image_size, (h, w))
    win = layer.local_attn.window_size
    hp, wp = -(-h // win) * win, -(-w // win) * win
    wr, wc = row // win, col // win
    index = wr * (wp // win) + wc  # the query's window (batch element 0)
    local = seen['local'][index, :, (row % win) * win + col % win]  # (heads, win*win)
    maps, outside = {}, {}
    for name, weights in _per_head(local, (win, win)).items():
        full = np.full((hp, wp), np.nan)
        full[wr * win:(wr + 1) * win, wc * win:(wc + 1) * win] = weights
        maps[f'local {name}'] = full[:h, :w]
        # the zero padding of a border window takes part as keys (Swin, spec D3)
        outside[f'local {name}'] = float(np.nansum(full) - np.nansum(full[:h, :w]))
    g = seen['global']  # (B, heads, G'^2, G'^2)
    size = int(round(g.shape[-1]**0.5))
    cell = image_to_map(query_px, image_size, (size, size))
    for name, weights in _per_head(g[0, :, cell[0] * size + cell[1]], (size, size)).items():
        maps[f'global {name}'] = weights
    return QueryMap(maps, (row, col), (h, w), outside=outside, layout='grid')


def _angular_kernel(q: torch.Tensor, k: torch.Tensor, eps: float) -> torch.Tensor:
    """``q^ . k^ / pi`` of one query ``(heads, d)`` over keys ``(heads, n, d)``: ``(heads, n)``."""
    import torch.nn.functional as F
    q_hat = F.normalize(q.double(), dim=-1, eps=eps)
    k_hat = F.normalize(k.double(), dim=-1, eps=eps)
    return torch.einsum('hd,hnd->hn', q_hat, k_hat) / np.pi


def _castling_hook(layer: nn.Module, call: LayerCall, query_px: Tuple[int, int],
                   image_size: Tuple[int, int]) -> QueryMap:
    """``q^ . k^ / pi`` of the query over the patch tokens (the linear-angular kernel)."""
    hw = call.args[1] if len(call.args) > 1 else call.kwargs.get('hw_shape')
    extra = call.args[2] if len(call.args) > 2 else call.kwargs.get('num_extra_tokens', 0)
    if hw is None:
        raise ValueError(f'{type(layer).__name__} was called without hw_shape: the patch grid '
                         'of its tokens is unknown')
    calls: list = []
    with _capture(layer, '_angular', calls):
        _rerun(layer, call)
    q, k = calls[-1][0][:2]
    if k.shape[2] != q.shape[2]:
        raise ValueError(f'{type(layer).__name__}: keys pooled to another grid than the queries '
                         'are not drawable')
    h, w = hw
    row, col = image_to_map(query_px, image_size, (h, w))
    weights = _angular_kernel(q[0, :, extra + row * w + col], k[0, :, extra:], layer.norm_eps)
    return QueryMap(_per_head(weights, (h, w)), (row, col), (h, w), layout='grid')


def _castling_mvit_hook(layer: nn.Module, call: LayerCall, query_px: Tuple[int, int],
                        image_size: Tuple[int, int]) -> QueryMap:
    """Multi-scale linear-angular attention: ``q^ . k^ / pi`` of the query's cell on the
    (pooled) query grid over the pooled key grid, drawn as that grid's cells."""
    import mmattn.layers.linear_angular_attention as la
    calls: list = []
    with _capture(la, 'pool_tokens', calls):
        _, q_hw = _rerun(layer, call)
    (q, _), (k, kv_hw) = calls[0][2], (calls[1][2][0], calls[2][2][1])  # q, k, v poolings
    row, col = image_to_map(query_px, image_size, q_hw)
    weights = _angular_kernel(q[0, :, row * q_hw[1] + col], k[0], layer.norm_eps)
    return QueryMap(_per_head(weights, tuple(kv_hw)), (row, col), tuple(q_hw), layout='grid')


def _register_builtin() -> None:
    from mmattn.layers.elsa_attention import ELSAAttention
    from mmattn.layers.less_attention import LaViTAttentionLA, LaViTAttentionVA
    from mmattn.layers.linear_angular_attention import (LinearAngularAttention,
                                                        MultiScaleLinearAngularAttention)
    from mmattn.layers.plg_attention import PLGAttention
    from mmattn.layers.sasa_attention import SASAAttention
    register_attention_hook(ELSAAttention)(_elsa_hook)
    register_attention_hook(SASAAttention)(_sasa_hook)
    register_attention_hook(LaViTAttentionVA)(_lavit_hook)
    register_attention_hook(LaViTAttentionLA)(_lavit_hook)
    register_attention_hook(PLGAttention)(_plg_hook)
    register_attention_hook(LinearAngularAttention)(_castling_hook)
    register_attention_hook(MultiScaleLinearAngularAttention)(_castling_mvit_hook)


_register_builtin()


def heatmap(qmap: QueryMap, name: str, image_size: Tuple[int, int]) -> np.ndarray:
    """``(H_img, W_img)`` array: each window tap's weight over the image pixels its map cell
    covers (NaN elsewhere: outside the window or masked). The map cell of map pixel ``(i, j)``
    is image rows ``[i * H_img / H, (i + 1) * H_img / H)`` (and likewise for columns)."""
    window = qmap.maps[name]
    (h, w), (hi, wi) = qmap.map_size, image_size
    out = np.full((hi, wi), np.nan)
    if qmap.layout == 'grid':  # cell (a, b) of an (gh, gw) array covers its share of the image
        gh, gw = window.shape
        for a in range(gh):
            for b in range(gw):
                out[int(round(a * hi / gh)):int(round((a + 1) * hi / gh)),
                    int(round(b * wi / gw)):int(round((b + 1) * wi / gw))] = window[a, b]
        return out
    k = window.shape[0]
    r = k // 2
    for a in range(k):
        for b in range(k):
            y = qmap.query[0] + (a - r) * qmap.dilation
            x = qmap.query[1] + (b - r) * qmap.dilation
            if 0 <= y < h and 0 <= x < w and not np.isnan(window[a, b]):
                out[int(round(y * hi / h)):int(round((y + 1) * hi / h)),
                    int(round(x * wi / w)):int(round((x + 1) * wi / w))] = window[a, b]
    return out


def image_to_map(point: Tuple[int, int], image_size: Tuple[int, int],
                 map_size: Tuple[int, int]) -> Tuple[int, int]:
    """The map pixel whose cell holds image pixel ``point`` (row, col)."""
    return (min(int(point[0] * map_size[0] / image_size[0]), map_size[0] - 1),
            min(int(point[1] * map_size[1] / image_size[1]), map_size[1] - 1))


def layer_call(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> LayerCall:
    """The first call of ``layer`` when ``model`` runs on ``image`` (one forward, no grad)."""
    seen: List[LayerCall] = []
    handle = layer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(LayerCall(args, kwargs, out)) if not seen
        else None, with_kwargs=True)
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f'{type(layer).__name__} did not run in the forward pass')
    return seen[0]


def find_layer(model: nn.Module, layer: str) -> Tuple[str, nn.Module]:
    """``layer``: an index into :func:`attention_layers` (``'0'``, ``'-1'``) or a module name."""
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f'{type(model).__name__} has no attention layer with a hook (hooks for: '
                         f'{", ".join(sorted(c.__name__ for c in ATTENTION_HOOKS))})')
    try:
        index = int(layer)
    except ValueError:
        named = dict(layers)
        if layer not in named:
            raise ValueError(f'layer {layer!r} is not one of the attention layers: '
                             f'{", ".join(n for n, _ in layers)}') from None
        return layer, named[layer]
    if not -len(layers) <= index < len(layers):
        raise ValueError(f'layer index {index} out of range: {len(layers)} attention layers '
                         f'(0 .. {len(layers) - 1})')
    return layers[index]


__all__ = ['QueryMap', 'LayerCall', 'ATTENTION_HOOKS', 'register_attention_hook',
           'attention_layers', 'query_map', 'heatmap', 'image_to_map', 'layer_call', 'find_layer']
