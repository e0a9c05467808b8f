"""``tools/analysis_tools/benchmark_castling_attention.py`` at tiny sizes: the layers it times,
the growth ratios, the check and the JSON output (no timing assertions)."""
import importlib.util
import json
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_castling_attention.py')


def _load():
    spec = importlib.util.spec_from_file_location('benchmark_castling_attention', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.mark.parametrize('impl', ['sdpa', 'explicit'])
def test_softmax_baseline_is_softmax_attention(impl):
    layer = bench.SoftmaxAttention(16, 2, impl)
    x = torch.randn(2, 10, 16)
    q, k, v = (x @ layer.qkv.weight.T + layer.qkv.bias).reshape(2, 10, 3, 2, 8) \
        .permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    ref = (attn @ v).transpose(1, 2).reshape(2, 10, 16) @ layer.proj.weight.T + layer.proj.bias
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


def test_growth_ratios():
    rows = [dict(a=1.), dict(a=4.), dict(a=20.)]
    assert bench.growth_ratios(rows, 'a') == [4., 5.]


def test_main_tiny(tmp_path, capsys):
    out = tmp_path / 'r.json'
    result = bench.main(['--sides', '2', '4', '--dim', '8', '--heads', '2', '--warmup', '0',
                         '--repeats', '1', '--json', str(out)])
    assert [r['tokens'] for r in result['rows']] == [4, 16]
    assert set(result['ratios']) == {'castling', 'softmax', 'projections'}
    assert json.loads(out.read_text())['rows'][1]['side'] == 4
    assert 'castling growth per step' in capsys.readouterr().out


def test_check_fails_on_superlinear(monkeypatch):
    monkeypatch.setattr(bench, 'time_layers', lambda layers, sides, *a: [
        dict(side=s, tokens=s * s, castling=float(s**4), softmax=1., projections=1.)
        for s in sides])
    with pytest.raises(SystemExit):
        bench.main(['--sides', '2', '4', '--dim', '8', '--heads', '2', '--check'])
    assert bench.main(['--sides', '2', '4', '--dim', '8', '--heads', '2'])['ok'] is False


def test_relative_check_discounts_the_machine(monkeypatch):
    """Castling growing as fast as the projections passes the relative check, not the raw one."""
    monkeypatch.setattr(bench, 'time_layers', lambda layers, sides, *a: [
        dict(side=s, tokens=s * s, castling=float(s**3), softmax=1., projections=float(s**3))
        for s in sides])
    args = ['--sides', '2', '4', '--dim', '8', '--heads', '2']
    assert bench.main(args)['ok'] is False  # 8x per 4x tokens
    result = bench.main(args + ['--relative'])
    assert result['ok'] is True and result['relative']['castling'] == [1.0]
