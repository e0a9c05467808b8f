"""Contracts of the shared layer pieces that the value oracles do not reach: when activation
checkpointing runs, what the shape errors say, the smallest valid arguments, documented
defaults. (Each test here was written to kill a mutant that survived ``make mutation``.)"""
import inspect

import pytest
import torch

import mmattn.layers.blocks as blocks
from mmattn.layers.blocks import TokenBlock
from mmattn.layers.ccf_ffn import GRN
from mmattn.layers.elsa_attention import ELSAAttention
from mmattn.layers.less_attention import LaViTBlock
from mmattn.layers.linear_angular_attention import MultiScaleLinearAngularAttention


class Scale(TokenBlock):

    def __init__(self, with_cp):
        super().__init__()
        self.with_cp = with_cp
        self.w = torch.nn.Parameter(torch.tensor(2.))

    def _inner(self, x, hw_shape):
        return x * self.w


@pytest.mark.parametrize('with_cp,requires_grad,expected', [
    (True, True, 1), (True, False, 0), (False, True, 0), (False, False, 0)])
def test_checkpointing_runs_only_with_cp_and_grad(monkeypatch, with_cp, requires_grad, expected):
    calls = []
    real = blocks.cp.checkpoint
    monkeypatch.setattr(blocks.cp, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 6, 4, requires_grad=requires_grad)
    out = Scale(with_cp)(x, (2, 3))
    torch.testing.assert_close(out, x * 2)
    assert len(calls) == expected


def test_token_block_shape_error_names_the_expected_shape():
    with pytest.raises(ValueError, match=r'x must be \(B, 3\*5, C\), got \(2, 14, 4\)'):
        Scale(False)(torch.randn(2, 14, 4), (3, 5))


def test_smallest_valid_arguments_are_accepted():
    assert GRN(1)(torch.randn(1, 3, 3, 1)).shape == (1, 3, 3, 1)
    assert ELSAAttention(8, 2, 3, dim_qk=1, group_width=1)(torch.randn(1, 5, 5, 8)).shape == \
        (1, 5, 5, 8)
    attn = MultiScaleLinearAngularAttention(1, 8, 2)
    assert attn.in_channels == 1
    for bad in (dict(dim=0), ):
        with pytest.raises(ValueError, match='dim'):
            GRN(**bad)
    with pytest.raises(ValueError, match='in_channels'):
        MultiScaleLinearAngularAttention(0, 8, 2)


def test_documented_defaults():
    """Defaults the specs fix and the backbones do not pass explicitly in every path."""
    assert inspect.signature(LaViTBlock).parameters['qkv_bias'].default is True
    block = LaViTBlock(16, 2, 4., vanilla=True)
    assert block.attn.q.bias is not None and block.attn.kv.bias is not None
    from mmattn.backbones.sasa_resnet import SASABottleneck
    assert inspect.signature(SASABottleneck).parameters['num_heads'].default == 8  # spec S3
