"""Installing mmattn into an environment it does not own: the wheel, ``setup.py`` without torch,
the torch-version record of the compiled ops, and ``python -m mmattn.env``."""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch

import mmattn
from mmattn.ops import _ext, has_compiled_ops

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE_VERSION = mmattn.__version__
TORCH_BASE = torch.__version__.split('+')[0]

# Makes ``import torch`` fail in the child, as pip's build isolation (or an environment without
# torch) does, then runs setup.py with the given arguments.
HIDE_TORCH = """
import runpy, sys
class HideTorch:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ModuleNotFoundError("No module named 'torch'")
sys.meta_path.insert(0, HideTorch())
sys.argv = ['setup.py'] + sys.argv[1:]
runpy.run_path('setup.py', run_name='__main__')
"""


def _run(cmd, cwd, env=None, timeout=600):
    full_env = dict(os.environ, PYTHONWARNINGS='ignore')
    full_env.pop('PYTHONPATH', None)
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def _copy_checkout(dst):
    """The checkout's sources without build outputs (the build must start from scratch)."""
    ignore = shutil.ignore_patterns('build', 'dist', 'work_dirs', 'data', '.git', '*.so',
                                    '_build.json', '__pycache__', '*.egg-info', '.pytest_cache')
    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


def test_setup_without_torch_says_what_to_install(tmp_path):
    proc = _run([sys.executable, '-c', HIDE_TORCH, '--version'], ROOT)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr
    assert 'torch is not importable' in proc.stderr
    assert 'pip install --no-build-isolation .' in proc.stderr
    assert 'MMATTN_WITH_OPS=0' in proc.stderr


