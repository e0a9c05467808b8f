"""``tools/model_converters/softmax2castling.py``: stock mmpretrain DeiT-T / MViTv2-T classifier
checkpoints (random weights saved by mmpretrain's own models) initialise the Castling classifiers
of our configs, raw (only the documented keys missing / unexpected) and converted (strict load,
every source tensor bit-identical); timm and distilled layouts; options and errors."""
import importlib.util
import os.path as osp
from collections import OrderedDict

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONVERTER = osp.join(ROOT, 'tools', 'model_converters', 'softmax2castling.py')
CONFIGS = osp.join(ROOT, 'configs', 'castling_vit')


def _load_converter():
    spec = importlib.util.spec_from_file_location('softmax2castling', CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


softmax2castling = _load_converter()


def _build(config):
    """The classifier of a config (stock ``mmpretrain::`` or ours), randomly initialised."""
    import mmattn.cls  # noqa: F401
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = get_config(config) if '::' in config else Config.fromfile(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def stock(tmp_path_factory):
    """Stock DeiT-T, distilled DeiT-T and MViTv2-T classifier checkpoints in a tmp folder."""
    root = tmp_path_factory.mktemp('softmax')
    out = {}
    for name, config in (('deit', 'mmpretrain::deit/deit-tiny_4xb256_in1k.py'),
                         ('deit-distilled', 'mmpretrain::deit/deit-tiny-distilled_4xb256_in1k.py'),
                         ('mvit', 'mmpretrain::mvit/mvitv2-tiny_8xb256_in1k.py')):
        state = _build(config).state_dict()
        path = str(root / f'{name}.pth')
        torch.save({'state_dict': state, 'meta': {'from': config}}, path)
        out[name] = (path, state)
    return out


CASES = {'deit': ('deit', 'castling-deit-tiny_4xb256_in1k.py', 12, ()),
         'mvit': ('mvit', 'castling-mvitv2-tiny_8xb256_in1k.py', 10, ('rel_pos_h', 'rel_pos_w'))}


@pytest.mark.parametrize('name', sorted(CASES))
def test_raw_checkpoint_misses_only_dconv(stock, name):
    """Without conversion, the softmax checkpoint initialises everything but dconv (and, for
    MViTv2, brings only the relative-position tables in addition)."""
    _, config, layers, extra = CASES[name]
    _, state = stock[name]
    model = _build(osp.join(CONFIGS, config))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert len(missing) == layers and all(k.endswith('.attn.dconv.weight') for k in missing)
    assert all(k.endswith(extra) for k in unexpected) if extra else not unexpected
    assert len(unexpected) == 2 * layers if extra else True


@pytest.mark.parametrize('name', sorted(CASES))
def test_converted_checkpoint_loads_strictly(stock, name, tmp_path):
    model_kind, config, layers, extra = CASES[name]
    src, state = stock[name]
    dst = str(tmp_path / 'castling.pth')
    meta = softmax2castling.main([src, dst, '--model', model_kind])
    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    model = _build(osp.join(CONFIGS, config))
    model.load_state_dict(ckpt['state_dict'], strict=True)
    loaded = model.state_dict()
    for key, value in state.items():
        if extra and key.endswith(extra):
            assert key not in loaded
            continue
        assert torch.equal(loaded[key], value), key
    dconv = [k for k in loaded if k.endswith('attn.dconv.weight')]
    assert sorted(dconv) == sorted(ckpt['meta']['added_keys']) and len(dconv) == layers
    assert all(not loaded[k].any() for k in dconv)
    assert sorted(meta['dropped_keys']) == sorted(k for k in state if extra and k.endswith(extra))
    assert ckpt['meta']['converted_from'] == osp.basename(src)


def test_zero_dconv_classifier_equals_source_weights_with_linear_angular_attention(stock,
                                                                                   tmp_path):
    """The converted DeiT-T classifier (zero dconv) is the source network with its softmax
    replaced by the linear-angular formula: logits from the source weights, computed here."""
    import math
    src, state = stock['deit']
    dst = str(tmp_path / 'castling.pth')
    softmax2castling.main([src, dst, '--model', 'deit'])
    model = _build(osp.join(CONFIGS, 'castling-deit-tiny_4xb256_in1k.py')).eval().double()
    model.load_state_dict(torch.load(dst, weights_only=True)['state_dict'])
    w = {k: v.double() for k, v in state.items()}
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    t = torch.nn.functional.conv2d(x, w['backbone.patch_embed.projection.weight'],
                                   w['backbone.patch_embed.projection.bias'], stride=16)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([w['backbone.cls_token'], t], 1) + w['backbone.pos_embed']

    def ln(v, p):
        return torch.nn.functional.layer_norm(v, (192, ), w[p + '.weight'], w[p + '.bias'], 1e-6)

    for i in range(12):
        p = f'backbone.layers.{i}.'
        h = ln(t, p + 'ln1') @ w[p + 'attn.qkv.weight'].T + w[p + 'attn.qkv.bias']
        q, k, v = h.reshape(1, 197, 3, 3, 64).permute(2, 0, 3, 1, 4)
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
        y = 0.5 * v + q @ (k.transpose(-2, -1) @ v) / math.pi
        y = (y / y.norm(dim=-1, keepdim=True)).transpose(1, 2).reshape(1, 197, 192)
        t = t + y @ w[p + 'attn.proj.weight'].T + w[p + 'attn.proj.bias']
        f = torch.nn.functional.gelu(ln(t, p + 'ln2') @ w[p + 'ffn.layers.0.0.weight'].T +
                                     w[p + 'ffn.layers.0.0.bias'])
        t = t + f @ w[p + 'ffn.layers.1.weight'].T + w[p + 'ffn.layers.1.bias']
    logits = ln(t, 'backbone.ln1')[:, 0] @ w['head.layers.head.weight'].T + \
        w['head.layers.head.bias']
    with torch.no_grad():
        out = model(x, mode='tensor')
    torch.testing.assert_close(out, logits)


def _to_timm(state):
    """An mmpretrain DeiT classifier state dict written in timm's DeiT key layout."""
    out = OrderedDict()
    for key, value in state.items():
        if key.startswith('head.layers.'):
            out[key[len('head.layers.'):]] = value
            continue
        key = key[len('backbone.'):]
        key = key.replace('layers.', 'blocks.', 1) if key.startswith('layers.') else key
        key = key.replace('.ln1.', '.norm1.').replace('.ln2.', '.norm2.')
        key = key.replace('ffn.layers.0.0.', 'mlp.fc1.').replace('ffn.layers.1.', 'mlp.fc2.')
        key = key.replace('patch_embed.projection.', 'patch_embed.proj.')
        key = 'norm.' + key[len('ln1.'):] if key.startswith('ln1.') else key
        out[key] = value
    return out


def test_timm_and_distilled_layouts(stock, tmp_path):
    """A timm distilled DeiT (``module.``-prefixed ``model`` container): dist_token, head_dist and
    the distillation row of pos_embed are dropped; the rest equals the mmpretrain source."""
    _, state = stock['deit']
    timm = _to_timm(state)
    pos = timm['pos_embed']
    timm['pos_embed'] = torch.cat([pos[:, :1], torch.randn(1, 1, 192), pos[:, 1:]], dim=1)
    timm['dist_token'] = torch.randn(1, 1, 192)
    timm['head_dist.weight'], timm['head_dist.bias'] = torch.randn(1000, 192), torch.randn(1000)
    src = str(tmp_path / 'timm.pth')
    torch.save({'model': {f'module.{k}': v for k, v in timm.items()}}, src)
    dst = str(tmp_path / 'castling.pth')
    meta = softmax2castling.main([src, dst, '--model', 'deit', '--src-format', 'timm'])
    assert sorted(meta['dropped_keys']) == ['backbone.dist_token', 'head.layers.head_dist.bias',
                                            'head.layers.head_dist.weight']
    model = _build(osp.join(CONFIGS, 'castling-deit-tiny_4xb256_in1k.py'))
    model.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_stock_distilled_deit(stock, tmp_path):
    src, state = stock['deit-distilled']
    assert 'backbone.dist_token' in state
    dst = str(tmp_path / 'castling.pth')
    softmax2castling.main([src, dst, '--model', 'deit'])
    model = _build(osp.join(CONFIGS, 'castling-deit-tiny_4xb256_in1k.py'))
    model.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)
    pos = state['backbone.pos_embed']
    torch.testing.assert_close(model.backbone.pos_embed.data,
                               torch.cat([pos[:, :1], pos[:, 2:]], dim=1))


def test_options(stock):
    _, state = stock['mvit']
    out, _, added = softmax2castling.convert(state, 'mvit', dconv_mode='spatial2d',
                                             dconv_init='default')
    shapes = [tuple(out[k].shape) for k in added]
    assert shapes[0] == (1, 1, 3, 3) and shapes[-1] == (8, 1, 3, 3)
    assert all(out[k].any() for k in added)
    out, _, added = softmax2castling.convert(state, 'mvit', res_kernel_size=5)
    assert tuple(out[added[3]].shape) == (4, 1, 5, 1)  # first block of stage 3: 4 heads
    _, dropped, _ = softmax2castling.convert(state, 'mvit', num_classes=10)
    assert {'head.fc.weight', 'head.fc.bias'} <= set(dropped)


def test_errors(stock, tmp_path):
    _, state = stock['mvit']
    with pytest.raises(ValueError, match='wrong --model'):
        softmax2castling.convert(state, 'deit')
    with pytest.raises(ValueError, match='model must be'):
        softmax2castling.convert(state, 'swin')
    with pytest.raises(TypeError, match='not a tensor'):
        softmax2castling.unwrap({'state_dict': {'a': 1}})
    with pytest.raises(SystemExit):
        softmax2castling.main([stock['mvit'][0], str(tmp_path / 'x.pth'), '--model', 'mvit',
                               '--src-format', 'timm'])


def test_function_defaults_are_the_command_lines(stock, tmp_path):
    """``convert`` called as a library with its defaults (DeiT's head width 64, seq1d, k 9,
    zero init) gives what the command line writes with its defaults."""
    src, state = stock['deit']
    out, _, added = softmax2castling.convert(state, 'deit')
    softmax2castling.main([src, str(tmp_path / 'cli.pth'), '--model', 'deit'])
    cli = torch.load(tmp_path / 'cli.pth', map_location='cpu', weights_only=True)['state_dict']
    assert len(added) == 12 and out.keys() == cli.keys()
    assert all(torch.equal(out[k], cli[k]) for k in out)
