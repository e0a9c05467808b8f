"""nn.Modules built on mmattn's ops; layers never import backbones."""
from .sasa_attention import SASAAttention, SASAStem

__all__ = ['SASAAttention', 'SASAStem']
