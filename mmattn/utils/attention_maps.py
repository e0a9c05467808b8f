"""Where one query pixel attends in one attention layer, for ``tools/analysis_tools/vis_attention.py``.

A family makes its attention visible by registering a hook for its attention module class with
:func:`register_attention_hook`: the hook runs the layer's forward once on the layer's own input,
captures what the layer computes, finds the map pixel of the query (given in image pixels, with
the image size) and returns that query's weights as a :class:`QueryMap`.
The tool itself knows no family (no ``if`` chain): ``ATTENTION_HOOKS`` is looked up by class.

Registered here: ELSA (``ELSAAttention``: the softmax window of every head and the effective
per-tap weights with the ghost head, ``attn * ghost_mul + ghost_add``, averaged over channels)
and SASA (``SASAAttention``: the masked softmax window of ``na2d``, logits ``q . (k + rpe)``).
"""
import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn


@dataclass
class QueryMap:
    """The attention of one query.

    Attributes:
        maps: named ``(k, k)`` window weights centred on the query, NaN at taps outside the map
            (masked, or zero padding that the layer attends to: see ``outside``).
        query: the query's ``(row, col)`` on the layer's map.
        map_size: the layer's map ``(H, W)``.
        dilation: spacing of the window's taps on the map.
        outside: per map, the total weight the layer puts on taps outside the map (0 where they
            are masked; ELSA attends to its zero padding).
    """
    maps: Dict[str, np.ndarray]
    query: Tuple[int, int]
    map_size: Tuple[int, int]
    dilation: int = 1
    outside: Dict[str, float] = field(default_factory=dict)


Hook = Callable[[nn.Module, torch.Tensor, Tuple[int, int], Tuple[int, int]], QueryMap]
ATTENTION_HOOKS: Dict[type, Hook] = {}


def register_attention_hook(cls: type):
    """Decorator: ``hook(module, layer_input, query_px, image_size) -> QueryMap`` for ``cls``
    modules; ``query_px`` is ``(row, col)`` in an image of ``image_size`` ``(H, W)``."""
    def wrap(fn):
        ATTENTION_HOOKS[cls] = fn
        return fn
    return wrap


def attention_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the attention layers of ``model`` that have a hook, in order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in ATTENTION_HOOKS]


@contextlib.contextmanager
def _capture(namespace, name: str, calls: list):
    """Replaces ``namespace.name`` (a function the layer calls) by a recording wrapper."""
    original = getattr(namespace, name)

    def recorder(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(namespace, name, recorder)
    try:
        yield
    finally:
        setattr(namespace, name, original)


def _window(weights: torch.Tensor, valid: torch.Tensor, k: int) -> np.ndarray:
    out = weights.detach().double().reshape(k, k).cpu().numpy().copy()
    out[~valid.reshape(k, k).cpu().numpy()] = np.nan
    return out


def _valid_taps(row: int, col: int, h: int, w: int, k: int, dilation: int) -> torch.Tensor:
    r = k // 2
    ys = row + (torch.arange(k) - r) * dilation
    xs = col + (torch.arange(k) - r) * dilation
    return ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]


def query_map(layer: nn.Module, layer_input: torch.Tensor, query_px: Tuple[int, int],
              image_size: Tuple[int, int]) -> QueryMap:
    """The registered hook of ``type(layer)`` on ``layer_input`` (batch element 0) for the
    query at image pixel ``query_px`` of an ``image_size`` image."""
    hook = ATTENTION_HOOKS.get(type(layer))
    if hook is None:
        known = ', '.join(sorted(c.__name__ for c in ATTENTION_HOOKS))
        raise ValueError(f'no attention-map hook for {type(layer).__name__}; layers with one: '
                         f'{known} (register one with mmattn.utils.attention_maps.'
                         'register_attention_hook)')
    if not (0 <= query_px[0] < image_size[0] and 0 <= query_px[1] < image_size[1]):
        raise ValueError(f'query must lie in the {image_size[0]}x{image_size[1]} image, got '
                         f'{tuple(query_px)}')
    return hook(layer, layer_input, query_px, image_size)


