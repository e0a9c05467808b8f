"""Checkpoint integrity checks and the choice of what --resume continues from."""
import os

import pytest
import torch

from mmattn.utils.safe_io import (RESUME_KEYS, NoResumableCheckpoint, atomic_write_text,
                                  candidate_checkpoints, checkpoint_problem,
                                  resumable_checkpoint)


def _save(path, step):
    torch.save({'meta': {'iter': step, 'epoch': 0}, 'state_dict': {'w': torch.arange(4096.)},
                'message_hub': {}}, path)
    return str(path)


def test_intact_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(_save(tmp_path / 'a.pth', 1), RESUME_KEYS) is None


def test_each_kind_of_damage_is_named(tmp_path):
    good = _save(tmp_path / 'good.pth', 1)
    data = open(good, 'rb').read()
    cases = {'missing.pth': None, 'empty.pth': b'', 'truncated.pth': data[:len(data) // 2],
             'text.pth': b'not a checkpoint at all'}
    # a flipped byte inside the tensor data: the zip directory is fine, the CRC is not
    flipped = bytearray(data)
    offset = data.index(torch.arange(4096.).numpy().tobytes()[4000:4016])
    flipped[offset] ^= 0xFF
    cases['flipped.pth'] = bytes(flipped)
    expected = {'missing.pth': 'does not exist', 'empty.pth': 'empty', 'truncated.pth':
                'truncated', 'text.pth': 'not a torch checkpoint', 'flipped.pth': 'CRC'}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        problem = checkpoint_problem(str(tmp_path / name))
        assert problem is not None and expected[name] in problem, (name, problem)


def test_missing_keys_and_refused_pickles(tmp_path):
    torch.save({'state_dict': {}}, tmp_path / 'weights.pth')
    assert checkpoint_problem(str(tmp_path / 'weights.pth')) is None
    assert 'lacks the keys' in checkpoint_problem(str(tmp_path / 'weights.pth'), RESUME_KEYS)
    torch.save({'state_dict': {}, 'x': os.getcwd}, tmp_path / 'global.pth')
    assert 'Weights only load failed' in checkpoint_problem(str(tmp_path / 'global.pth'))


def test_resume_choice_falls_back_and_warns(tmp_path):
    class Log:
        messages = []

        def warning(self, message):
            self.messages.append(message)

    assert resumable_checkpoint(str(tmp_path)) is None  # nothing there: start afresh
    for step in (2, 4, 10):
        _save(tmp_path / f'iter_{step}.pth', step)
    _save(tmp_path / 'best_acc_iter_10.pth', 10)
    assert [os.path.basename(p) for p in candidate_checkpoints(str(tmp_path))] == \
        ['iter_10.pth', 'iter_4.pth', 'iter_2.pth']
    atomic_write_text(str(tmp_path / 'last_checkpoint'), str(tmp_path / 'iter_10.pth'))
    assert resumable_checkpoint(str(tmp_path), Log()) == str(tmp_path / 'iter_10.pth')
    assert not Log.messages
    (tmp_path / 'iter_10.pth').write_bytes(b'')
    assert resumable_checkpoint(str(tmp_path), Log()) == str(tmp_path / 'iter_4.pth')
    assert 'iter_10.pth' in Log.messages[-1] and 'empty' in Log.messages[-1]
    os.remove(tmp_path / 'last_checkpoint')
    assert resumable_checkpoint(str(tmp_path), Log()) == str(tmp_path / 'iter_4.pth')
    assert 'last_checkpoint does not exist' in Log.messages[-1]
    for step in (2, 4):
        (tmp_path / f'iter_{step}.pth').write_bytes(b'x')
    with pytest.raises(NoResumableCheckpoint, match='no intact checkpoint'):
        resumable_checkpoint(str(tmp_path), Log())
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing deleted
        'best_acc_iter_10.pth', 'iter_10.pth', 'iter_2.pth', 'iter_4.pth']


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write_text(str(tmp_path / 'f'), 'one')
    atomic_write_text(str(tmp_path / 'f'), 'two')
    assert (tmp_path / 'f').read_text() == 'two' and os.listdir(tmp_path) == ['f']
