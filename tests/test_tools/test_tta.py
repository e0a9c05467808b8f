"""``tools/test.py --tta`` end to end: a toy UperNet with an mmattn backbone, the papers'
multi-scale + flip protocol at ratios of the toy set's test scale."""
import os.path as osp
import re
import sys

import pytest
from _toy import ROOT, TOY, run, short_schedule, train

SEG = osp.join(TOY, 'sasa-resnet-26-w16_upernet_toy-shapes-128x128.py')
DET = osp.join(TOY, 'mask-rcnn_sasa-resnet-26-w16_fpn_toy-shapes.py')


def test_tta_runs_six_scales_and_flips_and_reports_miou(workspace, tmp_path):
    pytest.importorskip('mmseg')
    train(SEG, tmp_path, workspace, *short_schedule(2))
    proc = run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), SEG,
                str(tmp_path / 'iter_2.pth'), '--work-dir', str(tmp_path), '--tta'], workspace)
    line = [x for x in proc.stdout.splitlines() if x.startswith('[tta]')]
    assert line, proc.stdout[-2000:]
    assert line[0].startswith('[tta] SegTTAModel: 6 scales')
    assert ('[(64, 64), (96, 96), (128, 128), (160, 160), (192, 192), (224, 224)] x flip '
            "['none', 'horizontal'] = 12 passes per image") in line[0]
    out = proc.stdout + proc.stderr
    miou = re.findall(r'mIoU: ([\d.]+)', out)
    assert miou and 0 <= float(miou[-1]) <= 100, out[-2000:]


def test_tta_of_a_config_without_tta_pipeline_flips(workspace, tmp_path):
    """A classifier without a tta_pipeline: the test pipeline with and without a flip, scores
    averaged by mmpretrain's AverageClsScoreTTA, as mmpretrain's own test.py does."""
    cls = osp.join(TOY, 'resnet18_toy-shapes.py')
    train(cls, tmp_path, workspace, *short_schedule(2))
    proc = run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), cls,
                str(tmp_path / 'iter_2.pth'), '--work-dir', str(tmp_path), '--tta'], workspace)
    assert ('[tta] AverageClsScoreTTA: TestTimeAug: [RandomFlip prob=0.0 | RandomFlip prob=1.0] x '
            '[PackInputs] (the config has no tta_pipeline') in proc.stdout, proc.stdout[-2000:]
    assert re.search(r'accuracy/top1: [\d.]+', proc.stdout + proc.stderr)


def test_tta_errors_name_what_is_missing(tmp_path):
    """mmdet's DetTTAModel merges boxes only, so TTA of Mask R-CNN is refused before anything
    runs; a segmentation config without a tta_pipeline is refused naming the config."""
    pytest.importorskip('mmdet')
    from mmengine.config import Config

    from mmattn.utils.tools import enable_tta
    with pytest.raises(ValueError, match='instance masks'):
        enable_tta(Config.fromfile(DET), DET)
    cfg = Config.fromfile(SEG)
    cfg.pop('tta_pipeline')
    with pytest.raises(ValueError, match='defines no tta_pipeline'):
        enable_tta(cfg, SEG)
