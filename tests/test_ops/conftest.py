"""Shared fixtures of the op tests."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _OpRecorder(TorchDispatchMode):
    """Records the name (``'mmattn::na2d_fused'``, ``'aten::add'``, ...) of every dispatched op."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))

    def mmattn_ops(self):
        return [op for op in self.ops if op.startswith('mmattn::')]


@pytest.fixture
def record_ops():
    """``with record_ops() as rec: ...`` then ``rec.ops`` lists the dispatched ops."""
    return _OpRecorder


@pytest.fixture
def num_threads():
    """Sets the intra-op thread count for one test (``num_threads(4)``) and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
