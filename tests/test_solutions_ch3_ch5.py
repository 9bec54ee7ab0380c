"""The teacher's kit of chapters 3-5 (issue 12, item 3): coding exercises with starter cells and solutions.

After its Exercises list, each chapter has one starter cell per coding exercise: a function whose body raises
NotImplementedError naming a solution file in book/solutions/, then lines that run it on the chapter's variables
inside `try: ... except NotImplementedError`, so the book builds with the gap and the cell prints the result once
the reader fills the function in. Nothing here executes a chapter:

- the starters (parsed): each raises NotImplementedError naming an existing solution file, calls its function only
  inside the try, reads only names the chapter binds above it, and is announced in the Exercises list;
- the solutions: the starter's name and parameters, and results equal to independent references written here with
  numpy / pandas / scipy (not lt_utils) on small synthetic inputs;
- the usage: each starter cell, run on synthetic stand-ins of the chapter's variables, prints the gap as committed
  and runs through once the solution is filled in.
"""
import ast
import builtins
import contextlib
import importlib
import inspect
import io
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import lt_utils as lt
from code_names import cells, names
from code_names import source as _source

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SOLUTIONS = BOOK / "solutions"
sys.path.insert(0, str(SOLUTIONS))  # the solution modules import by their file name, e.g. ch3_knn_p_gap

CHAPTERS = {3: "03_logit_adjustment_fails", 4: "04_backdoor_adjustment", 5: "05_beyond_the_paper"}
SOLUTION_PATH = re.compile(r"book/solutions/(ch\d_\w+\.py)")
MESSAGE = re.compile(r"^Exercise (\d+): ")


def _cells(chapter: int) -> list[dict]:
    return cells(BOOK / f"{CHAPTERS[chapter]}.ipynb")


def _exercises_at(cells) -> int:
    """Index of the markdown cell holding the chapter's `## Exercises` list (the chapter's last section)."""
    return max(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "## Exercises" in _source(c))


@dataclass
class Starter:
    chapter: int
    index: int  # among the notebook's cells
    source: str
    func: ast.FunctionDef
    message: str  # the NotImplementedError's message
    solution: Path

    @property
    def exercise(self) -> int:
        return int(MESSAGE.match(self.message).group(1))

    def __str__(self):
        return f"ch{self.chapter}-{self.func.name}"


def _raises_not_implemented(node) -> bool:
    return (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
            and isinstance(node.exc.func, ast.Name) and node.exc.func.id == "NotImplementedError")


def _starters(chapter: int) -> list[Starter]:
    cells = _cells(chapter)
    found = []
    for i, cell in enumerate(cells[_exercises_at(cells) + 1:], start=_exercises_at(cells) + 1):
        if cell["cell_type"] != "code":
            continue
        for node in ast.parse(_source(cell)).body:
            if isinstance(node, ast.FunctionDef) and _raises_not_implemented(node.body[-1]):
                message = ast.literal_eval(node.body[-1].exc.args[0])
                match = SOLUTION_PATH.search(message)
                found.append(Starter(chapter, i, _source(cell), node, message,
                                     SOLUTIONS / match.group(1) if match else None))
    return found


STARTERS = [s for chapter in CHAPTERS for s in _starters(chapter)]


def _solution_function(starter: Starter):
    return getattr(importlib.import_module(starter.solution.stem), starter.func.name)




def _bound_above(chapter: int, index: int) -> set[str]:
    """Every name the chapter's code cells above cell ``index`` bind."""
    bound = set()
    for cell in _cells(chapter)[:index]:
        if cell["cell_type"] == "code":
            bound |= names(ast.parse(_source(cell)))[0]
    return bound


# --- the starter cells, parsed


