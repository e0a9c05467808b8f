"""LaViT's ``loss_dp`` reaches the training log of a classifier, a detector and a segmentor trained
through ``tools/train.py`` (2 iterations each on the toy data, ``BackboneAuxLossHook``)."""
import os.path as osp

import pytest

from _toy import TOY, last_scalars, scalars, short_schedule, train

CONFIGS = {
    'classification': 'lavit-toy_toy-shapes.py',
    'detection': 'mask-rcnn_lavit-toy_fpn_toy-shapes.py',
    'segmentation': 'lavit-toy_upernet_toy-shapes-128x128.py',
}
# no validation: test_train_tools.py::test_train_and_evaluate already evaluates these configs
NO_VAL = ['val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
          'default_hooks.checkpoint.interval=100']


@pytest.mark.parametrize('task', sorted(CONFIGS))
def test_loss_dp_is_logged(workspace, tmp_path, task):
    train(osp.join(TOY, CONFIGS[task]), tmp_path, workspace, *short_schedule(2), *NO_VAL)
    records = [r for r in scalars(tmp_path) if 'loss' in r]
    assert [r['iter'] for r in records] == [1, 2]
    for record in records:
        # weight 0.1 times a mean of terms in [-1, 2/49 + 1/48]
        assert -0.1 <= record['loss_dp'] <= 0.1 * (2 / 49 + 1 / 48)
        # the logged total is the sum of the logged loss terms, loss_dp included
        parts = sum(v for k, v in record.items() if 'loss' in k and k != 'loss')
        assert record['loss'] == pytest.approx(parts, rel=1e-4, abs=1e-4)
    assert 'loss_dp' in last_scalars(tmp_path)
