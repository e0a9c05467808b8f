"""The arch-table reader every "all variants" tool and test goes through, and a contract every
registered backbone keeps (``train()`` with no argument means training mode)."""
import pytest
import torch

from mmattn.backbones import BACKBONES
from mmattn.backbones._variants import parameter_count, smallest_variant, variants


def _row(w):  # rows with several keys, as real arch tables have
    return dict(w=w, depths=(1, 2), heads=(1, 2), mlp=4, window=7, bias=True)


class Zoo:
    arch_zoo = {'t': _row(1), 'tiny': _row(1), 's': _row(2), 'small': _row(2), 'xs': _row(3),
                'b': _row(4), 'lw': _row(5), 'lx': _row(5)}


class Depths:
    arch_settings = {26: (1, 2, 4, 1), 50: (3, 4, 6, 3)}


def test_aliases_collapse_to_the_longest_name():
    # equal lengths: the first name is kept
    assert variants(Zoo) == {'tiny': dict(arch='tiny'), 'small': dict(arch='small'),
                             'xs': dict(arch='xs'), 'b': dict(arch='b'), 'lw': dict(arch='lw')}
    assert variants(Depths) == {'26': dict(depth=26), '50': dict(depth=50)}
    with pytest.raises(TypeError, match='arch_zoo'):
        variants(object)


def test_smallest_variant_has_the_fewest_parameters():
    for name, cls in BACKBONES.items():
        variant, kwargs = smallest_variant(cls)
        counts = {k: parameter_count(cls, **kw) for k, kw in variants(cls).items()}
        assert counts[variant] == min(counts.values()), name


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_train_without_argument_means_training(name):
    _, kwargs = smallest_variant(BACKBONES[name])
    model = BACKBONES[name](**kwargs)
    model.eval()
    assert not model.training
    assert model.train() is model and model.training
    assert all(m.training for m in model.modules())


def test_lavit_position_grids_follow_a_non_square_native_size():
    model = BACKBONES['LaViT'](arch='t', img_size=(224, 160))
    strides = (4, 8, 16, 32)
    for i, s in enumerate(strides, 1):
        pos = getattr(model, f'pos_embed{i}')
        assert pos.shape[1] == (224 // s) * (160 // s), (i, tuple(pos.shape))
