"""``benchmark_backbones.py --all``: strict FLOP counts, every family picked up from BACKBONES
(a throwaway family registered here appears with no edit to the tool), the JSON / markdown / PNG
outputs, and ``benchmark_report.py`` writing them into the READMEs."""
import json
import os.path as osp
import sys

import pytest
import torch
import torch.nn as nn

from mmattn.backbones import BACKBONES
from mmattn.backbones._variants import smallest_variant
from mmattn.ops.flops import strict_flops

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))
import benchmark_backbones  # noqa: E402
import benchmark_report  # noqa: E402

from mmattn.utils import backbone_zoo  # noqa: E402


class Throwaway(nn.Module):
    """A family that exists only in this test."""
    arch_zoo = {'tiny': dict(width=4), 't': dict(width=4), 'small': dict(width=8)}

    def __init__(self, arch='tiny'):
        super().__init__()
        width = self.arch_zoo[arch]['width']
        self.conv = nn.Conv2d(3, width, 3, 2, 1)

    def forward(self, x):
        return (self.conv(x).relu(), )


@pytest.mark.parametrize('name,published', [('Swin-T', 4.5), ('ResNet-50', 4.1)])
def test_reference_gmac_match_the_published_figures(name, published):
    (entry, ) = [e for e in backbone_zoo.reference_entries() if e['name'] == name]
    model = backbone_zoo.build(entry['spec'])
    model.eval()
    gmac = strict_flops(model, (torch.randn(1, 3, 224, 224), )) / 1e9
    assert gmac == pytest.approx(published, rel=0.03)


def test_reference_built_in_its_own_scope_whatever_the_default_scope():
    """mmdet also registers a SwinTransformer (without ``arch``): under a default scope an
    earlier mmdet runner left behind, the zoo must still build mmpretrain's."""
    pytest.importorskip('mmdet')
    import mmdet.models  # noqa: F401  (registers mmdet's SwinTransformer)
    from mmengine.registry import DefaultScope
    (entry, ) = [e for e in backbone_zoo.reference_entries() if e['name'] == 'Swin-T']
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = backbone_zoo.build(entry['spec'])
    assert type(model).__module__.startswith('mmpretrain.'), type(model)


def test_sdpa_is_counted():
    """mmpretrain's DeiT-T runs scaled_dot_product_attention: with mmattn's handle its count is
    the DeiT paper's 1.3 GFLOPs (without it, 1.08)."""
    (entry, ) = [e for e in backbone_zoo.reference_entries() if e['name'] == 'DeiT-T']
    model = backbone_zoo.build(entry['spec'])
    model.eval()
    assert strict_flops(model, (torch.randn(1, 3, 224, 224), )) / 1e9 == pytest.approx(1.26,
                                                                                      rel=0.01)


def test_an_operator_without_a_handle_is_an_error():

    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=-1)

    with pytest.raises(RuntimeError, match='aten::cumsum'):
        strict_flops(Cumulative(), (torch.randn(1, 3, 8, 8), ))


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_every_family_counts_strictly_and_not_zero(name):
    cls = BACKBONES[name]
    _, kwargs = smallest_variant(cls)
    model = cls(**kwargs)
    model.eval()
    assert strict_flops(model, (torch.randn(1, 3, 64, 64), )) > 0


def test_selection():
    everything = backbone_zoo.select()
    names = {e['name'] for e in everything}
    assert {'ELSASwin-tiny', 'SASAResNet-50', 'Swin-T', 'PVT-M'} <= names
    assert {e['family'] for e in everything} >= set(BACKBONES)
    quick = backbone_zoo.select(quick=True)
    assert sorted(e['name'] for e in quick if e['family'] == 'reference') == ['ResNet-50', 'Swin-T']
    assert len([e for e in quick if e['family'] != 'reference']) == len(BACKBONES)
    picked = backbone_zoo.select(['sasaresnet-50'])
    assert [e['name'] for e in picked] == ['SASAResNet-50', 'ResNet-50']
    with pytest.raises(ValueError, match='neither a registered backbone family'):
        backbone_zoo.select(['NoSuchNet'])


def test_all_picks_up_a_new_family_and_writes_the_outputs(monkeypatch, tmp_path):
    monkeypatch.setitem(BACKBONES, 'Throwaway', Throwaway)
    result = benchmark_backbones.main(
        ['--all', 'Throwaway', '--shape', '32', '--repeats', '1', '--warmup', '0',
         '--throughput-batch', '2', '--memory-here', '--out-dir', str(tmp_path)])
    rows = result['rows']
    assert [r['name'] for r in rows] == ['Throwaway-tiny', 'Throwaway-small']  # 't' is an alias
    for r in rows:
        assert set(r) >= {'name', 'family', 'params_m', 'gmac', 'img_per_s', 'latency_ms',
                          'train_ms', 'peak_mib', 'shape', 'batch'}
        assert r['family'] == 'Throwaway' and r['shape'] == [3, 32, 32] and r['batch'] == 2
        assert r['gmac'] > 0 and r['img_per_s'] > 0 and r['latency_ms'] > 0
    # conv 3x3, 3 -> 4 channels, 16x16 outputs: 16*16*4*27 multiply-adds
    assert rows[0]['gmac'] == pytest.approx(16 * 16 * 4 * 27 / 1e9, rel=1e-3)
    with open(tmp_path / 'results.json') as f:
        saved = json.load(f)
    assert saved['rows'] == rows and saved['shape'] == [32, 32]
    table = (tmp_path / 'results.md').read_text()
    assert table.count('| Throwaway-') == 2
    import matplotlib.image as mpimg
    assert mpimg.imread(str(tmp_path / 'results.png')).shape[2] in (3, 4)

    # the report writes the table between the markers and leaves the rest alone
    root = tmp_path / 'checkout'
    (root / 'configs').mkdir(parents=True)
    (root / 'README.md').write_text(f'intro\n{benchmark_report.BEGIN}\nold\n'
                                    f'{benchmark_report.END}\noutro\n')
    written = benchmark_report.main([str(tmp_path / 'results.json'), '--root', str(root)])
    text = (root / 'README.md').read_text()
    assert written == {'README.md': '2 rows'}
    assert text.startswith('intro\n') and text.endswith('outro\n') and 'old' not in text
    assert '| Throwaway-small | Throwaway |' in text and '--all Throwaway' in text
