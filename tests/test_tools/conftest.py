"""Fixtures of the end-to-end tool tests (helpers in ``_toy.py``)."""
import os.path as osp
import sys

import pytest

from _toy import ROOT


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A directory with data/toy (tiny) in which the configs' relative paths resolve."""
    pytest.importorskip('mmdet')
    root = tmp_path_factory.mktemp('toy')
    sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
    from make_toy_shapes import make_toy_shapes
    make_toy_shapes(str(root / 'data' / 'toy'), seed=1, img_size=96, num_train=8, num_val=4,
                    cls_img_size=32, cls_num_train=4, cls_num_val=2)
    return root