def test_every_chapter_has_at_least_two_coding_exercises():
    for chapter in CHAPTERS:
        starters = _starters(chapter)
        assert len(starters) >= 2, f"chapter {chapter}: at least two coding exercises"
        assert len({s.exercise for s in starters}) == len(starters), "one starter per exercise"
        cells = _cells(chapter)
        after = cells[_exercises_at(cells) + 1:]
        assert [c["cell_type"] for c in after] == ["code"] * len(starters), \
            f"chapter {chapter}: only the starter cells follow the Exercises list"
        assert all(c["outputs"] == [] and c["execution_count"] is None and "id" not in c for c in after)


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_starter_raises_not_implemented_naming_an_existing_solution(starter):
    assert MESSAGE.match(starter.message), f"the message starts with 'Exercise N: ': {starter.message!r}"
    assert starter.solution is not None, f"the message names book/solutions/...py: {starter.message!r}"
    assert starter.solution.is_file(), f"{starter.solution} does not exist"
    assert starter.solution.name.startswith(f"ch{starter.chapter}_")
    body = starter.func.body
    assert len(body) == 2 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), \
        "a starter holds its docstring and the raise, nothing of the answer"
    doc = ast.get_docstring(starter.func)
    assert "Args:" in doc and "Returns:" in doc
    namespace = {}
    exec(compile(ast.Module([starter.func], []), str(starter), "exec"), namespace)
    required = [p for p in inspect.signature(namespace[starter.func.name]).parameters.values()
                if p.default is inspect.Parameter.empty]
    with pytest.raises(NotImplementedError, match=re.escape(f"book/solutions/{starter.solution.name}")):
        namespace[starter.func.name](*[None] * len(required))


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_the_exercise_list_announces_the_coding_exercise(starter):
    cells = _cells(starter.chapter)
    text = _source(cells[_exercises_at(cells)]).split("## Exercises", 1)[1]
    items = dict(re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |\Z)", text, re.M | re.S))
    item = " ".join(items[str(starter.exercise)].split())
    assert "Coding exercise" in item and f"`{starter.func.name}`" in item, item
    assert f"`book/solutions/{starter.solution.name}`" in item, item


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_the_function_is_called_only_inside_try_except_not_implemented(starter):
    tree = ast.parse(starter.source)
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(ast.unparse(h.type) == "NotImplementedError" for h in node.handlers):
            assert any(isinstance(n, ast.Call) and "print" in ast.unparse(n.func)
                       for h in node.handlers for n in ast.walk(h)), "the handler prints the gap"
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == starter.func.name]
    assert calls, "the cell runs its function on the chapter's variables"
    assert all(id(c) in guarded for c in calls), "every call sits inside `try: ... except NotImplementedError`"


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_starter_reads_only_names_the_chapter_binds_above_it(starter):
    bound, read = names(ast.parse(starter.source))
    missing = read - bound - _bound_above(starter.chapter, starter.index) - set(dir(builtins))
    assert not missing, f"{starter} reads {sorted(missing)}, which no cell above binds"


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_solution_has_the_starters_name_and_parameters(starter):
    module = ast.parse(starter.solution.read_text(encoding="utf-8"))
    doc = ast.get_docstring(module)
    assert doc and f"Exercise {starter.exercise} of chapter {starter.chapter}" in doc, \
        "the module docstring says which exercise it solves"
    assert f"book/{CHAPTERS[starter.chapter]}.ipynb" in doc
    functions = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    assert starter.func.name in functions, f"{starter.solution.name} defines {starter.func.name}"
    assert ast.dump(functions[starter.func.name].args) == ast.dump(starter.func.args), "the same parameters"
    solved = _solution_function(starter)
    assert solved.__name__ == starter.func.name and inspect.getdoc(solved)


# --- synthetic stand-ins of the chapters' runs

C, PER_CLASS, DIM = 12, 6, 8  # 12 classes: terciles of 4 / 4 / 4


