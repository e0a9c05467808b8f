"""Mutation testing of mmattn's Python code: small semantic mutations, matching tests, survivors.

Each mutant changes one expression of one module (a comparison, an arithmetic or boolean
operator, a constant, a unary ``not``/minus, an index) in a scratch copy of the checkout; the
test files that exercise the module run against it (``pytest -x``), and a mutant is *killed* when
they fail. The surviving mutants are printed with their file, line and change: each is either a
gap in the tests or an equivalent mutant (one that cannot change behaviour).

Examples::

    python tools/mutation.py                      # default modules, 4 mutants each (make mutation)
    python tools/mutation.py mmattn/layers/sasa_attention.py --per-module 20
    python tools/mutation.py --list                     # the modules and their test files

Not part of CI (it runs the matching tests once per mutant). Mutants are drawn deterministically
(``--seed``), spread over each module's lines.
"""
import argparse
import ast
import copy
import glob
import json
import os
import os.path as osp
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_TARGETS = ('mmattn/layers', 'mmattn/backbones', 'mmattn/utils', 'tools/model_converters')
# modules whose tests are the end-to-end tool tests (minutes each): left out unless named
SLOW_MODULES = ('mmattn/utils/tools.py', 'mmattn/utils/benchmark.py', 'mmattn/utils/onnx_export.py')

_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.And: ast.Or,
    ast.Or: ast.And, ast.MatMult: ast.Mult,
}


class _Site:
    """One mutation: the node path inside the module's AST and a description."""

    def __init__(self, index: int, lineno: int, kind: str, detail: str) -> None:
        self.index, self.lineno, self.kind, self.detail = index, lineno, kind, detail


def _docstring_nodes(tree: ast.AST) -> set:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _sites(tree: ast.AST) -> List[Tuple[int, str, str]]:
    """``(node index in ast.walk order, kind, detail)`` of every mutable expression."""
    skip = _docstring_nodes(tree)
    out = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAPS:
            out.append((i, 'compare', f'{type(node.ops[0]).__name__} -> '
                        f'{_SWAPS[type(node.ops[0])].__name__}'))
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAPS:
            out.append((i, 'binop', f'{type(node.op).__name__} -> '
                        f'{_SWAPS[type(node.op)].__name__}'))
        elif isinstance(node, ast.BoolOp) and type(node.op) in _SWAPS:
            out.append((i, 'boolop', f'{type(node.op).__name__} -> '
                        f'{_SWAPS[type(node.op)].__name__}'))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            out.append((i, 'unary', f'drop {type(node.op).__name__}'))
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            v = node.value
            if isinstance(v, bool):
                out.append((i, 'const', f'{v} -> {not v}'))
            elif isinstance(v, int) and not isinstance(v, bool):
                out.append((i, 'const', f'{v} -> {v + 1}'))
            elif isinstance(v, float):
                out.append((i, 'const', f'{v} -> {v * 2 if v else 1.0}'))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                isinstance(node.slice.value, int) and not isinstance(node.slice.value, bool):
            out.append((i, 'index', f'[{node.slice.value}] -> [{node.slice.value + 1}]'))
    return out


def _mutate(tree: ast.AST, index: int) -> ast.AST:
    tree = copy.deepcopy(tree)
    node = list(ast.walk(tree))[index]
    if isinstance(node, ast.Compare):
        node.ops[0] = _SWAPS[type(node.ops[0])]()
    elif isinstance(node, (ast.BinOp, ast.AugAssign, ast.BoolOp)):
        node.op = _SWAPS[type(node.op)]()
    elif isinstance(node, ast.UnaryOp):
        # replace the unary node by its operand: find the parent
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list):
                    for j, item in enumerate(value):
                        if item is node:
                            value[j] = node.operand
    elif isinstance(node, ast.Constant):
        v = node.value
        node.value = (not v) if isinstance(v, bool) else (v + 1 if isinstance(v, int) else
                                                           (v * 2 if v else 1.0))
    elif isinstance(node, ast.Subscript):
        node.slice.value += 1
    return ast.fix_missing_locations(tree)


