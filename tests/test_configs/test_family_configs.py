"""Every config of every backbone family builds its model through its codebase's registry."""
import glob
import importlib
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))
    if osp.basename(osp.dirname(p)) not in ('_base_', 'toy'))
ADAPTERS = {'mmdet': 'mmattn.det', 'mmseg': 'mmattn.seg', 'mmpretrain': 'mmattn.cls'}


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds_model(path):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope')
    assert scope in ADAPTERS, f'{path}: default_scope {scope!r}'
    pytest.importorskip(scope)
    # the config itself must import the adapter of its codebase
    assert ADAPTERS[scope] in cfg.get('custom_imports', {}).get('imports', []), path
    importlib.import_module(ADAPTERS[scope])
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=True)
    registry = importlib.import_module(f'{scope}.registry')
    model = registry.MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.backbone.parameters()) > 0
    # SyncBN needs a process group; everything else initialises on CPU
    if 'SyncBN' not in str(cfg.model):
        model.init_weights()
