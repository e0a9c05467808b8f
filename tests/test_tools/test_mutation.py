"""tools/mutation.py's mutants and test-file mapping (the runs themselves are `make mutation`)."""
import ast
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import mutation  # noqa: E402

SOURCE = '''
def f(a, b):
    """Docstrings are not mutated."""
    if a < b or not b:
        return a + b * 2
    return -a
'''


def _call(tree, *args):
    scope = {}
    exec(compile(tree, '<mutant>', 'exec'), scope)
    return scope['f'](*args)


def test_every_site_gives_one_changed_runnable_mutant():
    tree = ast.parse(SOURCE)
    sites = mutation._sites(tree)
    kinds = sorted(kind for _, kind, _ in sites)
    # <, or, not, +, *, 2, unary minus (the docstring is skipped)
    assert kinds == ['binop', 'binop', 'boolop', 'compare', 'const', 'unary', 'unary']
    original = ast.unparse(tree)
    for index, kind, detail in sites:
        mutant = mutation._mutate(tree, index)
        text = ast.unparse(mutant)
        assert text != original, (kind, detail)
        assert sum(a != b for a, b in zip(text.splitlines(), original.splitlines())) == 1
        _call(mutant, 1, 0)  # still valid code
    assert ast.unparse(tree) == original  # the original tree is left alone
    # the '+ -> -' mutant changes a result the original computes
    (plus, ) = [i for i, kind, detail in sites if detail == 'Add -> Sub']
    assert _call(tree, 1, 2) == 5 and _call(mutation._mutate(tree, plus), 1, 2) == -3


def test_modules_are_mapped_to_their_tests():
    assert 'tests/test_layers/test_sasa_attention.py' in mutation.test_files(
        'mmattn/layers/sasa_attention.py')
    assert 'tests/test_utils/test_checkpoint.py' in mutation.test_files('mmattn/utils/checkpoint.py')
    # end-to-end runs are left out by default
    assert 'tests/test_tools/test_crash_safe_training.py' not in mutation.test_files(
        'mmattn/utils/safe_io.py')
    assert 'tests/test_tools/test_crash_safe_training.py' in mutation.test_files(
        'mmattn/utils/safe_io.py', with_slow=True)
    mods = mutation.modules(mutation.DEFAULT_TARGETS)
    assert 'mmattn/layers/window_attention.py' in mods
    assert not [m for m in mods if m.endswith('__init__.py')]