def modules(targets) -> List[str]:
    """Python files (relative paths) under ``targets`` (files or folders)."""
    files = []
    for t in targets:
        path = osp.join(ROOT, t)
        if osp.isdir(path):
            files += sorted(glob.glob(osp.join(path, '**', '*.py'), recursive=True))
        elif osp.isfile(path):
            files.append(path)
        else:
            raise ValueError(f'{t}: no such file or folder under {ROOT}')
    rel = [osp.relpath(f, ROOT) for f in files if not f.endswith('__init__.py')]
    return rel


# end-to-end tests (training runs, wheel builds: minutes per mutant), left out unless
# --with-slow-tests; the unit tests of the same modules still run
SLOW_TESTS = ('tests/test_tools/test_crash_safe_training.py', 'tests/test_install/test_install.py',
              'tests/test_tools/test_train_tools.py', 'tests/test_tools/test_train_lavit.py',
              'tests/test_tools/test_train_castling.py', 'tests/test_tools/test_onnx_export.py')
# test files of modules that neither a test file's name nor an import path identifies
EXTRA_TESTS = {
    'mmattn/layers/blocks.py': ['tests/test_backbones/test_elsa_swin.py',
                                'tests/test_backbones/test_elsa_swin_oracles.py',
                                'tests/test_backbones/test_lavit.py'],
    'mmattn/backbones/_checks.py': ['tests/test_backbones/test_sasa_resnet.py',
                                    'tests/test_backbones/test_plg_vit.py'],
    'mmattn/backbones/_variants.py': ['tests/test_tools/test_benchmark_backbones.py'],
    'mmattn/backbones/castling_mvit.py': ['tests/test_backbones/test_castling_vit.py'],
    'mmattn/backbones/elsa_swin.py': ['tests/test_tools/test_elsa2mmattn.py'],
    'mmattn/layers/window_attention.py': ['tests/test_backbones/test_elsa_swin.py',
                                          'tests/test_backbones/test_elsa_swin_oracles.py',
                                          'tests/test_layers/test_plg_attention.py',
                                          'tests/test_tools/test_elsa2mmattn.py'],
    'mmattn/layers/sasa_attention.py': ['tests/test_backbones/test_sasa_resnet.py',
                                        'tests/test_backbones/test_sasa_oracles.py'],
    'mmattn/backbones/sasa_resnet.py': ['tests/test_backbones/test_sasa_oracles.py',
                                        'tests/test_layers/test_layer_contracts.py'],
    'mmattn/utils/checkpoint.py': ['tests/test_utils/test_checkpoint.py'],
}


# contract tests that cover every module of a folder (every backbone keeps train(), ...)
FOLDER_TESTS = {
    'mmattn/backbones/': ['tests/test_backbones/test_variants.py'],
    'mmattn/layers/': ['tests/test_layers/test_layer_contracts.py'],
}


def test_files(module: str, with_slow: bool = False) -> List[str]:
    """The test files that exercise ``module``: ``test_<stem>*.py``, those that import its dotted
    path, and :data:`EXTRA_TESTS`."""
    stem = osp.splitext(osp.basename(module))[0].lstrip('_')
    dotted = osp.splitext(module)[0].replace(os.sep, '.')
    out = set()
    for path in sorted(glob.glob(osp.join(ROOT, 'tests', '**', 'test_*.py'), recursive=True)):
        rel = osp.relpath(path, ROOT)
        if osp.basename(path).startswith(f'test_{stem}'):
            out.add(rel)
            continue
        with open(path) as f:
            if dotted in f.read():
                out.add(rel)
    extras = EXTRA_TESTS.get(module, []) + [t for folder, tests in FOLDER_TESTS.items()
                                            if module.startswith(folder) for t in tests]
    for extra in extras:
        if osp.exists(osp.join(ROOT, extra)):
            out.add(extra)
    # a folder and files inside it would run twice
    if not with_slow:
        out -= set(SLOW_TESTS)
    folders = [o for o in out if osp.isdir(osp.join(ROOT, o))]
    return sorted(o for o in out if not any(o.startswith(f + os.sep) for f in folders))


def _scratch_copy() -> str:
    """A copy of the checkout (tracked and untracked files, the built extension)."""
    dst = tempfile.mkdtemp(prefix='mmattn-mutation-')
    ignore = shutil.ignore_patterns('.git', 'build', 'dist', 'work_dirs', 'data', '__pycache__',
                                    '*.egg-info', '.pytest_cache')
    shutil.copytree(ROOT, osp.join(dst, 'repo'), ignore=ignore)
    return osp.join(dst, 'repo')


