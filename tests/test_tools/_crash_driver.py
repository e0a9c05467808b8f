"""Fault-injection driver of ``test_crash_safe_training.py`` (runs in its own process).

``python _crash_driver.py WORKSPACE OUT SCENARIO [SCENARIO ...]`` where a scenario is
``<loop>-<keep>-<fault>[-stock]``: ``loop`` is ``iter`` or ``epoch``, ``keep`` the
``max_keep_ckpts``, ``fault`` where the process dies (``os._exit``) during the second checkpoint
save, and ``-stock`` selects mmengine's own ``CheckpointHook``. For each scenario a forked child
trains through ``tools/train.py`` until the fault kills it; the work dir is copied; a second forked
child runs ``tools/train.py --resume`` to the end of the schedule and records the iteration,
optimizer and scheduler state right after loading. ``OUT/results.json`` gets, per scenario, the
crash's exit code, the files left, and the resumption's exit code and log tail; the recorded
states go to ``OUT/<scenario>/resumed.pth``. Forking after the imports keeps the 20 runs cheap.
"""
import json
import os
import os.path as osp
import shutil
import sys
import traceback

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import train as train_tool  # noqa: E402

CRASH_CODE = 17
BASE = osp.join(ROOT, 'configs', 'toy', 'resnet18_toy-shapes.py')
CONFIG = """_base_ = {base!r}
train_dataloader = dict(batch_size=4{sampler})
{loop}
default_hooks = dict(checkpoint=dict(type={hook!r}, by_epoch={by_epoch}, interval=1,
                                     max_keep_ckpts={keep}), logger=dict(interval=1))
"""


def write_config(path: str, loop: str, keep: int, stock: bool) -> None:
    epoch = loop == 'epoch'
    text = CONFIG.format(
        base=BASE, keep=keep, by_epoch=epoch,
        hook='mmengine.CheckpointHook' if stock else 'CheckpointHook',
        sampler=", sampler=dict(type='DefaultSampler', shuffle=True)" if epoch else '',
        loop=("train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=3, "
              "val_interval=3)" if epoch else
              "train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=3)"))
    with open(path, 'w') as f:
        f.write(text)


def install_fault(fault: str) -> None:
    """Patches the write path so that the process dies at ``fault`` of the 2nd checkpoint."""
    from mmengine.fileio.backends import LocalBackend
    seen = {'save': 0, 'put': 0, 'ckpt_replace': 0, 'record_replace': 0}

    def die():
        os._exit(CRASH_CODE)

    save, put, replace = torch.save, LocalBackend.put, os.replace

    def fake_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and 'state_dict' in obj:
            seen['save'] += 1
            if fault == 'before-write' and seen['save'] == 2:
                die()
        return save(obj, f, *args, **kwargs)

    def fake_put(self, obj, filepath):
        if str(filepath).endswith('.pth') or str(filepath).endswith('.pth.tmp'):
            seen['put'] += 1
            if fault == 'half-written' and seen['put'] == 2:
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                    f.flush()
                die()
        return put(self, obj, filepath)

    def fake_replace(src, dst, *args, **kwargs):
        src = str(src)
        if src.endswith('.pth.tmp'):
            seen['ckpt_replace'] += 1
            if fault == 'before-rename' and seen['ckpt_replace'] == 2:
                die()
            replace(src, dst, *args, **kwargs)
            if fault == 'after-file' and seen['ckpt_replace'] == 2:
                die()
            return None
        replace(src, dst, *args, **kwargs)
        if osp.basename(str(dst)) == 'last_checkpoint':
            seen['record_replace'] += 1
            if fault == 'after-record' and seen['record_replace'] == 2:
                die()
        return None

    torch.save, LocalBackend.put, os.replace = fake_save, fake_put, fake_replace


def record_resumed_state(out: str) -> None:
    """Makes ``tools/train.py`` register a hook saving the state right after resumption."""
    from mmengine.hooks import Hook

    class Recorder(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner):
            torch.save({'iter': runner.iter, 'epoch': runner.epoch,
                        'optimizer': runner.optim_wrapper.state_dict(),
                        'schedulers': [s.state_dict() for s in runner.param_schedulers]}, out)

    build = train_tool.build_runner

    def build_and_record(cfg):
        runner = build(cfg)
        runner.register_hook(Recorder())
        return runner

    train_tool.build_runner = build_and_record


def in_child(fn) -> int:
    """Runs ``fn`` in a forked child; returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            torch.set_num_threads(1)
            fn()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def redirect(path: str):
    """Context for a child: stdout and stderr to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def scenario(workspace: str, out: str, name: str) -> dict:
    parts = name.split('-')
    loop, keep, stock = parts[0], int(parts[1]), parts[-1] == 'stock'
    fault = '-'.join(parts[2:-1] if stock else parts[2:])
    base = osp.join(out, name)
    work_dir = osp.join(base, 'work')
    os.makedirs(base)
    config = osp.join(base, 'config.py')
    write_config(config, loop, keep, stock)
    args = [config, '--work-dir', work_dir]

    def crash():
        redirect(osp.join(base, 'crash.log'))
        install_fault(fault)
        train_tool.main(args)

    def resume():
        redirect(osp.join(base, 'resume.log'))
        record_resumed_state(osp.join(base, 'resumed.pth'))
        train_tool.main(args + ['--resume'])

    os.chdir(workspace)
    crash_code = in_child(crash)
    shutil.copytree(work_dir, osp.join(base, 'after_crash'))
    resume_code = in_child(resume)
    with open(osp.join(base, 'resume.log')) as f:
        log = f.read()
    return dict(crash_code=crash_code, resume_code=resume_code,
                left=sorted(os.listdir(osp.join(base, 'after_crash'))), resume_log=log[-4000:])


def main() -> None:
    workspace, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    from mmattn.utils import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    import mmpretrain.models  # noqa: F401  (imported once, before forking)
    results = {name: scenario(workspace, out, name) for name in names}
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
