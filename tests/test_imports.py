"""``import mmattn`` is light; each adapter registers mmattn into its codebase."""
import importlib
import subprocess
import sys
import textwrap

import pytest

from mmattn.backbones import BACKBONES
from mmattn.engine import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_import_without_downstream_codebases():
    # mmdet, mmseg and mmpretrain are made unimportable: mmattn and its ops must still import
    proc = run_python('''
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('mmdet', 'mmseg', 'mmpretrain'):
                    raise ImportError(f'blocked {name}')
        sys.meta_path.insert(0, Block())
        import mmattn, mmattn.ops, mmattn.backbones, mmattn.utils
        assert not any(m.split('.')[0] in ('mmdet', 'mmseg', 'mmpretrain') for m in sys.modules)
        try:
            import mmattn.det
        except ImportError as e:
            print('adapter refused:', e)
        print('ok', mmattn.__version__)
    ''')
    assert proc.returncode == 0, proc.stderr
    assert 'ok ' in proc.stdout
    assert 'adapter refused: blocked mmdet' in proc.stdout


def test_import_mmattn_is_light():
    proc = run_python('''
        import sys, mmattn
        heavy = [m for m in ('torch', 'mmengine', 'mmcv') if m in sys.modules]
        print(heavy)
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


@pytest.mark.parametrize('adapter, registry_module', [
    ('mmattn.det', 'mmdet.registry'),
    ('mmattn.seg', 'mmseg.registry'),
    ('mmattn.cls', 'mmpretrain.registry'),
])
def test_adapter_registers_everything(adapter, registry_module):
    pytest.importorskip(registry_module.split('.')[0])
    importlib.import_module(adapter)
    registries = importlib.import_module(registry_module)
    for table, registry in ((BACKBONES, registries.MODELS), (HOOKS, registries.HOOKS),
                            (OPTIM_WRAPPER_CONSTRUCTORS, registries.OPTIM_WRAPPER_CONSTRUCTORS)):
        for name, cls in table.items():
            assert registry.get(name) is cls, f'{name} missing from {registry_module}'

    # the FLOP handles of the ops reach mmengine's analyzer
    from mmengine.analysis import complexity_analysis
    for op in ('mmattn::na2d_qk', 'mmattn::na2d_av', 'mmattn::na2d_fused',
               'mmattn::na2d_fused_train', 'mmattn::ghost_head_aggregate'):
        assert op in complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS

    # mmengine checkpoints load with weights_only=True
    import torch
    from mmengine.logging import HistoryBuffer
    assert HistoryBuffer in torch.serialization.get_safe_globals()


def test_adapter_refuses_name_clash():
    pytest.importorskip('mmdet')
    from mmengine.registry import Registry

    from mmattn._adapter import register_components
    registry = Registry('test')

    class Impostor:
        pass

    name = 'CPUDistributedDataParallel'
    registry.register_module(name=name, module=Impostor)
    import mmattn.backbones as backbones
    saved = dict(backbones.BACKBONES)
    try:
        backbones.BACKBONES[name] = type('Other', (), {})
        with pytest.raises(KeyError, match=name):
            register_components(registry)
    finally:
        backbones.BACKBONES.clear()
        backbones.BACKBONES.update(saved)
