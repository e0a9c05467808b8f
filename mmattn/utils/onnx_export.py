"""ONNX export of mmattn backbones and of whole classifiers/segmentors, checked with ONNX Runtime.

The graph is exported with ``torch.export`` (mmattn's ops decomposed into ATen operators by
:mod:`mmattn.ops.export`) and translated by torch's ONNX exporter (``dynamo=True``), so the file
holds standard ONNX operators only and runs in a stock ONNX Runtime. What is exported, from a
config's model:

* mmpretrain classifiers: the whole network, image -> class logits;
* mmseg ``EncoderDecoder``: backbone, neck and decode head, image -> logits resized to the image;
* mmdet detectors: backbone and neck (the parts mmattn provides), image -> feature maps;
* a bare backbone: image -> its ``out_indices`` maps.

The input is the preprocessed image (normalised, as the model's data preprocessor produces it).
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.ops.export import example_sizes, export_program


class ClassifierForExport(nn.Module):
    """Image -> logits of an mmpretrain classifier (``mode='tensor'``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, mode='tensor')


class SegmentorForExport(nn.Module):
    """Image -> decode-head logits of an mmseg ``EncoderDecoder``, bilinearly resized to the
    image as its whole-image inference does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.decode_head(self.model.extract_feat(x))
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                             align_corners=self.model.decode_head.align_corners)


class FeaturesForExport(nn.Module):
    """Image -> backbone (+ neck) maps of a detector, or a bare backbone's outputs."""

    def __init__(self, backbone: nn.Module, neck: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        return tuple(feats) if isinstance(feats, (list, tuple)) else (feats, )


def exportable(model: nn.Module, scope: Optional[str] = None) -> nn.Module:
    """The part of a config's model that is exported (see the module docstring)."""
    if scope == 'mmpretrain':
        return ClassifierForExport(model)
    if scope == 'mmseg':
        return SegmentorForExport(model)
    if scope == 'mmdet':
        return FeaturesForExport(model.backbone, getattr(model, 'neck', None))
    if scope is None:
        return FeaturesForExport(model)
    raise ValueError(f"scope must be 'mmpretrain', 'mmseg', 'mmdet' or None, got {scope!r}")


def _quiet_onnx():
    """torch's ONNX exporter prints its progress; a context that silences stdout."""
    import contextlib
    import io
    return contextlib.redirect_stdout(io.StringIO())


def export_onnx(model: nn.Module, path: str, shape: Tuple[int, int], in_channels: int = 3,
                dynamic: bool = True) -> str:
    """Exports ``model`` (one image tensor in, a tensor or tuple out) to the ONNX file ``path``.

    Args:
        model: e.g. from :func:`exportable`; exported in eval mode.
        path: the ``.onnx`` file to write.
        shape: ``(H, W)`` of the example input.
        in_channels: input channels. Defaults to 3.
        dynamic: dynamic batch, height and width. Defaults to True.

    Returns:
        str: ``path``.

    Raises:
        ValueError: for a dynamic export that ONNX Runtime cannot run at a second size (checked
            here, one run). The exporter keeps sizes symbolic but fixes some that are 1 at the
            example: a stage whose map is a single attention window, for instance. The message
            says to export at a larger ``shape``.
    """
    import onnx
    model = model.eval()
    example = torch.randn(2 if dynamic else 1, in_channels, *shape)
    program = export_program(model, example, dynamic)
    with torch.no_grad():
        outputs = model(example)
    count = len(outputs) if isinstance(outputs, (list, tuple)) else 1
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with _quiet_onnx():
        onnx_program = torch.onnx.export(program, (example, ), dynamo=True, verbose=False,
                                         input_names=['input'],
                                         output_names=[f'output{i}' for i in range(count)])
        onnx_program.save(path)
    onnx.checker.check_model(path)
    if dynamic:
        _check_other_size(path, shape, in_channels, count)
    return path


def _check_other_size(path: str, shape: Tuple[int, int], in_channels: int, count: int) -> None:
    """Runs a dynamic file once at the second size of :func:`example_sizes` (batch 1)."""
    size = example_sizes(shape, True)[1]
    try:
        outputs = run_onnx(path, torch.randn(1, in_channels, *size), log_level=4)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument types
        first = str(e).strip().splitlines()[0][:300]
        raise ValueError(
            f'the dynamic export made at {shape[0]}x{shape[1]} does not run at '
            f'{size[0]}x{size[1]} in ONNX Runtime ({first}). The exporter fixed a size that is 1 '
            'at the example (typically a stage whose map is one attention window, such as the '
            '7x7 last stage at 224x224): export at a larger shape (e.g. 256x256, or twice the '
            'size), or without dynamic sizes.') from e
    if len(outputs) != count:
        raise ValueError(f'{path}: {len(outputs)} outputs at {size}, expected {count}')


def onnx_domains(path: str) -> List[str]:
    """Operator domains used by the graph of an ONNX file ('' is the standard domain)."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return sorted({node.domain for node in model.graph.node})


def run_onnx(path: str, x: torch.Tensor, log_level: int = 3) -> List[np.ndarray]:
    """Runs the ONNX file in ONNX Runtime (CPU) on ``x``; ``log_level`` is ONNX Runtime's
    severity (3: errors, 4: fatal only)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def compare(model: nn.Module, path: str, sizes: Sequence[Tuple[int, int]], batch: int = 1,
            in_channels: int = 3, seed: int = 0) -> List[dict]:
    """ONNX Runtime against PyTorch eager on random inputs at each size.

    Returns:
        list[dict]: per size, ``size``, ``max_abs`` (largest absolute difference over all
        outputs) and ``rel`` (``max_abs`` over the largest absolute PyTorch output).
    """
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for size in sizes:
        x = torch.randn(batch, in_channels, *size, generator=generator)
        with torch.no_grad():
            ref = model(x)
        ref = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        got = run_onnx(path, x)
        if len(got) != len(ref):
            raise AssertionError(f'{path}: {len(got)} outputs, PyTorch gives {len(ref)}')
        max_abs, scale = 0., 0.
        for r, g in zip(ref, got):
            if tuple(r.shape) != g.shape:
                raise AssertionError(f'{path} at {size}: output shape {g.shape}, PyTorch '
                                     f'{tuple(r.shape)}')
            max_abs = max(max_abs, float((torch.from_numpy(g) - r).abs().max()))
            scale = max(scale, float(r.abs().max()))
        rows.append(dict(size=tuple(size), max_abs=max_abs, rel=max_abs / max(scale, 1e-12)))
    return rows


__all__ = ['ClassifierForExport', 'SegmentorForExport', 'FeaturesForExport', 'exportable',
           'export_onnx', 'onnx_domains', 'run_onnx', 'compare', 'example_sizes']
