"""tools/analysis_tools/benchmark_backbones.py on the toy configs (tiny shapes, one repeat)."""
import importlib.util
import json
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(ROOT, 'configs', 'toy')


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_backbones', osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_backbones.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_ratios_and_json(tmp_path, capsys):
    pytest.importorskip('mmdet')
    from mmattn.backbones import ELSASwin
    tool = _load_tool()
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
    assert 'ratios to the first' in capsys.readouterr().out


def test_bad_shape_is_refused():
    tool = _load_tool()
    with pytest.raises(SystemExit):
        tool.main(['x.py', '--shape', '1', '2', '3'])
