"""The teacher's kit of chapters 1 and 2 (issue 12, item 3): coding exercises with starter cells and solutions.

Each coding exercise has a starter cell after the chapter's "## Exercises" list: a function whose body raises
``NotImplementedError`` naming its solution file ``book/solutions/chK_<name>.py``, then a short usage on the chapter's
variables inside ``try: ... except NotImplementedError``. These tests check that

- every solution computes the right thing, against a reference worked out independently (by hand, or written out in
  float64), on tiny synthetic tensors;
- every starter cell raises ``NotImplementedError`` naming a solution file that exists, whose function has the
  starter's name, parameters and docstring, and that the Exercises list announces as a coding exercise;
- every starter cell reads only variables the chapter defines above it, prints its gap as it stands, and runs (and
  prints its result) once the solution is filled in: executed on synthetic stand-ins of the chapter's variables.

Nothing here trains or loads a model: all of it runs in a few seconds."""
import ast
import builtins
import contextlib
import importlib.util
import io
import math
import re
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import lt_utils as lt
from code_names import cells as _cells
from code_names import names

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = {"ch1": ROOT / "book" / "01_data_imbalance.ipynb", "ch2": ROOT / "book" / "02_parameter_imbalance.ipynb"}
GAP = re.compile(r"^Exercise (?P<number>\d+): .+ \(a solution: (?P<path>book/solutions/(?P<chapter>ch\d)_\w+\.py)\)$")