def test_pure_python_wheel_builds_without_torch(tmp_path):
    src = _copy_checkout(tmp_path / 'src')
    proc = _run([sys.executable, '-c', HIDE_TORCH, '-q', 'bdist_wheel', '-d',
                 str(tmp_path / 'dist')],
                src, env=dict(MMATTN_WITH_OPS='0'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = os.listdir(tmp_path / 'dist')
    assert wheels == [f'mmattn-{BASE_VERSION}-py3-none-any.whl'], wheels  # no torch tag
    names = zipfile.ZipFile(tmp_path / 'dist' / wheels[0]).namelist()
    assert 'mmattn/ops/reference.py' in names
    assert not [n for n in names if n.endswith('.so') or n.endswith('_build.json')]


@pytest.mark.parametrize('env,tag', [({}, 'cpu'), (dict(FORCE_CUDA='1'), 'cuda')])
def test_version_carries_the_torch_build(env, tag):
    if tag == 'cuda':
        if torch.version.cuda is None:
            pytest.skip('FORCE_CUDA needs a CUDA build of torch')
        tag = 'cu' + torch.version.cuda.replace('.', '')
    elif torch.cuda.is_available():
        pytest.skip('with a GPU the default build has CUDA kernels')
    proc = _run([sys.executable, 'setup.py', '--version'], ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f'{BASE_VERSION}+torch{TORCH_BASE}.{tag}'


def test_torch_mismatch_names_both_versions():
    info = dict(mmattn='0.1.0+torch2.0.0.cpu', torch='2.0.0+cpu', cuda=None)
    problem = _ext.torch_mismatch(info, '2.14.1+cu130')
    assert 'torch 2.0.0+cpu' in problem and 'torch 2.14.1+cu130' in problem
    assert _ext.torch_mismatch(dict(info, torch='2.14.1+cu130'), '2.14.1+cu130') is None
    # another flavour of the same release is another build
    assert _ext.torch_mismatch(dict(info, torch='2.14.1+cpu'), '2.14.1+cu130')
    assert _ext.torch_mismatch(None, '2.14.1') is None  # nothing recorded: try the import


@pytest.mark.skipif(not has_compiled_ops(), reason='needs the compiled extension')
def test_extension_recorded_for_another_torch_falls_back_with_one_warning(tmp_path):
    """The record says another torch: ``mmattn._C`` is not imported, na2d gives the reference's
    values, one warning names both versions."""
    pkg = tmp_path / 'site' / 'mmattn'  # a copy of the built package with the record changed
    shutil.copytree(osp.join(ROOT, 'mmattn'), pkg, ignore=shutil.ignore_patterns('__pycache__'))
    with open(pkg / 'ops' / '_build.json', 'w') as f:
        json.dump(dict(mmattn='0.1.0+torch2.0.0.cpu', torch='2.0.0+cpu', cuda=None), f)
    script = f"""
import sys, torch
import mmattn
assert mmattn.__file__.startswith({str(pkg)!r}), mmattn.__file__
from mmattn.ops import na2d, na2d_reference, has_compiled_ops
q, k, v = (torch.randn(1, 2, 9, 9, 4) for _ in range(3))
out = na2d(q, k, v, 3)
out = na2d(q, k, v, 3)  # a second call does not warn again
assert not has_compiled_ops() and 'mmattn._C' not in sys.modules
torch.testing.assert_close(out, na2d_reference(q, k, v, 3))
print('fallback ok')
"""
    proc = _run([sys.executable, '-c', script], str(tmp_path),
                env=dict(PYTHONPATH=str(tmp_path / 'site')))
    assert proc.returncode == 0, proc.stderr
    assert 'fallback ok' in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if 'were built for torch' in line]
    assert len(warnings) == 1, proc.stderr
    assert 'torch 2.0.0+cpu' in warnings[0] and f'torch {torch.__version__}' in warnings[0]


def test_collect_env_reports_the_stack_and_the_ops(tmp_path):
    env = mmattn.collect_env()
    assert env['torch'] == torch.__version__
    for name in ('mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain'):
        assert re.match(r'\d+\.\d+', env[name]), (name, env[name])
    assert env['mmattn compiled ops (CPU)'].startswith('in use' if has_compiled_ops() else 'not')
    assert env['mmattn compiled ops (CUDA kernels)'] == ('yes' if _ext.has_cuda_kernels() else 'no')
    info = _ext.build_info()
    if info:
        assert env['mmattn ops built for'].startswith(f"torch {info['torch']}")
    proc = _run([sys.executable, '-m', 'mmattn.env'], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f'torch: {torch.__version__}' in proc.stdout
    assert 'mmattn compiled ops (CPU):' in proc.stdout


# the scratch environment's check: outside the checkout, every family's smallest variant runs,
# and the neighbourhood families go through the compiled ops
SCRATCH_CHECK = """
import json, sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
import mmattn, mmattn.det
from mmattn.backbones import BACKBONES
from mmattn.backbones._variants import smallest_variant
from mmattn.ops import has_compiled_ops

class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.namespace == 'mmattn'
        return func(*args, **(kwargs or {}))

report = dict(file=mmattn.__file__, compiled=has_compiled_ops(), path=sys.path, ops={})
torch.manual_seed(0)
for name, cls in sorted(BACKBONES.items()):
    variant, kwargs = smallest_variant(cls)
    model = cls(**kwargs).eval()
    with torch.no_grad(), CountOps() as counter:
        outs = model(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(o).all() for o in outs), name
    report['ops'][name] = counter.calls
print(json.dumps(report))
"""


@pytest.mark.skipif(not has_compiled_ops(), reason='the wheel test needs a build that compiles')
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """``pip wheel --no-build-isolation`` from a clean copy of the checkout, installed into a
    scratch environment that sees the stack (torch, OpenMMLab) but not the checkout."""
    src = _copy_checkout(tmp_path / 'src')
    proc = _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-build-isolation', '--no-deps',
                 '-w', str(tmp_path / 'dist'), str(src)], str(tmp_path),
                env=dict(MAX_JOBS=os.environ.get('MAX_JOBS', '2')), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = 'cu' + torch.version.cuda.replace('.', '') if torch.cuda.is_available() else 'cpu'
    version = f'{BASE_VERSION}+torch{TORCH_BASE}.{tag}'
    (wheel, ) = os.listdir(tmp_path / 'dist')
    assert wheel.startswith(f'mmattn-{version}-cp{sys.version_info.major}{sys.version_info.minor}')
    with zipfile.ZipFile(tmp_path / 'dist' / wheel) as z:
        assert [n for n in z.namelist() if re.match(r'mmattn/_C\..*\.so$', n)]
        info = json.loads(z.read('mmattn/ops/_build.json'))
    assert info == dict(mmattn=version, torch=torch.__version__,
                        cuda=torch.version.cuda if tag != 'cpu' else None)

    # scratch venv: the stack through a .pth line (which does not run the site-packages' own
    # .pth files, so the checkout's editable install stays invisible), mmattn from the wheel
    scratch = tmp_path / 'scratch'
    proc = _run([sys.executable, '-m', 'venv', '--without-pip', str(scratch)], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    scratch_py = str(scratch / 'bin' / 'python')
    purelib = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    scratch_site = _run([scratch_py, '-c', purelib], str(tmp_path)).stdout.strip()
    with open(osp.join(scratch_site, 'stack.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    proc = _run([sys.executable, '-m', 'pip', '--python', scratch_py, 'install', '-q', '--no-deps',
                 '--no-index', str(tmp_path / 'dist' / wheel)], str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = _run([scratch_py, '-c', SCRATCH_CHECK], str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['file'].startswith(scratch_site), report['file']
    assert not [p for p in report['path'] if p.startswith(ROOT)], 'the checkout is on the path'
    assert report['compiled'], proc.stderr[-2000:]
    assert 'fall back' not in proc.stderr, proc.stderr[-2000:]
    from mmattn.backbones import BACKBONES
    assert set(report['ops']) == set(BACKBONES)
    # the neighbourhood families run mmattn's compiled kernels
    assert report['ops']['ELSASwin'] > 0 and report['ops']['SASAResNet'] > 0, report['ops']
    proc = _run([scratch_py, '-m', 'mmattn.env'], str(tmp_path))
    assert f'installed as {version}' in proc.stdout and 'ops built for: torch' in proc.stdout