def _run_tests(repo: str, tests: List[str], timeout: float) -> Tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=repo, PYTHONDONTWRITEBYTECODE='1')
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
                               *tests], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return 'timeout', time.perf_counter() - start
    # 1: a test failed; 2: collection failed (the mutant broke an import): both kill it
    status = {0: 'survived', 1: 'killed', 2: 'killed', 5: 'no tests'}.get(
        proc.returncode, f'error {proc.returncode}')
    return status, time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('targets', nargs='*', help=f'files or folders (default: '
                        f'{" ".join(DEFAULT_TARGETS)}, without {", ".join(SLOW_MODULES)})')
    parser.add_argument('--per-module', type=int, default=4, help='mutants per module (default 4)')
    parser.add_argument('--seed', type=int, default=0, help='which mutants are drawn')
    parser.add_argument('--timeout', type=float, default=300, help='seconds per mutant run')
    parser.add_argument('--with-slow-tests', action='store_true',
                        help=f'also run the end-to-end tests ({", ".join(SLOW_TESTS)})')
    parser.add_argument('--list', action='store_true', help='list modules, sites and test files')
    parser.add_argument('--json', help='write the results to this file')
    args = parser.parse_args(argv)
    if args.per_module < 1:
        parser.error('--per-module must be at least 1')
    mods = modules(args.targets or DEFAULT_TARGETS)
    if not args.targets:
        mods = [m for m in mods if m not in SLOW_MODULES]
    plan: Dict[str, dict] = {}
    for mod in mods:
        with open(osp.join(ROOT, mod)) as f:
            tree = ast.parse(f.read())
        sites = _sites(tree)
        tests = test_files(mod, args.with_slow_tests)
        rng = random.Random(f'{args.seed}:{mod}')
        chosen = sorted(rng.sample(range(len(sites)), min(args.per_module, len(sites))))
        plan[mod] = dict(tree=tree, sites=[sites[i] for i in chosen], tests=tests,
                         total=len(sites))
    if args.list:
        for mod, p in plan.items():
            print(f'{mod}: {p["total"]} sites; tests: {" ".join(p["tests"]) or "NONE"}')
        return {}
    repo = _scratch_copy()
    results, start = [], time.perf_counter()
    count = sum(len(p['sites']) for p in plan.values() if p['tests'])
    done = 0
    try:
        for mod, p in plan.items():
            if not p['tests']:
                print(f'[mutation] {mod}: no test file names it; skipped', flush=True)
                continue
            target = osp.join(repo, mod)
            with open(target) as f:
                original = f.read()
            lines = original.splitlines()
            for index, kind, detail in p['sites']:
                mutated_tree = _mutate(p['tree'], index)
                node = list(ast.walk(p['tree']))[index]
                lineno = getattr(node, 'lineno', 0)
                with open(target, 'w') as f:
                    f.write(ast.unparse(mutated_tree))
                status, seconds = _run_tests(repo, p['tests'], args.timeout)
                with open(target, 'w') as f:
                    f.write(original)
                done += 1
                row = dict(module=mod, line=lineno, kind=kind, change=detail, status=status,
                           seconds=round(seconds, 1),
                           source=lines[lineno - 1].strip() if 0 < lineno <= len(lines) else '')
                results.append(row)
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (count - done)
                print(f'[mutation] {done}/{count} {mod}:{lineno} {detail}: {status} '
                      f'({seconds:.0f} s; elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)',
                      flush=True)
    finally:
        shutil.rmtree(osp.dirname(repo), ignore_errors=True)
    survivors = [r for r in results if r['status'] == 'survived']
    killed = sum(r['status'] in ('killed', 'timeout') for r in results)
    rate = len(survivors) / max(len(results), 1)
    print(f'\n[mutation] {len(results)} mutants, {killed} killed, {len(survivors)} survived '
          f'(survival rate {rate:.1%}) in {(time.perf_counter() - start) / 60:.1f} min')
    for r in survivors:
        print(f'  SURVIVED {r["module"]}:{r["line"]} {r["change"]}   | {r["source"]}')
    summary = dict(results=results, survivors=survivors, survival_rate=rate)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == '__main__':
    main()
