"""mmattn.utils.tools.load_config: config files and stock configs named ``codebase::path``."""
import os.path as osp

import pytest

from mmattn.utils.tools import load_config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_stock_config_by_package_path():
    pytest.importorskip('mmdet')
    cfg = load_config('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
                      {'train_cfg.max_epochs': 2}, 'none', None)
    assert cfg.model.backbone.type == 'SwinTransformer'
    assert cfg.train_cfg.max_epochs == 2
    assert cfg.work_dir == osp.join('./work_dirs', 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco')


def test_file_config_and_missing_files(tmp_path):
    pytest.importorskip('mmdet')
    path = osp.join(ROOT, 'configs', 'toy', 'mask-rcnn_elsa-swin-toy_fpn_toy-shapes.py')
    cfg = load_config(path, None, 'none', str(tmp_path))
    assert cfg.model.backbone.type == 'ELSASwin' and cfg.work_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match='config file not found'):
        load_config(str(tmp_path / 'nope.py'), None, 'none', None)
    with pytest.raises(FileNotFoundError):
        load_config('mmdet::no/such_config.py', None, 'none', None)
