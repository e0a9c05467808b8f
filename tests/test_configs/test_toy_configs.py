"""The toy configs load, build their model and datasets, and take one training step on toy data."""
import importlib
import importlib.util
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tests', 'test_tools'))
from _toy import scope_of, toy_configs  # noqa: E402

CONFIGS = sorted(toy_configs())
ADAPTERS = {'mmdet': 'mmattn.det', 'mmseg': 'mmattn.seg', 'mmpretrain': 'mmattn.cls'}
# which part of the toy data each codebase reads, relative to the toy root
PARTS = {'mmdet': 'coco', 'mmseg': 'ade', 'mmpretrain': 'cls'}
@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    spec = importlib.util.spec_from_file_location(
        'make_toy_shapes', osp.join(ROOT, 'tools', 'dataset_converters', 'make_toy_shapes.py'))
    mts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mts)
    out = str(tmp_path_factory.mktemp('toy'))
    mts.make_toy_shapes(out, seed=0, img_size=128, num_train=2, num_val=2, cls_img_size=64,
                        cls_num_train=2, cls_num_val=1)
    return out


def test_every_toy_config_is_covered():
    assert len(CONFIGS) >= 3
    assert {scope_of(p) for p in CONFIGS} == set(ADAPTERS)


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(p) for p in CONFIGS])
def test_toy_config_builds_and_trains_one_step(path, toy_root):
    scope = scope_of(path)
    pytest.importorskip(scope)
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import OptimWrapper

    cfg = Config.fromfile(path)
    assert cfg.default_scope == scope
    assert cfg.custom_imports == dict(imports=[ADAPTERS[scope]], allow_failed_imports=False)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.val_interval == cfg.train_cfg.max_iters
    assert cfg.default_hooks.checkpoint.by_epoch is False
    assert cfg.default_hooks.checkpoint.max_keep_ckpts >= 1
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].persistent_workers is False or cfg[loader].num_workers > 0
    # the schedule shortens from the command line: --cfg-options train_cfg.max_iters=4
    cfg.merge_from_dict({'train_cfg.max_iters': 4})
    assert cfg.train_cfg.max_iters == 4

    importlib.import_module(ADAPTERS[scope])
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=True)
    registry = importlib.import_module(f'{scope}.registry')

    # datasets read the generated toy data through the config's paths
    data_root = osp.join(toy_root, PARTS[scope])
    assert cfg.train_dataloader.dataset.data_root.rstrip('/') == f'data/toy/{PARTS[scope]}'
    datasets = {}
    for loader in ('train_dataloader', 'val_dataloader'):
        ds_cfg = cfg[loader].dataset.copy()
        ds_cfg.data_root = data_root
        datasets[loader] = registry.DATASETS.build(ds_cfg)
        assert len(datasets[loader]) > 0
    classes = datasets['train_dataloader'].metainfo['classes']
    assert tuple(classes) == ('circle', 'square', 'triangle')

    torch.manual_seed(0)
    model = registry.MODELS.build(cfg.model)
    model.init_weights()  # random init: must not try to download anything
    if scope == 'mmdet':
        heads = cfg.model.roi_head
        assert heads.bbox_head.num_classes == heads.mask_head.num_classes == len(classes)
    elif scope == 'mmseg':
        assert cfg.model.decode_head.num_classes == len(classes)
    else:
        assert cfg.model.head.num_classes == len(classes)

    batch = pseudo_collate([datasets['train_dataloader'][i] for i in range(2)])
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = model.train_step(batch, optim)
    assert losses and all(torch.isfinite(v).all() for v in losses.values())

    model.eval()
    with torch.no_grad():
        preds = model.val_step(pseudo_collate([datasets['val_dataloader'][0]]))
    assert len(preds) == 1
