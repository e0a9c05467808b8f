"""Pieces shared by the transformer blocks: timm's MLP (and its oneDNN inference path) and the
token-block base class."""
import functools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch.nn.modules import module as nn_module

from mmattn.ops._ext import eager_cpu_inference


def fused_mlp(x: torch.Tensor, fc1: nn.Module, act: nn.Module, fc2: nn.Module,
              drops: Sequence[nn.Module],
              containers: Sequence[nn.Module] = ()) -> Optional[torch.Tensor]:
    """``fc2(act(fc1(x)))`` as oneDNN matmuls with GELU fused into ``fc1``'s output
    (``torch.ops.mkldnn._linear_pointwise``, oneDNN's linear with a post-op) where nothing can
    tell it from the modules, else ``None`` (the caller runs its modules).

    It runs for CPU inference in float32: no gradient asked for (forward-mode AD included), no
    autocast, no trace or export, ``torch.backends.mkldnn`` enabled, plain ``nn.Linear`` /
    ``nn.GELU`` (either form) / ``nn.Dropout`` modules, every dropout inactive (also a dropout
    switched to training inside an eval model: MC dropout), and no forward hooks on the modules,
    on ``containers`` (the Sequentials that hold them) or global ones. On this project's 2-core
    machine (2 threads, Swin-T's four MLP shapes at 224x224): fc1 + GELU 0.72-0.95x, fc2
    0.70-0.94x of ATen's ``addmm`` and GELU, most at the 7x7 stage; the README has the figures.
    The same values up to float32 rounding (a different summation order).
    """
    if type(fc1) is not nn.Linear or type(fc2) is not nn.Linear:
        return None  # before reading .weight: a quantised Linear has a weight() method
    # eager_cpu_inference first: it tests for a trace, under which x may be a proxy
    if not (eager_cpu_inference(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
            and type(act) is nn.GELU and act.approximate in ('none', 'tanh')
            and all(type(d) is nn.Dropout and (not d.training or d.p == 0) for d in drops)
            and x.dtype == torch.float32 and fc1.weight.dtype == torch.float32
            and fc2.weight.dtype == torch.float32 and _has_mkldnn_linear()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled('cpu')
            and not _hooked(fc1, act, fc2, *drops, *containers)):
        return None
    linear = torch.ops.mkldnn._linear_pointwise
    h = linear(x, fc1.weight, fc1.bias, 'gelu', [], act.approximate)
    return linear(h, fc2.weight, fc2.bias, 'none', [], '')


class Mlp(nn.Module):
    """``fc1 -> GELU -> Dropout -> fc2 -> Dropout`` (timm's ``Mlp``; official key names).

    CPU inference runs :func:`fused_mlp` (oneDNN matmuls, GELU fused into the first) where
    nothing can tell it from the modules; anything else, hooks included, runs the modules.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # its own test: TorchScript skips this block
            out = fused_mlp(x, self.fc1, self.act, self.fc2, (self.drop, ))
            if out is not None:
                return out
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook (the modules' own, or a global one) would see these modules."""
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


@functools.lru_cache(maxsize=None)
def _has_mkldnn_linear() -> bool:
    """Whether this torch has oneDNN and its fused linear op (checked once)."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


class TokenBlock(nn.Module):
    """Base of the blocks on tokens ``(B, H*W, C)`` of an ``hw_shape`` map: checks the input and
    runs the subclass's ``_inner`` under activation checkpointing when ``with_cp`` is set."""
    with_cp: bool = False

    def _inner(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != hw_shape[0] * hw_shape[1]:
            raise ValueError(f'x must be (B, {hw_shape[0]}*{hw_shape[1]}, C), '
                             f'got {tuple(x.shape)}')
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner, x, hw_shape, use_reentrant=False)
        return self._inner(x, hw_shape)
