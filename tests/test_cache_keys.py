"""Cache keys survive unrelated edits: a cached computation is keyed on the source of the modules whose code it
runs (declared at each call and checked here by tracing), so editing a plot keeps a student's runs while editing
the training loop recomputes them."""
import shutil

import pytest

import lt_utils as lt
import lt_utils.cache as cache
import lt_utils.runs as runs


def test_every_cached_lab_computation_declares_the_modules_it_runs(tiny_lab, trace_cached):
    profile = lt.profile("lab")
    with trace_cached() as trace:
        lt.fine_tune(profile, "lab-clip", loss="gla_train", seed=0, epochs=1, progress=False)
    kinds = {r["kind"] for r in trace.records}
    assert kinds == {"zeroshot", "finetune", "lab_pretrain", "lab_world"}
    assert trace.undeclared() == {}
    finetune = next(r for r in trace.records if r["kind"] == "finetune")
    assert {"training", "lab", "peft", "losses"} <= finetune["executed"]  # the tracer sees real work
    assert not finetune["declared"] & {"plots", "experiments", "explain", "__main__"}


class Retrained(Exception):
    pass


def test_an_unrelated_edit_keeps_the_run_and_a_training_edit_recomputes_it(tiny_lab, tmp_path, monkeypatch):
    profile = lt.profile("lab")
    first = lt.fine_tune(profile, "lab-clip", seed=0, epochs=1, progress=False)
    source = tmp_path / "lt_utils_src"  # an edited copy of the package's source, as after a `git pull`
    shutil.copytree(cache._PACKAGE_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_PACKAGE_DIR", source)

    def train(*args, **kwargs):
        raise Retrained

    monkeypatch.setattr(runs, "train", train)
    for unrelated in ("plots.py", "experiments.py", "explain.py", "__main__.py", "backdoor.py"):
        path = source / unrelated
        path.write_text(path.read_text() + "\n# an edit that changes no result\n")
    again = lt.fine_tune(profile, "lab-clip", seed=0, epochs=1, progress=False)  # loaded: train() not called
    assert again["test"]["logits"].equal(first["test"]["logits"])
    path = source / "training.py"
    path.write_text(path.read_text() + "\n# an edit to the training loop\n")
    with pytest.raises(Retrained):
        lt.fine_tune(profile, "lab-clip", seed=0, epochs=1, progress=False)


def test_the_version_constant_and_the_key_are_part_of_the_digest(monkeypatch):
    digest = cache.cache_key(dict(a=1), ["training"])
    assert cache.cache_key(dict(a=2), ["training"]) != digest
    assert cache.cache_key(dict(a=1), ["training", "plots"]) != digest
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert cache.cache_key(dict(a=1), ["training"]) != digest
    with pytest.raises(ValueError, match="not a module of lt_utils"):
        cache.cache_key(dict(a=1), ["no_such_module"])