def _run(seed: int, signal: float = 2.0) -> dict:
    """A fake CE `fine_tune` result (or `zero_shot`'s): val (6 per class) and test (12 per class) with logits,
    features, labels and disjoint ids; the logits carry log P_D and a class bias (a pre-training prior), and the
    features cluster by class."""
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(C, DIM, generator=gen)
    counts = torch.arange(C, 0, -1).double() ** 2
    data_prior = (counts / counts.sum()).float()
    bias = torch.randn(C, generator=gen)
    run = {"data_prior": data_prior, "bias": bias}
    for split, per_class, offset in (("val", PER_CLASS, 1_000_000), ("test", 2 * PER_CLASS, 2_000_000)):
        labels = torch.arange(C).repeat_interleave(per_class)
        run[split] = dict(
            labels=labels, ids=torch.arange(len(labels)) + offset,
            features=centers[labels] + torch.randn(len(labels), DIM, generator=gen),
            logits=(signal * torch.nn.functional.one_hot(labels, C).float() + data_prior.log() + bias
                    + torch.randn(len(labels), C, generator=gen)))
    return run


def _accuracy(logits, labels) -> float:
    return 100.0 * float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def _per_class(predictions, labels) -> np.ndarray:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return np.array([100.0 * (predictions[labels == c] == c).mean() for c in range(C)])


def _terciles(prior) -> np.ndarray:
    """P-groups of 12 classes: the 4 largest priors Many, the next 4 Medium, the 4 smallest Few."""
    groups = np.empty(C, dtype=int)
    groups[np.argsort(-np.asarray(prior, dtype=float), kind="stable")] = np.repeat([0, 1, 2], C // 3)
    return groups


# --- chapter 3


def _reference_post_hoc(run, data_prior, pretrain_prior, lambdas, tau):
    log_data, log_pretrain = np.log(np.asarray(data_prior, float)), np.log(np.asarray(pretrain_prior, float))

    def corrected(logits, lam):
        return np.asarray(logits, float) - tau * log_data - lam * log_pretrain

    hits = [(corrected(run["val"]["logits"], lam).argmax(1) == run["val"]["labels"].numpy()).sum()
            for lam in lambdas]
    lam = lambdas[int(np.argmax(hits))]  # the first of the best
    return lam, corrected(run["test"]["logits"], lam)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_ch3_post_hoc_both_priors_matches_a_reference(tau):
    from ch3_post_hoc_both_priors import post_hoc_both_priors

    run = _run(0)
    pretrain_prior = torch.softmax(run["bias"], 0)  # the bias the logits carry: lambda near 1 removes it
    lambdas = list(np.round(np.arange(0, 1.51, 0.125), 3))
    lam, test_logits = post_hoc_both_priors(run, run["data_prior"], pretrain_prior, lambdas, tau=tau)
    ref_lam, ref_logits = _reference_post_hoc(run, run["data_prior"], pretrain_prior, lambdas, tau)
    assert lam == ref_lam and lam > 0
    np.testing.assert_allclose(np.asarray(test_logits, float), ref_logits, rtol=1e-5, atol=1e-4)


def test_ch3_post_hoc_both_priors_chooses_on_val_only_and_keeps_the_first_tie():
    from ch3_post_hoc_both_priors import post_hoc_both_priors

    run = _run(1)
    prior = torch.softmax(run["bias"], 0)
    lam, _ = post_hoc_both_priors(run, run["data_prior"], prior, [0.0, 0.5, 1.0])
    scrambled = dict(run, test=dict(run["test"], labels=run["test"]["labels"].flip(0)))
    assert post_hoc_both_priors(scrambled, run["data_prior"], prior, [0.0, 0.5, 1.0])[0] == lam
    flat = torch.full((C,), 1.0 / C)  # every lambda predicts the same: the first one is kept
    assert post_hoc_both_priors(run, run["data_prior"], flat, [0.75, 0.0, 1.5])[0] == 0.75


def _reference_knn_gap(run, groups, k, t):
    def unit(x):
        x = np.asarray(x, float)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    bank, queries = run["val"], run["test"]
    sim = unit(queries["features"]) @ unit(bank["features"]).T
    k = min(k, sim.shape[1])
    scores = np.zeros((len(sim), C))
    for i, row in enumerate(sim):
        nearest = np.argsort(-row)[:k]
        np.add.at(scores[i], bank["labels"].numpy()[nearest], np.exp((row[nearest] - row.max()) / t))
    per_class = _per_class(scores.argmax(1), queries["labels"])
    groups = np.asarray(groups)
    return per_class[groups == 0].mean() - per_class[groups == 2].mean()


@pytest.mark.parametrize("k, t", [(200, 0.1), (20, 0.05), (3, 0.5)])
def test_ch3_knn_p_gap_matches_a_reference(k, t):
    from ch3_knn_p_gap import knn_p_gap

    run = _run(2)
    groups = lt.prior_groups(torch.rand(C, generator=torch.Generator().manual_seed(3)))
    # abs: lt_utils keeps per-class accuracies in float32
    assert knn_p_gap(run, groups, C, k=k, t=t) == pytest.approx(_reference_knn_gap(run, groups, k, t), abs=1e-4)


def test_ch3_knn_p_gap_refuses_a_bank_that_shares_samples_with_the_queries():
    from ch3_knn_p_gap import knn_p_gap

    run = _run(4)
    leaky = dict(run, val=dict(run["val"], ids=run["test"]["ids"][:C * PER_CLASS]))
    with pytest.raises(ValueError, match="shares"):
        knn_p_gap(leaky, lt.prior_groups(torch.rand(C)), C)


# --- chapter 4


def _members(signals=(0.5, 1.5, 3.0)) -> list[dict]:
    """LA-like members of distinct validation accuracy, on the same val / test labels."""
    return [_run(10 + i, signal) for i, signal in enumerate(signals)]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 1e6])
