"""nn.Modules built on mmattn's ops; layers never import backbones."""
from .blocks import Mlp, TokenBlock
from .ccf_ffn import CCFFFN, GRN, CCFFFNPlus
from .elsa_attention import ELSAAttention, ELSABlock, round_dim_qk
from .less_attention import (AttentionResidual, LaViTAttentionLA, LaViTAttentionVA, LaViTBlock,
                             diagonality_loss)
from .linear_angular_attention import LinearAngularAttention, MultiScaleLinearAngularAttention
from .plg_attention import GlobalWindowAttention, PLGAttention, PLGBlock
from .sasa_attention import SASAAttention, SASAStem
from .window_attention import SwinBlock, WindowMSA, shifted_window_attention

__all__ = ['ELSAAttention', 'ELSABlock', 'Mlp', 'TokenBlock', 'round_dim_qk', 'SASAAttention',
           'SASAStem', 'SwinBlock', 'WindowMSA', 'shifted_window_attention',
           'CCFFFN', 'CCFFFNPlus', 'GRN', 'GlobalWindowAttention', 'PLGAttention', 'PLGBlock',
           'LinearAngularAttention', 'MultiScaleLinearAngularAttention',
           'AttentionResidual', 'LaViTAttentionLA', 'LaViTAttentionVA', 'LaViTBlock',
           'diagonality_loss']
