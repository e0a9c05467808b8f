"""Independent float64 oracles for SASA-ResNet, rebuilt from ``specs/sasa_resnet.md``.

Each oracle is written from the specification's formulas with plain PyTorch loops and einsums. It
shares no code with ``mmattn`` (no ``mmattn.ops``, no helper of the implementation); it only reads
the modules' parameters and buffers by their S7 names (``attn.qkv.weight``, ``bn1.running_var``,
...). Every parameter is drawn at random and every BN has non-trivial running statistics, so that
no term vanishes and no row/column symmetry can hide a transposition.

* :func:`attention_oracle`: the SASA layer, spec 1.1 (paper Eq. 3) with the mmattn decisions of
  S1 and 1.3/O1: dense q/k/v (rows ``0:C`` q, ``C:2C`` k, ``2C:3C`` v, channel ``c`` in head
  ``c // d``), per head ``softmax_ab(q_ij.k_ab + q_ij[:d/2].rel_h[a-i] + q_ij[d/2:].rel_w[b-j])``
  over the centred ``k x k`` window restricted to in-image taps, no ``1/sqrt(d)``, no output
  projection; an explicit loop over query pixels.
* :func:`avg_pool_oracle`: the 2x2 / 2 average pool after the attention of 1.2 and S3 (ceil mode,
  padding not counted), a loop over output cells.
* :func:`bottleneck_oracle`: the block of S3 and 1.4: conv1 -> bn1 -> ReLU -> SA [-> pool] -> bn2
  -> ReLU -> conv3 -> bn3, + shortcut (1x1 strided projection + BN when the shape changes,
  identity otherwise) -> ReLU; ``conv2`` (3x3, stride on the convolution) in non-attention stages.
* :func:`stem_oracle`: the spatially-aware attention stem of 1.5 and S4: zero padding to
  multiples of 4, attention inside each 4x4 block over its in-image pixels, values
  ``sum_m p(a, b, m) W_V^m x`` with ``p(a, b, .) = softmax_m((emb_row[a] + emb_col[b]).emb_mix[m])``
  shared by the heads, logits ``q.k + q.r`` with per-head (4, 7, d/2) row/column tables and no
  scale, then BN -> ReLU -> 4x4 max-pool over the in-image pixels of each block; a loop over
  output positions (4x4 blocks) with explicit lists of the block's in-image pixels.
* :func:`conv_stem_oracle`: the ResNet stem of S4 (7x7/2 conv, BN, ReLU, 3x3/2 max-pool).
* :func:`backbone_oracle`: a ``SASAResNet`` composed from the stem and bottleneck oracles by the
  stage layout of 1.4/S5 (first block of stages 2-4 has stride 2), all outputs of S6.
"""
import math
from typing import Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmattn.backbones import SASAResNet
from mmattn.backbones.sasa_resnet import SASABottleneck
from mmattn.layers import SASAStem

