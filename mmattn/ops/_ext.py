"""Loads the compiled extension ``mmattn._C`` (which registers ``torch.ops.mmattn.*``).

``setup.py`` records the torch the extension is compiled for in ``mmattn/ops/_build.json``. An
extension built for another torch is not imported (its symbols would not resolve, or worse,
resolve against a different ABI): mmattn warns once, naming both versions, and the ops fall back
to the plain-PyTorch references.
"""
import json
import logging
import os.path as osp
from typing import Optional

logger = logging.getLogger('mmattn')

BUILD_INFO = osp.join(osp.dirname(osp.abspath(__file__)), '_build.json')
_FALLBACK = ('na2d and ghost_head_aggregate fall back to the plain-PyTorch reference, which is '
             'slower and uses much more memory.')


def build_info() -> Optional[dict]:
    """What ``setup.py`` recorded of the compiled build (``mmattn``, ``torch``, ``cuda``), or
    None when nothing was recorded (a pure-Python install, or an extension built before the
    record existed)."""
    try:
        with open(BUILD_INFO) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def torch_mismatch(info: Optional[dict], torch_version: str) -> Optional[str]:
    """Why an extension recorded by ``info`` cannot be used under ``torch_version`` (None when
    it can, or when nothing is recorded). Local tags count: ``2.14.1+cpu`` and ``2.14.1+cu130``
    are different builds."""
    if not info or not info.get('torch'):
        return None
    built = str(info['torch'])
    if built == torch_version:
        return None
    return (f'mmattn: the compiled ops (mmattn._C) were built for torch {built}, but this is '
            f'torch {torch_version}; they are not loaded and {_FALLBACK} Rebuild mmattn against '
            f'this torch: pip install --no-build-isolation --force-reinstall --no-deps .')


def load_extension(info: Optional[dict], torch_version: str) -> bool:
    """Imports ``mmattn._C`` unless ``info`` records another torch. Warns (once per call) and
    returns False when the ops cannot be used."""
    problem = torch_mismatch(info, torch_version)
    if problem:
        logger.warning(problem)
        return False
    try:
        from mmattn import _C  # noqa: F401  (importing registers the ops)
    except ImportError as e:
        hint = ('It was probably built for another torch: rebuild it with '
                '`pip install --no-build-isolation --force-reinstall --no-deps .`.'
                if 'undefined symbol' in str(e) else
                'Build them with `pip install --no-build-isolation -e .` (MMATTN_WITH_OPS=1).')
        logger.warning('mmattn: the compiled ops (mmattn._C) are not available (%s); %s %s', e,
                       _FALLBACK, hint)
        return False
    # reads MMATTN_NA2D_KERNELS once: a bad value is a ValueError here, not at the first na2d call
    getattr(_C, 'na2d_cpu_kernels', str)()
    return True


_LOADED: Optional[bool] = None  # set by the first has_compiled_ops() (mmattn.ops' import)


def has_compiled_ops() -> bool:
    """Whether ``mmattn._C`` is built for this torch and imported. Warns once when it is not.

    After the first call (at the import of ``mmattn.ops``) this only reads a module global, so
    ``torch.compile`` traces through it without a graph break."""
    global _LOADED
    if _LOADED is None:
        import torch
        _LOADED = load_extension(build_info(), torch.__version__)
    return _LOADED


def capturing_graph() -> bool:
    """Whether a graph is being captured: ``torch.jit`` tracing or scripting (mmengine's FLOP
    counter), ``torch.compile``, ``torch.export`` (the ONNX export; non-strict export counts
    as compiling) or ``torch.fx`` symbolic tracing. Eager-only fast paths (layout tricks, Python
    autograd identities, branches on sizes) check this first, so that a captured graph holds the
    plain operators and no size guard: a branch on ``H % 2`` under a dynamic export fixes the
    parity of every later input."""
    import torch
    import torch.fx
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing())


def cpu_inference_runs(*tensors) -> bool:
    """Whether an inference-only CPU op (one without autograd, e.g. ``mmattn::na2d_split_rpe``)
    may run on ``tensors`` (``None`` entries are skipped): compiled ops, CPU tensors, eager
    execution (no trace or export) and no gradient asked for (grad mode off, or no tensor that
    requires one). Where it may not, its Python function takes another route (a training op, or
    the differentiable composition the op stands for)."""
    return has_compiled_ops() and eager_cpu_inference(*tensors)


def eager_cpu_inference(*tensors) -> bool:
    """:func:`cpu_inference_runs` without the compiled ops: for inference-only paths through
    other libraries' CPU kernels (oneDNN's fused linear in ``mmattn.layers.Mlp``). Forward-mode
    AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) and functorch transforms count as
    asking for a gradient: the inference kernels would drop the tangents."""
    if capturing_graph():
        return False
    import torch
    import torch.autograd.forward_ad as forward_ad
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:  # a plain loop: SASA-ResNet asks 16 times per forward
        if t is not None and (t.device.type != 'cpu' or (grad and t.requires_grad)):
            return False
    return True


def has_cuda_kernels() -> bool:
    """Whether the compiled ops carry CUDA kernels (``FORCE_CUDA=1`` or a GPU at build time)."""
    if not has_compiled_ops():
        return False
    import torch
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key('mmattn::na2d_fused', 'CUDA'))
