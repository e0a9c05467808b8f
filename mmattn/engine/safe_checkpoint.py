"""``SafeCheckpointHook``: mmengine's ``CheckpointHook`` with crash-safe saving.

mmengine 0.10.7's hook deletes the oldest checkpoint *before* writing the new one, writes the new
file and ``last_checkpoint`` in place, and deletes the previous best checkpoint before saving the
new best. A job killed while saving (preemption, OOM kill, full disk) can then be left with no
checkpoint, a truncated one, or a ``last_checkpoint`` naming a deleted file.

This hook keeps every argument and behaviour of the stock hook and changes only the order and
the way files are written, on local file systems:

1. the checkpoint is written to a hidden temporary file in the output folder, flushed with
   ``fsync`` and renamed into place (``os.replace``, atomic);
2. ``last_checkpoint`` is written the same way;
3. only then are outdated checkpoints (``max_keep_ckpts``) and the previous best one deleted.

A crash at any point therefore leaves the previous complete checkpoint, named by
``last_checkpoint`` or found by ``tools/train.py --resume``. Only rank 0 writes. Remote backends
(``backend_args`` other than the local disk) keep the stock behaviour.

The adapters register the hook as ``SafeCheckpointHook`` and under the stock name
``CheckpointHook`` in the codebase's ``HOOKS`` registry, so every config (mmattn's and stock ones,
through mmattn's tools or ``mim train``) that imports an mmattn adapter gets it without edits;
``type='mmengine.CheckpointHook'`` selects the stock hook explicitly.
"""
import os
import os.path as osp
from typing import List

from mmengine.dist import is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook

from mmattn.utils.safe_io import TMP_SUFFIX, atomic_write_text, fsync_replace, tmp_name


class _DeferredRemoval:
    """A file backend whose ``remove``/``rmtree`` are queued instead of run (everything else is
    forwarded), so that the stock best-checkpoint logic deletes only after the new file is safe."""

    def __init__(self, backend, pending: List[str]) -> None:
        self._backend, self._pending = backend, pending

    def remove(self, path: str) -> None:
        self._pending.append(path)

    def rmtree(self, path: str) -> None:
        self._pending.append(path)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


class SafeCheckpointHook(CheckpointHook):
    """Crash-safe ``CheckpointHook`` (same arguments; see the module docstring)."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._local = isinstance(self.file_backend, LocalBackend)
        if not self._local:
            runner.logger.warning('SafeCheckpointHook: checkpoints go to a non-local backend, '
                                  'where they are saved as by the stock CheckpointHook')
            return
        if is_main_process() and osp.isdir(self.out_dir):
            stale = [n for n in os.listdir(self.out_dir)
                     if n.startswith('.') and n.endswith(TMP_SUFFIX)]
            for name in stale:  # never-completed writes of a killed run
                os.remove(osp.join(self.out_dir, name))
            if stale:
                runner.logger.info(f'SafeCheckpointHook: removed {len(stale)} incomplete '
                                   f'temporary file(s) of an interrupted save: {stale}')

    def _save_file(self, runner, filename: str, **kwargs) -> None:
        """``runner.save_checkpoint`` to a temporary name, then fsync and rename into place."""
        type(runner).save_checkpoint(runner, self.out_dir, tmp_name(filename),
                                     self.file_client_args, backend_args=self.backend_args,
                                     **kwargs)
        if is_main_process():
            fsync_replace(osp.join(self.out_dir, tmp_name(filename)),
                          osp.join(self.out_dir, filename))

    def _remove(self, paths: List[str]) -> None:
        if not is_main_process():
            return
        for path in paths:
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves directories
                self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not getattr(self, '_local', False):
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                old = self.keep_ckpt_ids.popleft()
                outdated.append(osp.join(self.out_dir, self.filename_tmpl.format(old)))
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        self._save_file(runner, filename, save_optimizer=self.save_optimizer,
                        save_param_scheduler=self.save_param_scheduler, meta=meta,
                        by_epoch=self.by_epoch, **self.args)
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        self._remove([p for p in outdated if p != self.last_ckpt])

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not getattr(self, '_local', False) or not self.save_best:
            return super()._save_best_checkpoint(runner, metrics)
        pending: List[str] = []
        backend = self.file_backend
        self.file_backend = _DeferredRemoval(backend, pending)

        def save_checkpoint(out_dir, filename, file_client_args=None, backend_args=None,
                            **kwargs):
            self._save_file(runner, filename, **kwargs)

        runner.save_checkpoint = save_checkpoint  # the stock logic's one call, made atomic
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            del runner.save_checkpoint
            self.file_backend = backend
        new_best = {getattr(self, 'best_ckpt_path', None),
                    *getattr(self, 'best_ckpt_path_dict', {}).values()}
        self._remove([p for p in pending if p not in new_best])
