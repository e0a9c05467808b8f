"""mmengine checkpoints load under weights_only=True; anything else pickled is still refused."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402

from mmattn.utils import allow_mmengine_checkpoints  # noqa: E402


class Forbidden:
    """A global that no allow-list contains."""

    def __reduce__(self):
        return (os.getcwd, ())


def mmengine_like_checkpoint() -> dict:
    hub = MessageHub.get_instance('mmattn-test')
    for i in range(3):
        hub.update_scalar('train/loss', float(i) / 3)
        hub.update_scalar('train/lr', np.float32(0.1))
    hub.update_info('iter', 7)
    return dict(meta=dict(iter=7, seed=np.int64(3), hist=np.arange(4.0)),
                state_dict={'w': torch.ones(2)}, message_hub=hub.state_dict())


def test_history_buffer_needs_the_allow_list(tmp_path):
    allow_mmengine_checkpoints()
    path = tmp_path / 'ckpt.pth'
    torch.save(mmengine_like_checkpoint(), path)
    # every global in the file is allow-listed now (no builtins.getattr)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    # in a fresh interpreter, without mmattn, torch refuses the checkpoint ...
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(f'''
        import torch
        torch.load({str(path)!r})
    ''')], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'HistoryBuffer' in proc.stderr or 'numpy' in proc.stderr
    # ... and with the allow-list it loads, contents intact
    ckpt = torch.load(path)  # weights_only=True is the default
    buf = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer)
    assert buf.current() == pytest.approx(2 / 3)
    assert buf.mean() == pytest.approx(1 / 3)  # default statistics restored by __setstate__
    assert ckpt['meta']['seed'] == 3
    np.testing.assert_array_equal(ckpt['meta']['hist'], np.arange(4.0))


def test_forbidden_global_is_refused(tmp_path):
    allow_mmengine_checkpoints()
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': Forbidden()}, path)
    with pytest.raises(pickle.UnpicklingError, match='getcwd'):
        torch.load(path)


def test_weights_only_is_not_disabled():
    allow_mmengine_checkpoints()
    assert torch.serialization._default_to_weights_only(None) is True
    assert os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD') in (None, '', '0')


def test_allow_list_is_idempotent():
    allow_mmengine_checkpoints()
    n = len(torch.serialization.get_safe_globals())
    allow_mmengine_checkpoints()
    assert len(torch.serialization.get_safe_globals()) == n


class ReachesAttribute:
    """Pickles as ``builtins.getattr(HistoryBuffer, 'min')``: what mmengine's own
    ``HistoryBuffer.__getstate__`` writes, and the door an allow-listed ``getattr`` would open."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, 'min'))


def test_checkpoint_pickling_getattr_is_refused(tmp_path):
    allow_mmengine_checkpoints()
    path = tmp_path / 'getattr.pth'
    torch.save({'state_dict': {}, 'stat': ReachesAttribute()}, path)
    assert 'builtins.getattr' in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match='getattr'):
        torch.load(path)


# what allow_mmengine_checkpoints documents adding, by qualified name
_DOCUMENTED = {'mmengine.logging.history_buffer.HistoryBuffer', 'numpy.ndarray', 'numpy.dtype'}
_NUMPY_RECONSTRUCT = ('_reconstruct', 'scalar')


def test_allow_list_adds_exactly_the_documented_globals():
    """In a fresh interpreter: the globals mmattn adds to torch's allow-list are HistoryBuffer,
    numpy's array/scalar reconstruction, ndarray, dtype and the numeric dtype classes; nothing
    from builtins (getattr above all), nothing callable beyond those."""
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent('''
        import json, torch
        before = set(map(id, torch.serialization.get_safe_globals()))
        from mmattn.utils import allow_mmengine_checkpoints
        allow_mmengine_checkpoints()
        added = [g for g in torch.serialization.get_safe_globals() if id(g) not in before]
        print(json.dumps([f'{getattr(g, "__module__", "?")}.{getattr(g, "__qualname__", g)}'
                          for g in added]))
    ''')], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json
    added = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not [g for g in added if g.startswith('builtins.')], added
    unexpected = {g for g in added if g not in _DOCUMENTED
                  and not (g.startswith('numpy.') and g.rsplit('.', 1)[1] in _NUMPY_RECONSTRUCT)
                  and not (g.startswith('numpy.dtypes.') and g.endswith('DType'))}
    assert not unexpected, f'globals beyond the documented set: {sorted(unexpected)}'
    assert _DOCUMENTED <= added
    assert getattr not in torch.serialization.get_safe_globals()