def test_ch4_accuracy_weights_match_a_softmax_of_val_accuracies(temperature):
    from ch4_accuracy_weights import accuracy_weights

    members = _members()
    accuracies = np.array([_accuracy(r["val"]["logits"], r["val"]["labels"]) for r in members])
    assert len(set(accuracies)) == len(members)  # distinct: the weights must tell them apart
    reference = np.exp((accuracies - accuracies.max()) / temperature)
    reference /= reference.sum()
    weights = accuracy_weights(members, temperature)
    np.testing.assert_allclose(np.asarray(weights, float), reference, rtol=1e-9, atol=1e-12)
    assert float(weights.sum()) == pytest.approx(1.0)
    if temperature == 1e6:
        np.testing.assert_allclose(np.asarray(weights, float), 1 / len(members), atol=1e-4)


def test_ch4_accuracy_weights_follow_val_not_test():
    from ch4_accuracy_weights import accuracy_weights

    members = _members()
    swapped = [dict(r, test=members[-1 - i]["test"]) for i, r in enumerate(members)]
    torch.testing.assert_close(accuracy_weights(swapped, 1.0), accuracy_weights(members, 1.0))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_ch4_fuse_ce_then_adjust_matches_a_reference(tau):
    from ch4_fuse_ce_then_adjust import fuse_ce_then_adjust

    members = _members()
    prior = members[0]["data_prior"]
    fused = fuse_ce_then_adjust(members, prior, tau=tau)
    mean = np.mean([np.asarray(r["test"]["logits"], float) for r in members], axis=0)
    reference = mean - tau * np.log(np.asarray(prior, float))
    np.testing.assert_allclose(np.asarray(fused, float), reference, rtol=1e-5, atol=1e-5)
    # the official code's sum of the logits predicts the same once it subtracts the prior M times
    summed = len(members) * (mean - tau * np.log(np.asarray(prior, float)))
    assert (np.asarray(fused).argmax(1) == summed.argmax(1)).all()


# --- chapter 5


