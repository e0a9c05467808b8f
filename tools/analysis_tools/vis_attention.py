"""Draw where one query pixel attends in one attention layer of a backbone, over an image.

The config's backbone (random weights, or the checkpoint's) runs on the image (resized with
``--size``, normalised by the config's data preprocessor); the chosen layer's attention for the
query is drawn over the image: the weight of every window tap on the image cells that tap covers
(one panel per head, their mean, and for ELSA the effective weights with the ghost head), the
query marked with a cross, taps outside the image (masked, or ELSA's zero padding) hatched.
Pooled-grid attention (LaViT's keys, PLG-ViT's global branch) and token attention
(Castling-ViT) are drawn as the grid's cells over the image. Families make their layers
drawable with a hook in ``mmattn/utils/attention_maps.py``.

Examples::

    python tools/analysis_tools/vis_attention.py configs/elsa_swin/elsa-swin-t_8xb128_in1k.py \\
        --image demo.jpg --layer 0 --query 100 120 --out attn.png
    python tools/analysis_tools/vis_attention.py CONFIG CKPT --image demo.jpg --list-layers
"""
import argparse
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config whose model.backbone is drawn')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    parser.add_argument('--image', required=True, help='image file')
    parser.add_argument('--layer', default='0',
                        help='attention layer: index among the drawable layers (0, -1, ...) or '
                        'module name (see --list-layers). Default 0')
    parser.add_argument('--query', type=int, nargs=2, metavar=('Y', 'X'),
                        help='query pixel in the (resized) image; default its centre')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='resize the image to this size first (default: as it is)')
    parser.add_argument('--out', default='attention.png', help='output picture')
    parser.add_argument('--dpi', type=int, default=110, help='resolution of the picture')
    parser.add_argument('--list-layers', action='store_true', help='print the layers and exit')
    return parser.parse_args(argv)


def load_image(path: str, size=None):
    """``(rgb uint8 HxWx3, the image as read)``."""
    import mmcv
    if not osp.isfile(path):
        raise SystemExit(f'vis_attention.py: error: --image {path}: no such file')
    bgr = mmcv.imread(path)
    if size is not None:
        bgr = mmcv.imresize(bgr, (size[1], size[0]))
    return bgr[..., ::-1].copy()


def build(config: str, checkpoint=None):
    """The config's backbone (eval mode) and its normalisation ``(mean, std)`` (RGB)."""
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint

    from mmattn.utils.tools import checked_checkpoint, load_config
    cfg = load_config(config, None, 'none', None, need_data=False)
    model_cfg = cfg.model.backbone.copy()
    model_cfg.pop('init_cfg', None)
    backbone = MODELS.build(model_cfg)
    if checkpoint is not None:
        load_checkpoint(backbone, checked_checkpoint(checkpoint, 'the', resume=False),
                        map_location='cpu', logger='silent', revise_keys=[(r'^backbone\.', '')])
    backbone.eval()
    pre = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = pre.get('mean', [123.675, 116.28, 103.53])
    std = pre.get('std', [58.395, 57.12, 57.375])
    return backbone, mean, std


def draw(rgb, qmap, query_px, out: str, title: str, dpi: int = 110) -> None:
    """One panel per map of ``qmap`` (window weights over the image), saved to ``out``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    from mmattn.utils.attention_maps import heatmap
    names = list(qmap.maps)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.4), dpi=dpi,
                             squeeze=False)
    h, w = rgb.shape[:2]
    window = qmap.layout == 'window'
    k = next(iter(qmap.maps.values())).shape[0] if window else 1
    r = k // 2
    cell_h, cell_w = h / qmap.map_size[0], w / qmap.map_size[1]
    for ax, name in zip(axes.flat, names):
        ax.imshow(rgb)
        heat = heatmap(qmap, name, (h, w))
        ax.imshow(np.ma.masked_invalid(heat), cmap='inferno', alpha=0.6,
                  vmin=np.nanmin(qmap.maps[name]), vmax=np.nanmax(qmap.maps[name]))
        # taps outside the map: hatched cells (masked, or attended zero padding)
        for a in range(k if window else 0):
            for b in range(k):
                y = qmap.query[0] + (a - r) * qmap.dilation
                x = qmap.query[1] + (b - r) * qmap.dilation
                if not (0 <= y < qmap.map_size[0] and 0 <= x < qmap.map_size[1]):
                    ax.add_patch(plt.Rectangle((x * cell_w, y * cell_h), cell_w, cell_h,
                                               fill=False, hatch='///', edgecolor='cyan',
                                               linewidth=0.3, clip_on=False))
        ax.plot(query_px[1], query_px[0], marker='+', color='cyan', markersize=12, mew=2)
        label = name + (f' (outside: {qmap.outside[name]:.2f})' if name in qmap.outside and
                        qmap.outside[name] > 0 else '')
        ax.set_title(label, fontsize=8)
        ax.set_xlim(-cell_w * (r + 0.5), w + cell_w * (r + 0.5))
        ax.set_ylim(h + cell_h * (r + 0.5), -cell_h * (r + 0.5))
        ax.axis('off')
    for ax in list(axes.flat)[len(names):]:
        ax.axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from mmattn.utils.attention_maps import (attention_layers, find_layer, layer_call,
                                             query_map)
    backbone, mean, std = build(args.config, args.checkpoint)
    if args.list_layers:
        for i, (name, module) in enumerate(attention_layers(backbone)):
            print(f'{i:3d}  {name}  ({type(module).__name__})')
        return {}
    rgb = load_image(args.image, args.size)
    h, w = rgb.shape[:2]
    query_px = tuple(args.query) if args.query else (h // 2, w // 2)
    if not (0 <= query_px[0] < h and 0 <= query_px[1] < w):
        raise SystemExit(f'vis_attention.py: error: --query must lie in the {h}x{w} image, '
                         f'got {query_px}')
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    try:
        name, layer = find_layer(backbone, args.layer)
    except ValueError as e:
        raise SystemExit(f'vis_attention.py: error: {e}')
    call = layer_call(backbone, layer, x)
    try:
        qmap = query_map(layer, call, query_px, (h, w))
    except ValueError as e:
        raise SystemExit(f'vis_attention.py: error: {e}')
    title = (f'{osp.basename(args.config)}: {name} ({type(layer).__name__}), query {query_px} '
             f'-> map pixel {qmap.query} of {qmap.map_size[0]}x{qmap.map_size[1]}')
    draw(rgb, qmap, query_px, args.out, title, args.dpi)
    print(f'[vis_attention] {title}; wrote {args.out}')
    return dict(layer=name, qmap=qmap, image_size=(h, w), query=query_px, out=args.out)


if __name__ == '__main__':
    main()
