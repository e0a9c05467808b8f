"""Registry-free backbone classes, one module per family.

``BACKBONES`` maps the registry name of every backbone to its class; the adapters
(``mmattn.cls``, ``mmattn.det``, ``mmattn.seg``) register them all.
"""
from typing import Dict

from .castling_mvit import CastlingMViT
from .castling_vit import CastlingViT
from .elsa_swin import ELSASwin
from .lavit import LaViT
from .plg_vit import PLGViT
from .sasa_resnet import SASAResNet

BACKBONES: Dict[str, type] = {
    'ELSASwin': ELSASwin,
    'SASAResNet': SASAResNet,
    'PLGViT': PLGViT,
    'CastlingViT': CastlingViT,
    'CastlingMViT': CastlingMViT,
    'LaViT': LaViT,
}

__all__ = ['BACKBONES', 'ELSASwin', 'SASAResNet', 'PLGViT', 'CastlingViT', 'CastlingMViT', 'LaViT']