def _solution(stem: str) -> types.ModuleType:
    """A solution module of book/solutions, imported from its file (the book folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"solutions_{stem}", ROOT / "book" / "solutions" / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the solutions compute the right thing


def test_balanced_softmax_is_the_formula_and_equals_la_at_tau_1():
    loss = _solution("ch1_balanced_softmax").balanced_softmax_loss
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(32, 5, generator=gen)
    targets = torch.randint(5, (32,), generator=gen)
    counts = torch.tensor([500, 120, 40, 9, 5])
    # written out in float64: -log( n_y exp(z_y) / sum_k n_k exp(z_k) ), averaged over the batch
    weighted = counts.double() * logits.double().exp()
    reference = -(weighted[torch.arange(32), targets] / weighted.sum(1)).log().mean()
    ours = loss(logits, targets, counts)
    assert ours.shape == () and torch.isclose(ours.double(), reference, rtol=1e-5)
    # the same as LA with tau = 1 on the normalised prior, and blind to the counts' scale
    la = lt.logit_adjusted_loss(logits, targets, counts.float() / counts.sum(), tau=1.0)
    assert torch.isclose(ours, la, rtol=1e-5)
    assert torch.isclose(loss(logits, targets, 7 * counts), ours, rtol=1e-5)
    # equal counts: the plain cross-entropy
    uniform = loss(logits, targets, torch.full((5,), 30))
    assert torch.isclose(uniform, torch.nn.functional.cross_entropy(logits, targets), rtol=1e-5)


def test_post_hoc_correction_subtracts_the_log_prior():
    fix = _solution("ch1_post_hoc_correction").post_hoc_correction
    logits, prior = torch.tensor([[2.0, 1.0, 0.5]]), torch.tensor([0.7, 0.2, 0.1])
    # by hand: 2 - log 0.7 = 2.36, 1 - log 0.2 = 2.61, 0.5 - log 0.1 = 2.80: the tail class now wins
    expected = torch.tensor([[2 - math.log(0.7), 1 - math.log(0.2), 0.5 - math.log(0.1)]])
    assert torch.allclose(fix(logits, prior), expected, atol=1e-6)
    assert logits.argmax(1).tolist() == [0] and fix(logits, prior).argmax(1).tolist() == [2]
    # counts give the same correction; tau scales it; tau = 0 changes nothing
    assert torch.allclose(fix(logits, torch.tensor([70, 20, 10])), expected, atol=1e-6)
    assert torch.allclose(fix(logits, prior, tau=2.0) - logits, 2 * (expected - logits), atol=1e-6)
    assert torch.equal(fix(logits, prior, tau=0.0), logits)


def test_post_hoc_correction_changes_nothing_under_a_uniform_prior():
    fix = _solution("ch1_post_hoc_correction").post_hoc_correction
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    shift = fix(logits, torch.full((4,), 0.25)) - logits
    assert torch.allclose(shift, shift[0, 0].expand_as(shift)), "one constant for every logit"
    assert torch.equal(fix(logits, torch.full((4,), 0.25)).argmax(1), logits.argmax(1))


def test_post_hoc_correction_recovers_the_balanced_classifier():
    """Scores log p(x|y) + log P_D(y) (+ any constant), corrected, predict argmax_y p(x|y)."""
    fix = _solution("ch1_post_hoc_correction").post_hoc_correction
    gen = torch.Generator().manual_seed(2)
    log_likelihood = torch.randn(200, 6, generator=gen)
    prior = torch.softmax(2 * torch.randn(6, generator=gen), 0)
    trained = log_likelihood + prior.log() + 3.0
    assert not torch.equal(trained.argmax(1), log_likelihood.argmax(1)), "the prior changes some predictions"
    assert torch.equal(fix(trained, prior).argmax(1), log_likelihood.argmax(1))


def test_group_matrix_by_hand_on_a_worked_case():
    by_hand = _solution("ch2_group_matrix").group_matrix_by_hand
    # 4 classes, 2 test images each: class accuracies 100, 50, 0 and 50 (%)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([0, 0, 1, 0, 1, 1, 3, 2])
    logits = torch.nn.functional.one_hot(preds, 4).float()
    d_groups, p_groups = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 1, 2, 2])
    expected = torch.full((3, 3), float("nan"))
    expected[0, 0], expected[0, 1], expected[2, 2] = 100.0, 50.0, 25.0  # (0 + 50) / 2 in D-Few x P-Few
    matrix = by_hand(logits, labels, d_groups, p_groups)
    assert matrix.shape == (3, 3) and torch.allclose(matrix, expected, equal_nan=True)


def test_group_matrix_by_hand_equals_the_library_matrix():
    by_hand = _solution("ch2_group_matrix").group_matrix_by_hand
    gen = torch.Generator().manual_seed(3)
    num_classes = 30
    labels = torch.arange(num_classes).repeat_interleave(10)
    logits = torch.randn(len(labels), num_classes, generator=gen)
    logits[torch.arange(len(labels)), labels] += 1.5 * torch.rand(len(labels), generator=gen)
    keep = labels != num_classes - 1  # a class without test images: NaN, left out of its cell's mean
    d_groups = torch.randint(3, (num_classes,), generator=gen)
    p_groups = torch.randint(3, (num_classes,), generator=gen)
    p_groups[(d_groups == 1) & (p_groups == 2)] = 0  # an empty cell: NaN
    library = lt.accuracy_report(logits[keep], labels[keep], d_groups=d_groups, p_groups=p_groups)["matrix"]
    ours = by_hand(logits[keep], labels[keep], d_groups, p_groups)
    assert torch.isnan(library[1, 2]) and torch.allclose(ours, library, equal_nan=True)


def test_long_tailed_subset_follows_the_training_counts():
    subset = _solution("ch2_long_tailed_subset").long_tailed_subset
    gen = torch.Generator().manual_seed(4)
    labels = torch.arange(5).repeat_interleave(10)[torch.randperm(50, generator=gen)]  # a shuffled balanced split
    counts = torch.tensor([500, 100, 50, 10, 5])
    # by hand, k = 10 per class: 10 * n / 500 = 10, 2, 1, 0.2 and 0.1 images, at least one of each class
    keep = subset(labels, counts, seed=0)
    assert torch.bincount(labels[keep], minlength=5).tolist() == [10, 2, 1, 1, 1]
    assert keep.dtype == torch.long and bool((keep.diff() > 0).all()) and 0 <= keep.min() <= keep.max() < 50
    assert torch.equal(subset(labels, counts, seed=0), keep), "the same seed, the same subset"
    assert len({tuple(subset(labels, counts, seed=s).tolist()) for s in range(6)}) > 1, "the seed changes the draw"
    # k is the split's smallest class: a class with more images keeps no more
    larger = torch.cat([labels, torch.zeros(5, dtype=torch.long)])
    assert torch.bincount(larger[subset(larger, counts)], minlength=5).tolist() == [10, 2, 1, 1, 1]


def test_the_estimate_on_a_long_tailed_subset_is_the_prior_over_the_frequencies():
    """What the exercise lets the reader see: on labels of frequencies f, GLA's estimator finds P_P / f, not P_P.
    Exact Bayes logits log p(x|y) + log P_P(y) of Gaussian classes, so the estimator's assumption holds."""
    subset = _solution("ch2_long_tailed_subset").long_tailed_subset
    gen = torch.Generator().manual_seed(5)
    num_classes, per_class = 6, 400
    means = 2.0 * torch.randn(num_classes, 2, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = means[labels] + torch.randn(len(labels), 2, generator=gen)
    log_likelihood = -0.5 * torch.cdist(x, means) ** 2
    pretrain_prior = torch.softmax(torch.linspace(2.0, -2.0, num_classes)[torch.randperm(num_classes, generator=gen)], 0)
    logits = log_likelihood + pretrain_prior.log()
    counts = torch.tensor([500, 300, 150, 80, 40, 20])
    keep = subset(labels, counts, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the estimator warns: the subset is not balanced
        skewed = lt.estimate_prior(logits[keep], labels[keep], calibrate=False)
    balanced = lt.estimate_prior(logits, labels, calibrate=False)
    freq = torch.bincount(labels[keep], minlength=num_classes).float()
    over_freq = pretrain_prior / freq / (pretrain_prior / freq).sum()
    assert (balanced - pretrain_prior).abs().sum() < 0.1
    assert (skewed - over_freq).abs().sum() < 0.1 < (skewed - pretrain_prior).abs().sum()


# --- the starter cells and the Exercises lists


def _exercises_at(cells) -> int:
    return max(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"]))


def _raises_not_implemented(func: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and ast.unparse(n.exc.func) ==
               "NotImplementedError" for n in ast.walk(func))


def _starters():
    """(chapter, index of the cell, its source, its tree, the starter function) of every starter cell."""
    found = []
    for chapter, path in CHAPTERS.items():
        cells = _cells(path)
        for i, cell in enumerate(cells):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or "raise NotImplementedError(" not in source:
                continue
            tree = ast.parse(source)
            funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and _raises_not_implemented(n)]
            assert len(funcs) == 1, f"{path.name}, cell {i}: one starter function per starter cell"
            found.append(types.SimpleNamespace(chapter=chapter, path=path, index=i, source=source, tree=tree,
                                               func=funcs[0]))
    return found


STARTERS = _starters()


def _gap(starter) -> re.Match:
    """Call the starter function alone (its body is a docstring and the raise): the NotImplementedError's text."""
    namespace = {}
    exec(compile(ast.Module(body=[starter.func], type_ignores=[]), "starter", "exec"), namespace)
    required = len(starter.func.args.args) - len(starter.func.args.defaults)
    with pytest.raises(NotImplementedError) as raised:
        namespace[starter.func.name](*[None] * required)
    match = GAP.match(str(raised.value))
    assert match, f"'Exercise N: ... (a solution: book/solutions/chK_name.py)', got {raised.value}"
    return match


def _solution_function(starter) -> ast.FunctionDef:
    tree = ast.parse((ROOT / _gap(starter)["path"]).read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == starter.func.name]
    assert funcs, f"{_gap(starter)['path']} defines no {starter.func.name}"
    return funcs[0]


def _ids(starter) -> str:
    return f"{starter.chapter}-{starter.func.name}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_chapter_has_two_coding_exercises_after_its_exercises_list(chapter):
    mine = [s for s in STARTERS if s.chapter == chapter]
    assert len(mine) >= 2
    at = _exercises_at(_cells(CHAPTERS[chapter]))
    assert all(s.index > at for s in mine), "the starter cells follow the Exercises list"
    numbers = [_gap(s)["number"] for s in mine]
    assert len(set(numbers)) == len(numbers), "one starter cell per exercise"


@pytest.mark.parametrize("starter", STARTERS, ids=_ids)
def test_starter_raises_not_implemented_naming_an_existing_solution(starter):
    gap = _gap(starter)
    assert gap["chapter"] == starter.chapter, "the solution file carries its chapter's prefix"
    assert (ROOT / gap["path"]).is_file(), f"{gap['path']} is missing"
    handlers = [n for n in ast.walk(starter.tree) if isinstance(n, ast.ExceptHandler)]
    assert any(h.type is not None and ast.unparse(h.type) == "NotImplementedError" for h in handlers), \
        "the usage catches the NotImplementedError, so the book still builds"


@pytest.mark.parametrize("starter", STARTERS, ids=_ids)
def test_solution_has_the_starters_name_parameters_and_docstring(starter):
    solution = _solution_function(starter)
    assert ast.dump(solution.args) == ast.dump(starter.func.args), f"{starter.func.name}'s parameters differ"
    assert ast.get_docstring(solution) == ast.get_docstring(starter.func), "the same task, word for word"
    module = ast.get_docstring(ast.parse((ROOT / _gap(starter)["path"]).read_text())) or ""
    assert f"Exercise {_gap(starter)['number']} of chapter {starter.chapter[2:]}" in module
    assert starter.path.name in module


@pytest.mark.parametrize("starter", STARTERS, ids=_ids)
def test_the_exercises_list_announces_the_coding_exercise(starter):
    gap = _gap(starter)
    text = "".join(_cells(starter.path)[_exercises_at(_cells(starter.path))]["source"])
    items = re.split(r"^(?=\d+\. )", text[text.index("## Exercises"):], flags=re.M)
    item = next(i for i in items if i.startswith(f"{gap['number']}. "))
    for needed in ("**Coding exercise:**", f"`{starter.func.name}`", f"`{gap['path']}`", "starter cell"):
        assert needed in item, f"exercise {gap['number']} should say {needed}"


# --- the starter cells run: on the chapter's variables, as they stand and with the solution filled in




def _outsidenames(starter) -> set[str]:
    bound, read = names(starter.tree)
    return read - bound - set(dir(builtins))


def _ch1_variables() -> dict:
    """Synthetic stand-ins of chapter 1's variables, in their shapes and types."""
    gen = torch.Generator().manual_seed(0)
    class_counts = torch.tensor([500, 300, 150, 90, 60, 30, 15, 10, 5])
    labels = torch.arange(9).repeat_interleave(4)
    runs = {loss: {"test": {"logits": torch.randn(36, 9, generator=gen), "labels": labels}} for loss in ("ce", "la")}
    d_groups = lt.data_groups(class_counts)
    reports = {loss.upper(): lt.accuracy_report(run["test"]["logits"], labels, d_groups=d_groups)
               for loss, run in runs.items()}
    return dict(torch=torch, lt=lt, runs=runs, reports=reports, class_counts=class_counts, d_groups=d_groups,
                data_prior=class_counts.float() / class_counts.sum())


def _ch2_variables(lab: bool) -> dict:
    """Synthetic stand-ins of chapter 2's variables; ``true_prior`` is None outside the lab."""
    gen = torch.Generator().manual_seed(0)
    models, num_classes = ("model-a", "model-b"), 9
    class_counts = torch.tensor([500, 300, 150, 90, 60, 30, 15, 10, 5])
    labels = torch.arange(num_classes).repeat_interleave(20)

    def split():
        return {"logits": torch.randn(len(labels), num_classes, generator=gen), "labels": labels}

    d_groups = lt.data_groups(class_counts)
    est_prior = {m: torch.softmax(torch.randn(num_classes, generator=gen), 0) for m in models}
    p_groups = {m: lt.prior_groups(est_prior[m]) for m in models}
    runs = {(m, loss): {"test": split()} for m in models for loss in ("ce", "la")}
    return dict(torch=torch, lt=lt, pd=pd, seed=0, cfg=types.SimpleNamespace(models=models), d_groups=d_groups,
                train_set=types.SimpleNamespace(class_counts=class_counts), est_prior=est_prior, p_groups=p_groups,
                zero_shot={m: {"val": split(), "test": split()} for m in models}, runs=runs,
                reports={(m, loss): lt.accuracy_report(run["test"]["logits"], labels, d_groups=d_groups,
                                                       p_groups=p_groups[m]) for (m, loss), run in runs.items()},
                true_prior={m: torch.softmax(torch.randn(num_classes, generator=gen), 0) for m in models}
                if lab else None)


VARIABLES = {"ch1": [_ch1_variables], "ch2": [lambda: _ch2_variables(lab=True), lambda: _ch2_variables(lab=False)]}


def _run(tree, namespace) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # chapter 2's estimator warns on the long-tailed subset, as it should
        exec(compile(tree, "starter-cell", "exec"), namespace)
    return out.getvalue()


@pytest.mark.parametrize("starter", STARTERS, ids=_ids)
def test_starter_cell_reads_only_the_chapters_variables(starter):
    defined = set()
    for cell in _cells(starter.path)[:starter.index]:
        if cell["cell_type"] == "code":
            defined |= names(ast.parse("".join(cell["source"])))[0]
    missing = _outsidenames(starter) - defined
    assert not missing, f"{starter.path.name}, cell {starter.index} reads {sorted(missing)}, not defined above"


@pytest.mark.parametrize("starter", STARTERS, ids=_ids)
def test_starter_cell_prints_its_gap_and_runs_with_the_solution(starter):
    solution = getattr(_solution(Path(_gap(starter)["path"]).stem), starter.func.name)
    for variables in VARIABLES[starter.chapter]:
        namespace = variables()
        assert _outsidenames(starter) <= set(namespace), "the stand-ins cover what the cell reads"
        as_it_stands = _run(starter.tree, dict(namespace))
        assert as_it_stands.strip() == _gap(starter).group(0), "the book prints the gap, nothing else"

        usage = ast.Module(body=[n for n in starter.tree.body if n is not starter.func], type_ignores=[])
        filled_in = _run(usage, dict(namespace, **{starter.func.name: solution}))
        assert filled_in.strip() and "a solution:" not in filled_in and "False" not in filled_in, filled_in
