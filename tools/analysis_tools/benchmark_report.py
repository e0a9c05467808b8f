"""Write the benchmark results of ``benchmark_backbones.py --all`` into the READMEs.

The top-level README's section between ``<!-- benchmark:begin -->`` and ``<!-- benchmark:end -->``
gets the whole table, the plot and the command that measured them; each family README with the
same markers gets its family's rows and their references. Nothing outside the markers changes.

Example::

    python tools/analysis_tools/benchmark_backbones.py --all --out-dir docs/benchmark
    python tools/analysis_tools/benchmark_report.py docs/benchmark/results.json
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

BEGIN, END = '<!-- benchmark:begin -->', '<!-- benchmark:end -->'
# family README folder of each backbone class
FAMILY_DIRS = {'ELSASwin': 'elsa_swin', 'SASAResNet': 'sasa_resnet', 'LaViT': 'lavit',
               'CastlingViT': 'castling_vit', 'CastlingMViT': 'castling_vit',
               'PLGViT': 'plg_vit'}


def _table(rows: List[dict], meta: dict) -> str:
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))
    from benchmark_backbones import markdown_table
    return markdown_table(rows, meta)


def render(rows: List[dict], meta: dict, plot: str = '') -> str:
    """Markdown for one README section."""
    lines = [f"Measured {meta.get('date', '')} on {meta['device']} with {meta['threads']} threads, "
             f"input {meta['shape'][0]}x{meta['shape'][1]} (random weights; throughput at batch "
             f"{meta['batch']}, latency and training step at batch 1, medians of "
             f"{meta['repeats']} interleaved repeats; GMAC of one image, mmengine's analyzer "
             "with mmattn's handles; training peak memory at batch 1), by",
             '', '```bash', meta.get('command', ''), '```', '']
    if plot:
        lines += [f'![throughput against GMAC]({plot})', '']
    lines.append(_table(rows, meta))
    return '\n'.join(lines)


def replace_section(text: str, body: str) -> str:
    """``text`` with the marked section's body replaced (the markers must be there)."""
    pattern = re.compile(re.escape(BEGIN) + '.*?' + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f'no {BEGIN} ... {END} section')
    return pattern.sub(lambda _: f'{BEGIN}\n{body}\n{END}', text)


def main(argv=None) -> Dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('results', help='results.json of benchmark_backbones.py --all')
    parser.add_argument('--root', default=ROOT, help='checkout whose READMEs are updated')
    args = parser.parse_args(argv)
    with open(args.results) as f:
        result = json.load(f)
    rows, meta = result['rows'], {k: v for k, v in result.items() if k != 'rows'}
    if not rows:
        raise SystemExit('benchmark_report.py: error: the results hold no rows')
    written = {}
    readme = osp.join(args.root, 'README.md')
    png = osp.join(osp.dirname(osp.abspath(args.results)), 'results.png')
    plot = osp.relpath(png, args.root) if osp.exists(png) else ''
    with open(readme) as f:
        text = f.read()
    with open(readme, 'w') as f:
        f.write(replace_section(text, render(rows, meta, plot)))
    written['README.md'] = f'{len(rows)} rows'
    refs = [r for r in rows if r['family'] == 'reference']
    from mmattn.utils.backbone_zoo import REFERENCES
    peers = {r['name']: r['peer'] for r in REFERENCES}
    for path in sorted(glob.glob(osp.join(args.root, 'configs', '*', 'README.md'))):
        folder = osp.basename(osp.dirname(path))
        families = {f for f, d in FAMILY_DIRS.items() if d == folder}
        ours = [r for r in rows if r['family'] in families]
        with open(path) as f:
            text = f.read()
        if not ours or BEGIN not in text:
            continue
        mine = ours + [r for r in refs if peers.get(r['name']) in families]
        with open(path, 'w') as f:
            f.write(replace_section(text, render(mine, meta)))
        written[osp.relpath(path, args.root)] = f'{len(mine)} rows'
    for path, what in written.items():
        print(f'[report] {path}: {what}')
    return written


if __name__ == '__main__':
    main()
