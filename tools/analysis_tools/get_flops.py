"""Parameters and FLOPs (multiply-accumulates) of a config's model, with mmattn's op handles.

By default the backbone is analysed (what the papers' tables compare); ``--whole`` analyses the
whole model in ``mode='tensor'`` (for a classifier: backbone, neck and head).

Examples::

    python tools/analysis_tools/get_flops.py configs/sasa_resnet/sasa-resnet-50_8xb128_in1k.py
    python tools/analysis_tools/get_flops.py CONFIG --shape 800 1333 --whole
"""
import argparse
import os.path as osp
import sys
import warnings

import torch

# setuptools' notice, raised once per importing package of the stack: nothing a user can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
from mmengine.config import DictAction  # noqa: E402

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmattn.utils.tools import load_config  # noqa: E402


class _TensorMode(torch.nn.Module):
    """Runs an OpenMMLab model's ``forward(inputs, mode='tensor')``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input height and width (one value: square)')
    parser.add_argument('--whole', action='store_true', help='the whole model, not the backbone')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.depth=26')
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2):
        raise ValueError(f'--shape takes 1 or 2 values, got {args.shape}')
    h, w = (args.shape * 2)[:2]

    from mmengine.analysis import get_model_complexity_info
    from mmengine.registry import MODELS

    cfg = load_config(args.config, args.cfg_options, 'none', None)
    model = MODELS.build(cfg.model)
    model.eval()
    target = _TensorMode(model) if args.whole else model.backbone
    info = get_model_complexity_info(target, input_shape=(3, h, w), show_table=False,
                                     show_arch=False)
    what = 'model' if args.whole else 'backbone'
    print(f'{osp.basename(args.config)} ({what}, input {h}x{w}): '
          f'params {info["params"] / 1e6:.2f} M, FLOPs {info["flops"] / 1e9:.2f} GMAC')


if __name__ == '__main__':
    main()
