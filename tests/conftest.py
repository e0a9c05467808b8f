"""Session-wide settings of the test suite."""
import glob
import hashlib
import os
import os.path as osp
import tempfile

import pytest

_OPS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'mmattn', 'ops')


def _inductor_cache_dir() -> str:
    """An Inductor cache keyed by the ops' Python sources: its FX-graph cache keys do not cover
    the custom ops' fake kernels, so a graph compiled against an older fake would be reused."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(osp.join(_OPS, '*.py'))):
        with open(path, 'rb') as f:
            digest.update(f.read())
    return osp.join(tempfile.gettempdir(), f'torchinductor_mmattn_{digest.hexdigest()[:16]}')


os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR', _inductor_cache_dir())

# Under pytest-xdist (`make test` runs one worker per core) each worker, and the tools it
# starts, gets its share of the cores: oversubscribed OpenMP threads spin against each other.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def record_ops():
    """``with record_ops() as rec: ...`` then ``rec.ops`` lists the name of every dispatched op
    (``'mmattn::na2d_fused'``, ``'aten::add'``, ...) and ``rec.mmattn_ops()`` mmattn's."""
    from torch.utils._python_dispatch import TorchDispatchMode  # torch after the settings above

    class OpRecorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func._schema.name)
            return func(*args, **(kwargs or {}))

        def mmattn_ops(self):
            return [op for op in self.ops if op.startswith('mmattn::')]

    return OpRecorder