F64 = dict(dtype=torch.float64)
TOL = dict(rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# random, non-degenerate parameters


@torch.no_grad()
def randomize_(model: nn.Module, calib: Tensor) -> nn.Module:
    """Draws every parameter with ``torch.randn`` and gives every BN non-trivial statistics.

    Weights are scaled by ``fan_in^-1/2`` (tables and embeddings by their width ``^-1/2``). The
    running statistics of each BN are measured on the input it receives in an eval-mode pass on
    ``calib`` (set just before it runs), floored and perturbed (mean shifted by ``0.2 sigma``,
    variance ``(var + mean(var)) * exp(0.3 N(0, 1))``): they are not 0/1 and differ from the
    batch statistics (so train-mode BN would fail), and the float64 activations keep a moderate
    size through the whole network, hence a softmax that is far from one-hot everywhere.
    """
    model.to(**F64)
    for p in model.parameters():
        scale = p[0].numel()**-0.5 if p.dim() > 1 else 1.0
        p.copy_(torch.randn_like(p) * scale)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.weight.copy_(1 + 0.3 * torch.randn_like(bn.weight))
        bn.bias.copy_(0.3 * torch.randn_like(bn.bias))

    def calibrate(bn: _BatchNorm, inputs: Tuple[Tensor]) -> None:
        mean, var = inputs[0].mean((0, 2, 3)), inputs[0].var((0, 2, 3))
        var = var + var.mean()  # no near-constant channel is blown up
        bn.running_mean.copy_(mean + 0.2 * var.sqrt() * torch.randn_like(mean))
        bn.running_var.copy_(var * torch.exp(0.3 * torch.randn_like(var)))

    handles = [bn.register_forward_pre_hook(calibrate) for bn in bns]
    model.eval()
    model(calib)
    for h in handles:
        h.remove()
    return model


# --------------------------------------------------------------------------------------------
# oracles (spec formulas, plain PyTorch)


def conv1x1(x: Tensor, weight: Tensor, stride: int = 1) -> Tensor:
    """A 1x1 convolution without bias: ``y[o] = sum_c W[o, c] x[c]`` at every (strided) pixel."""
    return torch.einsum('oc,bchw->bohw', weight[:, :, 0, 0], x[:, :, ::stride, ::stride])


def bn_oracle(x: Tensor, bn: _BatchNorm) -> Tensor:
    """Eval-mode BatchNorm: ``(x - mean) / sqrt(var + eps) * gamma + beta`` per channel."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def attention_oracle(x: Tensor, attn: nn.Module) -> Tensor:
    """Spec 1.1 / S1: per query pixel and head, softmax over the in-image taps of the centred
    ``k x k`` window of ``q.k + q[:d/2].rel_h[a-i] + q[d/2:].rel_w[b-j]`` (no scale), times v."""
    B, C, H, W = x.shape
    heads, k = attn.num_heads, attn.kernel_size
    d, r = C // heads, k // 2
    half = d // 2
    w = attn.qkv.weight
    q = conv1x1(x, w[:C]).view(B, heads, d, H, W)
    key = conv1x1(x, w[C:2 * C]).view(B, heads, d, H, W)
    val = conv1x1(x, w[2 * C:]).view(B, heads, d, H, W)
    rel_h, rel_w = attn.rel_h, attn.rel_w  # (heads, k, d/2): index u <-> offset u - k//2
    out = torch.zeros(B, heads, d, H, W, **F64)
    for i in range(H):
        for j in range(W):
            a0, a1 = max(0, i - r), min(H, i + r + 1)  # in-image rows of the window
            b0, b1 = max(0, j - r), min(W, j + r + 1)
            qij = q[:, :, :, i, j]  # (B, heads, d)
            logits = torch.einsum('nhd,nhduv->nhuv', qij, key[:, :, :, a0:a1, b0:b1])
            row = torch.einsum('nhd,hud->nhu', qij[..., :half], rel_h[:, a0 - i + r:a1 - i + r])
            col = torch.einsum('nhd,hvd->nhv', qij[..., half:], rel_w[:, b0 - j + r:b1 - j + r])
            logits = logits + row[:, :, :, None] + col[:, :, None, :]
            weights = logits.flatten(2).softmax(-1).view_as(logits)
            out[:, :, :, i, j] = torch.einsum('nhuv,nhduv->nhd', weights,
                                              val[:, :, :, a0:a1, b0:b1])
    return out.reshape(B, C, H, W)


def avg_pool_oracle(x: Tensor) -> Tensor:
    """2x2 average with stride 2, ceil mode, partial cells averaged over their in-image pixels."""
    B, C, H, W = x.shape
    out = torch.zeros(B, C, math.ceil(H / 2), math.ceil(W / 2), **F64)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((2, 3))
    return out


def bottleneck_oracle(x: Tensor, blk: nn.Module, stride: int, attention: bool = True) -> Tensor:
    """Spec S3: conv1 -> bn1 -> ReLU -> SA [-> 2x2 avg-pool] -> bn2 -> ReLU -> conv3 -> bn3,
    + shortcut -> ReLU. The shortcut is a strided 1x1 projection + BN exactly when the shape
    changes (stride 2 or ``C_in != 4w``), the identity otherwise (decided here, from the spec)."""
    width = blk.conv1.weight.shape[0]
    out = torch.relu(bn_oracle(conv1x1(x, blk.conv1.weight), blk.bn1))
    if attention:
        out = attention_oracle(out, blk.attn)
        if stride == 2:
            out = avg_pool_oracle(out)
    else:  # attn_stages[i] = False: ResNet's 3x3 convolution, stride on the convolution
        out = torch.nn.functional.conv2d(out, blk.conv2.weight, stride=stride, padding=1)
    out = torch.relu(bn_oracle(out, blk.bn2))
    out = bn_oracle(conv1x1(out, blk.conv3.weight), blk.bn3)
    if stride != 1 or x.shape[1] != 4 * width:
        identity = bn_oracle(conv1x1(x, blk.downsample[0].weight, stride), blk.downsample[1])
    else:
        identity = x
    return torch.relu(out + identity)


def stem_oracle(x: Tensor, stem: nn.Module) -> Tensor:
    """Spec 1.5 / S4, one output position (4x4 block) at a time."""
    B, _, H, W = x.shape
    s = 4
    C, heads, M = stem.out_channels, stem.num_heads, stem.mixtures
    d = C // heads
    half = d // 2
    a_ = stem.attn
    Hp, Wp = math.ceil(H / s) * s, math.ceil(W / s) * s
    xp = torch.zeros(B, x.shape[1], Hp, Wp, **F64)
    xp[:, :, :H, :W] = x  # zero padding on the bottom and right
    q = conv1x1(xp, a_.qk.weight[:C])  # (B, C, Hp, Wp)
    key = conv1x1(xp, a_.qk.weight[C:])
    # mixture of value projections, mixture m in rows C*m : C*(m+1) of the (M*C, 3, 1, 1) weight
    vm = torch.stack([conv1x1(xp, a_.v.weight[C * m:C * (m + 1)]) for m in range(M)], 1)
    # p[a, b, m] = softmax_m((emb_row[a] + emb_col[b]) . emb_mix[m]), a: row, b: column in block
    p = torch.zeros(s, s, M, **F64)
    for a in range(s):
        for b in range(s):
            p[a, b] = torch.softmax(a_.emb_mix @ (a_.emb_row[a] + a_.emb_col[b]), 0)
    out = torch.full((B, C, Hp // s, Wp // s), float('nan'), **F64)
    for by in range(Hp // s):
        for bx in range(Wp // s):
            pix = [(y, x_) for y in range(by * s, by * s + s) for x_ in range(bx * s, bx * s + s)
                   if y < H and x_ < W]  # in-image pixels of the block: keys and pooled queries
            ks = torch.stack([key[:, :, y, x_] for y, x_ in pix], -1).view(B, heads, d, -1)
            vs = torch.stack([sum(p[y % s, x_ % s, m] * vm[:, m, :, y, x_] for m in range(M))
                              for y, x_ in pix], -1).view(B, heads, d, -1)
            qs = torch.stack([q[:, :, y, x_] for y, x_ in pix], -1).view(B, heads, d, -1)
            du = torch.tensor([[ky - y + s - 1 for ky, _ in pix] for y, _ in pix])  # (query, key)
            dv = torch.tensor([[kx - x_ + s - 1 for _, kx in pix] for _, x_ in pix])  # 0..6
            logits = torch.einsum('bhdq,bhdn->bhqn', qs, ks)
            logits = logits + torch.einsum('bhdq,hqnd->bhqn', qs[:, :, :half], a_.rel_h[:, du])
            logits = logits + torch.einsum('bhdq,hqnd->bhqn', qs[:, :, half:], a_.rel_w[:, dv])
            y_out = torch.einsum('bhqn,bhdn->bhdq', logits.softmax(-1), vs).reshape(B, C, -1, 1)
            # BN -> ReLU -> 4x4 max-pool over the block's in-image pixels only
            out[:, :, by, bx] = torch.relu(bn_oracle(y_out, stem.bn)).amax((2, 3))
    return out


def conv_stem_oracle(x: Tensor, stem: nn.Module) -> Tensor:
    """Spec S4, ``stem='conv'``: 7x7 stride-2 conv (padding 3) -> BN -> ReLU -> 3x3/2 max-pool."""
    F = torch.nn.functional
    out = F.conv2d(x, stem.conv.weight, stride=2, padding=3)
    return F.max_pool2d(torch.relu(bn_oracle(out, stem.bn)), 3, 2, 1)


def backbone_oracle(x: Tensor, model: SASAResNet, stem: str) -> Tuple[Tensor, ...]:
    """Spec 1.4 / S5 / S6: stem, then stages of oracle bottlenecks; the first block of stages
    2-4 has stride 2; every stage output is returned."""
    x = stem_oracle(x, model.stem) if stem == 'attention' else conv_stem_oracle(x, model.stem)
    outs = []
    for i in range(4):
        for j, blk in enumerate(getattr(model, f'layer{i + 1}')):
            x = bottleneck_oracle(x, blk, 2 if (i > 0 and j == 0) else 1)
        outs.append(x)
    return tuple(outs)


# --------------------------------------------------------------------------------------------
# tests


def test_stem_matches_spec_loop():
    """S4: block attention with mixture-of-values, relative logits, BN, ReLU, masked max-pool.

    9x11 is neither square nor a multiple of 4: the last block row holds one image row and the
    last block column three image columns.
    """
    torch.manual_seed(0)
    stem = SASAStem(out_channels=16, num_heads=4, mixtures=3)  # head dim 4, M != heads
    x = torch.randn(1, 3, 9, 11, **F64)
    randomize_(stem, x)
    out = stem(x)
    assert out.shape == (1, 16, 3, 3)
    torch.testing.assert_close(out, stem_oracle(x, stem), **TOL)


@pytest.mark.parametrize('in_channels, stride, attention', [
    (64, 1, True),  # identity shortcut
    (32, 1, True),  # projection shortcut, same resolution
    (64, 2, True),  # downsampling: attention at full resolution, then the 2x2 average pool
    (32, 2, False),  # attn_stages=False: ResNet's strided 3x3 conv2
], ids=['identity', 'projection', 'stride2', 'conv2-stride2'])
def test_bottleneck_matches_spec(in_channels: int, stride: int, attention: bool):
    """S3: layer order, attention placement, pool after attention, shortcut, final ReLU."""
    torch.manual_seed(stride + in_channels)
    blk = SASABottleneck(in_channels, 16, stride=stride, attention=attention, kernel_size=5,
                         num_heads=4)  # width 16, head dim 4, output 64 channels
    x = torch.randn(2, in_channels, 9, 7, **F64)  # odd sizes: partial pool cells, masked borders
    randomize_(blk, x)
    ref = bottleneck_oracle(x, blk, stride, attention)
    assert ref.shape == (2, 64, math.ceil(9 / stride), math.ceil(7 / stride))
    torch.testing.assert_close(blk(x), ref, **TOL)  # na2d's autograd path (parameters need grad)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), ref, **TOL)  # na2d's fused inference path


@pytest.mark.parametrize('stem', ['attention', 'conv'])
def test_backbone_matches_composed_oracles(stem: str):
    """1.4 / S5 / S6: the smallest SASA-ResNet (depth 26, base width 16, k = 5) stage by stage."""
    torch.manual_seed(1)
    model = SASAResNet(26, stem=stem, kernel_size=5, base_channels=16, out_indices=(0, 1, 2, 3))
    x = torch.randn(1, 3, 38, 35, **F64)  # not multiples of 4: padded stem blocks
    randomize_(model, x)
    refs = backbone_oracle(x, model, stem)
    assert [tuple(r.shape[1:]) for r in refs] == [(64, 10, 9), (128, 5, 5), (256, 3, 3),
                                                  (512, 2, 2)]
    with torch.no_grad():
        fused = model(x)  # na2d's fused inference path
    for outs in (fused, model(x)):  # and its autograd path
        assert len(outs) == 4
        for i, (out, ref) in enumerate(zip(outs, refs)):
            torch.testing.assert_close(out, ref, **TOL, msg=lambda m, i=i: f'stage {i}: {m}')
