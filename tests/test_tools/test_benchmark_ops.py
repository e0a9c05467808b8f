"""tools/analysis_tools/benchmark_ops.py: rows, ratios and per-round (paired) figures on the
grouped-convolution case (small and quick; the memory probes run in child processes)."""
import json

import pytest

from _toy import load_tool
from mmattn.ops import has_compiled_ops

pytestmark = pytest.mark.skipif(not has_compiled_ops(), reason='mmattn._C is not built')


def test_ratios_and_paired_figures(tmp_path, capsys):
    tool = load_tool('benchmark_ops')
    out = tmp_path / 'ops.json'
    tool.main(['--cases', 'gconv', '--repeats', '3', '--warmup', '1', '--json', str(out)])
    result = json.loads(out.read_text())
    compiled, reference = result['rows']
    assert (compiled['impl'], reference['impl']) == ('compiled', 'reference')
    (s, ) = result['ratios']
    assert s['forward_speedup'] == pytest.approx(reference['forward_ms'] / compiled['forward_ms'])
    assert s['forward_roofline'] == pytest.approx(compiled['forward_gflops'] /
                                                  result['gemm_gflops'])
    for key in ('forward_roofline_paired', 'train_roofline_paired', 'forward_speedup_paired',
                'train_speedup_paired'):
        median, lo, hi = s[key]
        assert 0 < lo <= median <= hi, key
    # the per-round figures and the medians' ratios describe the same timings: within the
    # spread of three rounds of each other
    for key in ('forward_roofline', 'train_roofline', 'forward_speedup', 'train_speedup'):
        assert s[f'{key}_paired'][0] == pytest.approx(s[key], rel=0.5), key
    printed = capsys.readouterr().out
    assert 'per round, median [quartiles]: roofline forward' in printed
    assert 'speedup forward' in printed


def test_compiled_only_has_rooflines_and_no_speedups(tmp_path):
    tool = load_tool('benchmark_ops')
    out = tmp_path / 'ops.json'
    tool.main(['--cases', 'gconv', '--compiled-only', '--repeats', '2', '--warmup', '0',
               '--json', str(out)])
    (s, ) = json.loads(out.read_text())['ratios']
    assert 'forward_roofline_paired' in s and 'train_roofline_paired' in s
    assert 'forward_speedup_paired' not in s and 'forward_speedup' not in s


def test_paired_summary_is_the_per_round_roofline():
    """Round r's roofline is flops / t_case(r) over the GEMM rate 2 * 1024^3 / t_gemm(r)."""
    tool = load_tool('benchmark_ops')
    flops = tool.CASES['gconv'].flops
    gemm = [0.010, 0.020, 0.010]
    fwd = [0.001, 0.004, 0.002]
    series = {'gemm': gemm, 'gconv/compiled/forward': fwd, 'gconv/compiled/train': fwd}
    out = tool.paired_summary('gconv', series, ('compiled', ))
    rounds = sorted(flops / f / (2 * 1024**3 / g) for f, g in zip(fwd, gemm))
    assert out['forward_roofline_paired'][0] == pytest.approx(rounds[1])
    assert out['train_roofline_paired'][0] == pytest.approx(3 * rounds[1])
    assert 'forward_speedup_paired' not in out