def _results(seed: int = 0, seeds=range(6)) -> pd.DataFrame:
    """A fake `lt.headline_comparison` table: methods A, B, C per seed and P-groups source, rows shuffled."""
    gen = np.random.default_rng(seed)
    rows = [{"seed": s, "method": m, "P-groups from": source, "overall": 60 + gen.normal(shift, 1),
             "P-Few": 40 + gen.normal(shift, 2)}
            for s in seeds for m, shift in (("A", 1.0), ("B", 0.0), ("C", 0.0))
            for source in ("estimated", "true (per method)")]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _scipy_paired(d):
    d = np.asarray(d, float)
    flip = scipy.stats.permutation_test((d,), lambda x, axis=-1: np.mean(x, axis=axis), vectorized=True,
                                        permutation_type="samples", n_resamples=np.inf)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    sign = scipy.stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return dict(mean=d.mean(), wins=wins, p_sign=sign, p_flip=flip.pvalue)


@pytest.mark.parametrize("a, b, col, source", [("A", "B", "overall", "estimated"),
                                               ("B", "C", "P-Few", "true (per method)"),
                                               ("C", "A", "overall", "true (per method)")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ch5_paired_test_matches_scipy(a, b, col, source, seed):
    from ch5_paired_test import paired_test

    results = _results(seed)
    rows = results[results["P-groups from"] == source]
    d = (rows[rows.method == a].set_index("seed")[col].sort_index()
         - rows[rows.method == b].set_index("seed")[col].sort_index())
    reference = _scipy_paired(d.to_numpy())
    got = paired_test(results, a, b, col, source)
    assert got["seeds"] == 6 and got["A wins"] == reference["wins"]
    assert got["mean diff"] == pytest.approx(reference["mean"])
    assert got["p sign"] == pytest.approx(reference["p_sign"])
    assert got["p flip"] == pytest.approx(reference["p_flip"])


def test_ch5_paired_test_by_hand():
    from ch5_paired_test import paired_test

    table = pd.DataFrame({"seed": [2, 0, 1, 0, 1, 2, 3], "method": ["A", "A", "A", "B", "B", "B", "B"],
                          "P-groups from": "estimated", "overall": [13.0, 11.0, 12.0, 10.0, 10.0, 10.0, 99.0]})
    got = paired_test(table, "A", "B")  # d = 1, 2, 3 on seeds 0-2 (seed 3 lacks A: left out)
    assert got == {"mean diff": 2.0, "seeds": 3, "A wins": 3, "p sign": 0.25, "p flip": 0.25}
    tied = paired_test(table.assign(overall=10.0), "A", "B")
    assert tied["p sign"] == 1.0 and tied["p flip"] == 1.0 and tied["A wins"] == 0
    with pytest.raises(ValueError, match="no seed"):
        paired_test(table, "A", "Z")


def test_ch5_hardness_vs_prior_matches_a_reference():
    from ch5_hardness_vs_prior import hardness_vs_prior

    run = _run(20, signal=1.0)
    prior = torch.softmax(run["bias"] + 0.5 * torch.randn(C, generator=torch.Generator().manual_seed(21)), 0)
    got = hardness_vs_prior(run, prior)
    per_class = _per_class(np.asarray(run["test"]["logits"]).argmax(1), run["test"]["labels"])
    ranks = pd.DataFrame({"acc": per_class, "prior": np.asarray(prior, float)}).rank()  # ties: mean rank
    few = _terciles(prior) == 2
    assert got["rho"] == pytest.approx(np.corrcoef(ranks["acc"], ranks["prior"])[0, 1])
    assert got["rho"] > 0  # the bias that lowers a class's prior also lowers its accuracy
    assert got["P^-Few acc"] == pytest.approx(per_class[few].mean())
    assert got["other acc"] == pytest.approx(per_class[~few].mean())


# --- the starter cells run on synthetic stand-ins of the chapters' variables

MODELS = ("model-a", "model-b")


def _namespace_ch3() -> dict:
    est_prior = {m: torch.softmax(_run(30 + i)["bias"], 0) for i, m in enumerate(MODELS)}
    return dict(np=np, pd=pd, torch=torch, lt=lt, num_classes=C,
                cfg=types.SimpleNamespace(name="lab", models=MODELS, tau=1.0, seeds=(0,)),
                runs={(m, loss): _run(40 + 3 * i + j) for i, m in enumerate(MODELS)
                      for j, loss in enumerate(("ce", "la", "gla_train"))},
                zero_shot={m: _run(50 + i) for i, m in enumerate(MODELS)}, est_prior=est_prior,
                p_groups={m: lt.prior_groups(p) for m, p in est_prior.items()},
                true_groups={m: lt.prior_groups(torch.rand(C)) for m in MODELS})


def _namespace_ch4(starter: Starter) -> dict:
    la_runs = {m: _run(60 + i, 1.0 + i) for i, m in enumerate(MODELS)}
    ce_runs = {m: _run(70 + i, 1.0 + i) for i, m in enumerate(MODELS)}
    ns = dict(np=np, pd=pd, torch=torch, lt=lt, la_runs=la_runs, ce_runs=ce_runs,
              cfg=types.SimpleNamespace(name="lab", models=MODELS, tau=1.0, seeds=(0,)),
              labels=la_runs[MODELS[0]]["test"]["labels"], d_groups=torch.arange(C) * 3 // C,
              p_groups=lt.prior_groups(torch.rand(C)))
    # the chapter's own helpers `report` and `row`, as its cells define them
    helpers = [n for cell in _cells(4)[:starter.index] if cell["cell_type"] == "code"
               for n in ast.parse(_source(cell)).body if isinstance(n, ast.FunctionDef) and n.name in ("report", "row")]
    assert {n.name for n in helpers} == {"report", "row"}
    exec(compile(ast.Module(helpers, []), "chapter 4 helpers", "exec"), ns)
    ns["fused"] = {"logits": ns["report"](lt.backdoor_adjust([r["test"]["logits"] for r in la_runs.values()]))}
    ns["control"] = {"three backbones (CE, logit sum)":
                     ns["report"](lt.backdoor_adjust([r["test"]["logits"] for r in ce_runs.values()]))}
    return ns


def _namespace_ch5() -> dict:
    fake_lt = types.SimpleNamespace(**{name: getattr(lt, name) for name in lt.__all__})
    fake_lt.zero_shot = lambda cfg, model, progress=True: _run(80)
    fake_lt.estimate_pretrain_prior = lambda cfg, model: torch.softmax(_run(80)["bias"], 0)
    return dict(np=np, pd=pd, lt=fake_lt, results=_results(),
                cfg=types.SimpleNamespace(name="lab", models=MODELS, tau=1.0, seeds=tuple(range(6))),
                comparisons={"A vs B": ("A", "B", "overall", "estimated"),
                             "C vs B, true P-Few": ("C", "B", "P-Few", "true (per method)")})


def _namespace(starter: Starter) -> dict:
    ns = {3: _namespace_ch3, 4: lambda: _namespace_ch4(starter), 5: _namespace_ch5}[starter.chapter]()
    stand_ins = set(ns) - {"__builtins__"}
    assert stand_ins <= _bound_above(starter.chapter, starter.index), "stand-ins only for the chapter's own names"
    return ns


def _run_cell(starter: Starter, fill_in: bool) -> str:
    """Execute the starter cell on the stand-ins, as committed or with the solution's function in its place."""
    tree = ast.parse(starter.source)
    ns = _namespace(starter)
    if fill_in:
        tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == starter.func.name)]
        ns[starter.func.name] = _solution_function(starter)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(tree, str(starter), "exec"), ns)
    return out.getvalue()


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_starter_cell_prints_the_gap_as_committed(starter):
    assert _run_cell(starter, fill_in=False).strip() == starter.message


@pytest.mark.parametrize("starter", STARTERS, ids=str)
def test_starter_cell_runs_through_once_the_solution_is_filled_in(starter):
    printed = _run_cell(starter, fill_in=True)
    assert printed.strip() and "a solution:" not in printed and "nan" not in printed.lower(), printed