def _elsa_hook(layer: nn.Module, x: torch.Tensor, query_px: Tuple[int, int],
               image_size: Tuple[int, int]) -> QueryMap:
    import mmattn.layers.elsa_attention as elsa
    calls: list = []
    with torch.no_grad(), _capture(elsa, 'ghost_head_aggregate', calls):
        layer(x[:1])
    v, attn, mul, add, k, dilation = calls[-1][0]
    _, heads, _, h, w = attn.shape
    row, col = image_to_map(query_px, image_size, (h, w))
    valid = _valid_taps(row, col, h, w, k, dilation)
    a = attn[0, :, :, row, col]  # (heads, k*k)
    maps = {f'head {i}': _window(a[i], valid, k) for i in range(heads)}
    maps['mean over heads'] = _window(a.mean(0), valid, k)
    outside = {name: float(a[i][~valid.flatten()].sum()) for i, name in enumerate(list(maps)[:-1])}
    if mul is not None or add is not None:
        c = v.shape[1]
        eff = a.repeat_interleave(c // heads, dim=0)  # per channel (C, k*k)
        if mul is not None:
            eff = eff * mul.reshape(c, -1)
        if add is not None:
            eff = eff + add.reshape(c, -1)
        maps['with ghost head (mean over channels)'] = _window(eff.mean(0), valid, k)
    return QueryMap(maps, (row, col), (h, w), dilation, outside)


def _sasa_hook(layer: nn.Module, x: torch.Tensor, query_px: Tuple[int, int],
               image_size: Tuple[int, int]) -> QueryMap:
    import mmattn.layers.sasa_attention as sasa
    from mmattn.ops.reference import na2d_qk_reference
    calls: list = []
    with torch.no_grad(), _capture(sasa, 'na2d', calls):
        layer(x[:1])
    (q, k, _v, kernel), kwargs = calls[-1][0][:4], calls[-1][1]
    dilation = kwargs.get('dilation', 1)
    logits = na2d_qk_reference(q, k, kernel, dilation, kwargs.get('border', 'mask'),
                               kwargs.get('rpb'), kwargs.get('rpe'), kwargs.get('scale'))
    attn = logits.softmax(-1)  # (1, heads, H, W, k*k), 0 at masked taps
    _, heads, h, w, _ = attn.shape
    row, col = image_to_map(query_px, image_size, (h, w))
    valid = _valid_taps(row, col, h, w, kernel, dilation)
    a = attn[0, :, row, col]
    maps = {f'head {i}': _window(a[i], valid, kernel) for i in range(heads)}
    maps['mean over heads'] = _window(a.mean(0), valid, kernel)
    outside = {name: float(a[i][~valid.flatten()].sum()) for i, name in enumerate(list(maps)[:-1])}
    return QueryMap(maps, (row, col), (h, w), dilation, outside)


def _register_builtin() -> None:
    from mmattn.layers.elsa_attention import ELSAAttention
    from mmattn.layers.sasa_attention import SASAAttention
    register_attention_hook(ELSAAttention)(_elsa_hook)
    register_attention_hook(SASAAttention)(_sasa_hook)


_register_builtin()


def heatmap(qmap: QueryMap, name: str, image_size: Tuple[int, int]) -> np.ndarray:
    """``(H_img, W_img)`` array: each window tap's weight over the image pixels its map cell
    covers (NaN elsewhere: outside the window or masked). The map cell of map pixel ``(i, j)``
    is image rows ``[i * H_img / H, (i + 1) * H_img / H)`` (and likewise for columns)."""
    window = qmap.maps[name]
    k = window.shape[0]
    (h, w), (hi, wi) = qmap.map_size, image_size
    out = np.full((hi, wi), np.nan)
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


def layer_input(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` receives when ``model`` runs on ``image`` (one forward, no grad)."""
    seen: List[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
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


__all__ = ['QueryMap', 'ATTENTION_HOOKS', 'register_attention_hook', 'attention_layers',
           'query_map', 'heatmap', 'image_to_map', 'layer_input', 'find_layer']
