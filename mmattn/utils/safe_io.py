"""Durable files and checkpoint integrity checks for crash-safe training.

* :func:`fsync_replace` / :func:`atomic_write_text`: a file appears under its final name only when
  all its bytes are on disk (write to a temporary name in the same directory, ``fsync``,
  ``os.replace``, ``fsync`` of the directory), so a process killed at any moment leaves either
  the old file or the complete new one.
* :func:`checkpoint_problem`: why a checkpoint cannot be loaded or resumed (missing, empty,
  truncated zip, CRC error, refused pickle, missing keys), or None when it is intact.
* :func:`resumable_checkpoint`: what ``--resume`` without a path continues from: the checkpoint
  ``last_checkpoint`` names when it is intact, else the newest intact one in the work dir (with a
  warning naming what was skipped and why). Nothing is ever deleted here.
"""
import glob
import os
import os.path as osp
import re
import zipfile
from typing import Iterable, List, Optional, Tuple

import torch

# keys mmengine's Runner.resume reads; Runner.load_checkpoint only needs a state dict
RESUME_KEYS = ('meta', 'state_dict', 'message_hub')
TMP_SUFFIX = '.tmp'


def tmp_name(filename: str) -> str:
    """The temporary name under which ``filename`` is written before it is moved into place."""
    return f'.{filename}{TMP_SUFFIX}'


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_replace(tmp_path: str, final_path: str) -> None:
    """Flushes ``tmp_path`` to disk and renames it to ``final_path`` atomically (same directory)."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp_path, final_path)
    _fsync_dir(osp.dirname(osp.abspath(final_path)))


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` so that a crash leaves the old content or the new one."""
    tmp = osp.join(osp.dirname(path), tmp_name(osp.basename(path)))
    with open(tmp, 'w') as f:
        f.write(text)
    fsync_replace(tmp, path)


def checkpoint_problem(path: str, keys: Iterable[str] = ('state_dict', )) -> Optional[str]:
    """Why the checkpoint at ``path`` is unusable, or None when it is intact.

    Checks that the file exists and is not empty, that its zip directory and every member's CRC
    are sound (torch's zip format), that it unpickles under ``weights_only=True`` and that it
    holds ``keys``. Reads the whole file once; tensors are memory-mapped, not copied.
    """
    from .checkpoint import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    if not osp.isfile(path):
        return 'the file does not exist'
    if osp.getsize(path) == 0:
        return 'the file is empty (0 bytes)'
    with open(path, 'rb') as f:
        magic = f.read(4)
    is_zip = zipfile.is_zipfile(path)
    if magic == b'PK\x03\x04' and not is_zip:
        return 'the file is truncated (a zip file without its central directory)'
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f'the file is truncated or corrupt ({e})'
        if bad is not None:
            return f'the file is corrupt (CRC error in {bad})'
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=is_zip)
    except Exception as e:  # torch raises many types here (pickle, zip, runtime errors)
        reason = ' '.join(str(e).split())
        if not is_zip:
            return f'the file is not a torch checkpoint in zip format ({reason[:300]})'
        return f'it cannot be loaded: {reason[:600]}'
    if not isinstance(checkpoint, dict):
        return f'it holds a {type(checkpoint).__name__}, not a checkpoint dict'
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        return f'it lacks the keys {missing}'
    meta = checkpoint.get('meta')
    if 'meta' in keys and not (isinstance(meta, dict) and 'iter' in meta and 'epoch' in meta):
        return "its 'meta' lacks 'iter'/'epoch'"
    return None


_STEP = re.compile(r'(\d+)\.pth$')


def _step_of(path: str) -> Tuple[int, float]:
    match = _STEP.search(osp.basename(path))
    return (int(match.group(1)) if match else -1, osp.getmtime(path))


def candidate_checkpoints(directory: str) -> List[str]:
    """Resumable checkpoints in ``directory``, newest first: ``*.pth`` other than ``best_*``
    (saved without optimizer state) and temporary files, ordered by the step in the name."""
    paths = [p for p in glob.glob(osp.join(directory, '*.pth'))
             if not osp.basename(p).startswith(('best_', '.'))]
    return sorted(paths, key=_step_of, reverse=True)


def intact_checkpoints(directory: str) -> List[str]:
    """The candidates of :func:`candidate_checkpoints` that pass :func:`checkpoint_problem`."""
    return [p for p in candidate_checkpoints(directory) if checkpoint_problem(p, RESUME_KEYS) is None]


class NoResumableCheckpoint(RuntimeError):
    """Raised when checkpoints exist but none of them can be resumed."""


def resumable_checkpoint(work_dir: str, logger=None) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) continues from, or None to start afresh.

    ``last_checkpoint`` in ``work_dir`` names the newest checkpoint; when it is missing or
    unusable, the newest intact checkpoint of that checkpoint's folder (or of ``work_dir``) is
    used and a warning names what was skipped and why. Raises :class:`NoResumableCheckpoint`
    when checkpoints exist but none is intact.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip() or None
    skipped = []
    if named is not None:
        problem = checkpoint_problem(named, RESUME_KEYS)
        if problem is None:
            return named
        skipped.append((named, problem))
    directories = [work_dir]
    if named is not None and osp.dirname(named) and osp.dirname(named) != work_dir:
        directories.insert(0, osp.dirname(named))
    for directory in directories:
        for path in candidate_checkpoints(directory):
            if any(osp.samefile(path, s) for s, _ in skipped if osp.exists(s)):
                continue
            problem = checkpoint_problem(path, RESUME_KEYS)
            if problem is None:
                if logger is not None:
                    what = [f'{record} does not exist'] if named is None else []
                    if skipped:
                        what.append('skipped unusable checkpoints (' + '; '.join(
                            f'{p}: {why}' for p, why in skipped) + ')')
                    what = '; '.join(what)
                    logger.warning(f'--resume: {what}; resuming from {path}, the newest intact '
                                   'checkpoint')
                return path
            skipped.append((path, problem))
    if skipped:
        what = '; '.join(f'{p}: {why}' for p, why in skipped)
        raise NoResumableCheckpoint(f'--resume: no intact checkpoint in {work_dir} ({what}); '
                                    'train without --resume to start afresh')
    return None
