"""tools/analysis_tools/benchmark_backbones.py on the toy configs (tiny shapes, one repeat)."""
import json
import os.path as osp

import pytest

from _toy import TOY, load_tool


def test_rows_ratios_and_json(tmp_path, capsys):
    pytest.importorskip('mmdet')
    from mmattn.backbones import ELSASwin
    tool = load_tool('benchmark_backbones')
    configs = [osp.join(TOY, 'mask-rcnn_r18_fpn_toy-shapes.py'),
               osp.join(TOY, 'mask-rcnn_elsa-swin-toy_fpn_toy-shapes.py')]
    out = tmp_path / 'bench.json'
    result = tool.main([*configs, '--shape', '64', '96', '--repeats', '1', '--warmup', '0',
                        '--json', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result['shape'] == [64, 96] and result['batch'] == 1
    r18, elsa = result['rows']
    assert (r18['backbone'], elsa['backbone']) == ('ResNet', 'ELSASwin')
    # parameters against an independent count: ResNet-18 without fc, the toy ELSA arch
    assert round(r18['params_m'] * 1e6) == 11_176_512
    toy = ELSASwin(dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                        group_width=4))
    assert round(elsa['params_m'] * 1e6) == sum(p.numel() for p in toy.parameters())
    for row in result['rows']:
        assert row['gmac'] > 0 and row['infer_ms'] > 0 and row['train_ms'] > 0
        assert row['train_mib'] > 0
    base, other = result['ratios']
    assert base['infer_time'] == base['train_time'] == base['train_memory'] == 1.0
    assert other['train_time'] == pytest.approx(elsa['train_ms'] / r18['train_ms'])
    for row in result['rows']:  # (median, lower quartile, upper quartile) of paired ratios
        assert len(row['infer_paired']) == len(row['train_paired']) == 3
    assert r18['infer_paired'] == r18['train_paired'] == [1.0, 1.0, 1.0]
    # one repeat: the paired ratio is the ratio of the two single times
    assert elsa['train_paired'][0] == pytest.approx(elsa['train_ms'] / r18['train_ms'])
    printed = capsys.readouterr().out
    assert 'ratios to the first' in printed and 'per-round (paired) time ratios' in printed


def test_paired_ratios_median_and_quartiles():
    from mmattn.utils.benchmark import paired_ratios
    # round ratios 2, 1.5, 1, 1.2, 3 (a slow round hits both sides: 10 / 5 and 30 / 10)
    times, base = [10, 3, 2, 6, 30], [5, 2, 2, 5, 10]
    med, q1, q3 = paired_ratios(times, base)
    assert med == pytest.approx(1.5)
    assert (q1, q3) == (pytest.approx(1.2), pytest.approx(2.0))
    # ratios by round 0.2, 0.5, 1, 2, 5; pairing the sorted series instead would give 1 five
    # times, and the ratio of the medians is 1 too: only the quartiles tell
    med, q1, q3 = paired_ratios([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert (med, q1, q3) == (pytest.approx(1.0), pytest.approx(0.5), pytest.approx(2.0))
    assert paired_ratios([4.0], [2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match='same non-zero length'):
        paired_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match='same non-zero length'):
        paired_ratios([], [])


def test_bad_shape_is_refused():
    tool = load_tool('benchmark_backbones')
    with pytest.raises(SystemExit):
        tool.main(['x.py', '--shape', '1', '2', '3'])
