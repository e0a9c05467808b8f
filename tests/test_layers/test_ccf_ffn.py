"""CCF-FFN, CCF-FFN+ and GRN (specs/plg_vit.md D4, V6) against float64 references written from the
spec: explicit 9-tap depthwise convolution, explicit L2 norms."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmattn.layers import CCFFFN, GRN, CCFFFNPlus


def _randomise(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def ref_depthwise(h, weight, bias, hw):
    """3x3 depthwise convolution with zero padding 1 on tokens (B, H*W, D) as a sum of taps."""
    b, _, d = h.shape
    x = h.view(b, *hw, d)
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    out = bias.expand(b, *hw, d).clone()
    for dr in range(3):
        for dc in range(3):
            out = out + xp[:, dr:dr + hw[0], dc:dc + hw[1]] * weight[:, 0, dr, dc]
    return out.view(b, -1, d)


def ref_grn(x, gamma, beta, eps=1e-6):
    """ConvNeXt V2 GRN on (B, N, D): Gx = sqrt(sum_n x^2) per sample and channel."""
    gx = x.pow(2).sum(dim=1, keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=-1, keepdim=True) + eps)
    return gamma * (x * nx) + beta + x


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize('hw', [(5, 7), (1, 1), (4, 3)])
def test_ccf_ffn_matches_reference(hw):
    ffn = CCFFFN(8).double()
    _randomise(ffn)
    x = torch.randn(2, hw[0] * hw[1], 8, dtype=torch.float64)
    h = _gelu(x @ ffn.fc1.weight.T + ffn.fc1.bias)
    u = _gelu(ref_depthwise(h, ffn.dwconv.weight, ffn.dwconv.bias, hw))
    torch.testing.assert_close(ffn(x, hw), u @ ffn.fc2.weight.T + ffn.fc2.bias)


@pytest.mark.parametrize('hw', [(5, 7), (3, 2)])
def test_ccf_ffn_plus_matches_reference(hw):
    ffn = CCFFFNPlus(8).double()
    _randomise(ffn)
    x = torch.randn(2, hw[0] * hw[1], 8, dtype=torch.float64)
    h = _gelu(x @ ffn.fc1.weight.T + ffn.fc1.bias)
    u = _gelu(ref_depthwise(h, ffn.dwconv.weight, ffn.dwconv.bias, hw))
    u = ref_grn(u, ffn.grn.gamma, ffn.grn.beta)
    z = torch.cat([h, u], dim=-1)
    torch.testing.assert_close(ffn(x, hw), z @ ffn.fc2.weight.T + ffn.fc2.bias)


def test_ccf_ffn_plus_concatenates_post_activation_fc1():
    """V6: fc2 sees 6C channels whose first 3C are GELU(fc1(x))."""
    ffn = CCFFFNPlus(4)
    seen = []
    ffn.fc2.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(1, 12, 4)
    ffn(x, (3, 4))
    assert seen[0].shape == (1, 12, 24)
    torch.testing.assert_close(seen[0][..., :12], F.gelu(ffn.fc1(x)))


def test_grn_identity_at_init_and_reference():
    grn = GRN(6)
    x = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(grn(x), x)  # gamma = beta = 0
    _randomise(grn)
    grn.double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    ref = ref_grn(x.view(2, 12, 6), grn.gamma, grn.beta).view(2, 3, 4, 6)
    torch.testing.assert_close(grn(x), ref)
    with pytest.raises(ValueError, match='dim'):
        GRN(0)


@pytest.mark.parametrize('cls,count', [(CCFFFN, lambda c: 8 * c * c + 45 * c),
                                       (CCFFFNPlus, lambda c: 9 * c * c + 40 * c)])
def test_parameter_counts(cls, count):
    """D4: CCF-FFN 8 C^2 + 45 C, CCF-FFN+ 9 C^2 + 40 C."""
    for c in (64, 96):
        assert sum(p.numel() for p in cls(c).parameters()) == count(c)


def test_bad_arguments():
    with pytest.raises(ValueError, match='mlp_ratio'):
        CCFFFN(8, mlp_ratio=0)
    with pytest.raises(ValueError, match=r'\(B, 3\*4, C\)'):
        CCFFFN(8)(torch.randn(1, 10, 8), (3, 4))
