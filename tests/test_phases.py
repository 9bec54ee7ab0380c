"""lt_utils.phases: the phase profile behind benchmarks/bench_book.py."""
import inspect
import time

from lt_utils import metrics
from lt_utils.phases import phase, read_phase_log


def test_nothing_is_recorded_without_a_log(tmp_path, monkeypatch):
    monkeypatch.delenv("LT_PHASE_LOG", raising=False)
    monkeypatch.chdir(tmp_path)
    with phase("fine-tuning"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_phase_excludes_the_phases_nested_in_it(tmp_path, monkeypatch):
    log = tmp_path / "phases.jsonl"
    monkeypatch.setenv("LT_PHASE_LOG", str(log))
    start = time.perf_counter()
    with phase("fine-tuning"):
        time.sleep(0.05)
        with phase("evaluation"):
            time.sleep(0.1)
        with phase("evaluation"):
            time.sleep(0.1)
    wall = time.perf_counter() - start
    totals = read_phase_log(log)
    assert set(totals) == {"fine-tuning", "evaluation"}
    assert 0.2 <= totals["evaluation"] < 0.2 + 0.05
    assert 0.05 <= totals["fine-tuning"] < 0.1, "the nested evaluations are not counted twice"
    assert sum(totals.values()) <= wall


def test_a_decorated_function_keeps_its_signature_and_records_on_error(tmp_path, monkeypatch):
    assert "bank_feats" in inspect.signature(metrics.knn_predict).parameters
    log = tmp_path / "phases.jsonl"
    monkeypatch.setenv("LT_PHASE_LOG", str(log))

    @phase("kNN")
    def fails():
        raise ValueError("bad input")

    try:
        fails()
    except ValueError:
        pass
    assert set(read_phase_log(log)) == {"kNN"}
    assert read_phase_log(tmp_path / "none.jsonl") == {}
