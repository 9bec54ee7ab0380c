"""Bad input gets a clear error that says what to do: NaN/inf is an error, not a prediction; a kNN bank that
shares samples with its queries is refused; the CLI answers broken run folders, bad output paths and broken
checkpoints with a usage message (exit 2), never a traceback."""
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lt_utils as lt
import lt_utils.__main__ as cli
import lt_utils.models as models
from lt_utils.__main__ import main
from lt_utils.models import load_checkpoint, read_safetensors, save_checkpoint

NAN, INF = float("nan"), float("inf")


def logits_with(value, rows=(3,), n=10, c=4, seed=0):
    z = torch.randn(n, c, generator=torch.Generator().manual_seed(seed))
    for r in rows:
        z[r, 1] = value
    return z


# --------------------------------------------------------------------------------- NaN is not a prediction
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_accuracies_refuse_non_finite_logits(value):
    z, labels = logits_with(value, rows=(3, 7)), torch.arange(10) % 4
    for fn in (lt.metrics.per_class_accuracy, lt.accuracy):
        with pytest.raises(ValueError, match=r"logits_or_preds hold NaN or inf in 2 of 10 rows \(first: row 3\)"):
            fn(z, labels)
    with pytest.raises(ValueError, match=r"^logits hold NaN or inf in 2 of 10 rows \(first: row 3\)"):
        lt.accuracy_report(z, labels)
    # integer predictions have no NaN to check; good logits still work
    assert lt.accuracy(z[:3].argmax(1), labels[:3]) == lt.accuracy(z[:3], labels[:3])


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_backdoor_adjust_names_the_model_with_nan_logits(mode):
    zs = [logits_with(0.0, seed=s) for s in range(3)]
    zs[2] = logits_with(NAN, rows=(5,), seed=2)
    with pytest.raises(ValueError, match=r"model 2 hold NaN or inf in 1 of 10 rows \(first: row 5\)"):
        lt.backdoor_adjust(zs, mode=mode)
    with pytest.raises(ValueError, match=r"model 2 \('c'\) hold NaN"):
        lt.backdoor_adjust(dict(zip("abc", zs)), mode=mode)
    with pytest.raises(ValueError, match="model 2 hold NaN"):
        lt.backdoor_adjust(torch.stack(zs), mode=mode)


def test_knn_refuses_non_finite_features():
    g = torch.Generator().manual_seed(0)
    bank, labels, query = torch.randn(20, 4, generator=g), torch.arange(20) % 3, torch.randn(6, 4, generator=g)
    bad_bank = bank.clone()
    bad_bank[4, 0] = NAN  # one such row used to make every query's scores NaN
    with pytest.raises(ValueError, match=r"bank_feats hold NaN or inf in 1 of 20 rows \(first: row 4\)"):
        lt.knn_predict(bad_bank, labels, query)
    bad_query = query.clone()
    bad_query[[2, 5], 3] = INF
    with pytest.raises(ValueError, match=r"query_feats hold NaN or inf in 2 of 6 rows \(first: row 2\)"):
        lt.knn_predict(bank, labels, bad_query)


# ------------------------------------------------------------------------------- a kNN bank is not the test
def test_knn_refuses_a_bank_that_shares_samples_with_the_queries():
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(30, 8, generator=g), torch.arange(30) % 5
    bank_ids, query_ids = torch.arange(20), torch.arange(18, 30)  # samples 18 and 19 are in both
    with pytest.raises(ValueError, match="shares 2 samples with the queries") as err:
        lt.knn_predict(feats[:20], labels[:20], feats[18:], bank_ids=bank_ids, query_ids=query_ids)
    assert "disjoint" in str(err.value) and "val set as bank" in str(err.value)
    with pytest.raises(ValueError, match="disjoint"):
        lt.metrics.knn_accuracy(feats[:20], labels[:20], feats[18:], labels[18:], bank_ids=bank_ids,
                                query_ids=query_ids.tolist())
    # disjoint ids: the same scores as without ids
    scores = lt.knn_predict(feats[:20], labels[:20], feats[20:], k=5, bank_ids=bank_ids, query_ids=range(20, 30))
    assert torch.equal(scores, lt.knn_predict(feats[:20], labels[:20], feats[20:], k=5))
    with pytest.raises(ValueError, match="both"):
        lt.knn_predict(feats[:20], labels[:20], feats[20:], bank_ids=bank_ids)
    with pytest.raises(ValueError, match="one id per query"):
        lt.knn_predict(feats[:20], labels[:20], feats[20:], bank_ids=bank_ids, query_ids=torch.arange(20, 25))
    with pytest.raises(ValueError, match="integer"):
        lt.knn_predict(feats[:20], labels[:20], feats[20:], bank_ids=bank_ids.float(),
                       query_ids=torch.arange(20, 30))


# ------------------------------------------------------------------------------------------ the CLI's input
def fake_run(folder, logits=None, **drop):
    """A run folder as `train` writes it (6 test samples, 3 classes); ``drop`` entries are left out."""
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) if logits is None else logits
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    run = dict(model="m", val=dict(logits=logits, labels=labels), test=dict(logits=logits, labels=labels),
               class_counts=torch.tensor([150, 50, 5]), pretrain_prior_estimate=torch.tensor([0.5, 0.3, 0.2]))
    for key in drop:
        run.pop(key)
    folder.mkdir(parents=True)
    lt.cache.atomic_torch_save(run, folder / "logits.pt")
    return str(folder)


def usage_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"usage: python -m lt_utils {argv[0]}" in err and "Traceback" not in err
    return err.split("error: ", 1)[1]


def test_eval_with_nan_logits_is_an_error_not_an_accuracy(tmp_path, capsys):
    good = fake_run(tmp_path / "good")
    bad = fake_run(tmp_path / "bad", logits=logits_with(NAN, rows=(4,), n=6, c=3))
    message = usage_error(["eval", "--runs", good, bad], capsys)
    assert bad in message and "NaN" in message and "1 of 6 rows" in message and "row 4" in message


def test_eval_refuses_broken_run_folders(tmp_path, capsys):
    good = fake_run(tmp_path / "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no logits.pt" in usage_error(["eval", "--runs", good, str(empty)], capsys)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "logits.pt").write_bytes(b"not a torch file")
    message = usage_error(["eval", "--runs", good, str(garbage)], capsys)
    assert str(garbage / "logits.pt") in message and "train" in message
    no_test = fake_run(tmp_path / "no_test", test=None)
    message = usage_error(["eval", "--runs", good, no_test], capsys)
    assert "lacks 'test'" in message and no_test in message
    tensor = tmp_path / "tensor"
    tensor.mkdir()
    torch.save(torch.zeros(3), tensor / "logits.pt")
    assert "not a run" in usage_error(["eval", "--runs", str(tensor)], capsys)


def test_bad_output_paths_are_usage_errors_before_any_work(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    message = usage_error(["eval", "--runs", run, "--out", str(tmp_path)], capsys)
    assert "is a folder" in message
    message = usage_error(["eval", "--runs", run, "--out", str(tmp_path / "file" / "sub" / "e.json")], capsys)
    assert str(tmp_path / "file") in message and "not a folder" in message
    monkeypatch.setattr(cli, "fine_tune", lambda *a, **k: pytest.fail("trained before checking --out"))
    monkeypatch.setattr(cli, "estimate_pretrain_prior", lambda *a, **k: pytest.fail("worked before checking --out"))
    assert "is a file" in usage_error(["train", "--model", "lab-clip", "--out", str(tmp_path / "file")], capsys)
    assert "is a folder" in usage_error(["estimate-prior", "--model", "lab-clip", "--out", str(tmp_path)], capsys)


def test_unwritable_output_is_a_usage_error(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "run")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out.json"))

    monkeypatch.setattr(cli, "atomic_write_text", refuse)
    message = usage_error(["eval", "--runs", run, "--out", str(tmp_path / "out.json")], capsys)
    assert "could not write" in message and "Permission denied" in message


# ------------------------------------------------------------------------------------------- checkpoints
def saved_checkpoint(tmp_path):
    module = nn.Linear(3, 2)
    return save_checkpoint(tmp_path / "clf.safetensors", module), module


@pytest.mark.parametrize("metadata, message", [
    (None, "has no lt_utils metadata"),
    ({"lt_utils": "{not json"}, "not valid JSON"),
    ({"lt_utils": "[1, 2]"}, "not a JSON object"),
])
def test_checkpoint_with_broken_metadata_names_the_file(tmp_path, metadata, message):
    path, module = saved_checkpoint(tmp_path)
    tensors, _ = read_safetensors(path)
    save_file(tensors, str(path), metadata=metadata)
    for read in (lambda: load_checkpoint(path, module), lambda: read_safetensors(path)):
        with pytest.raises(ValueError, match=message) as err:
            read()
        assert str(path) in str(err.value)
    if metadata is None:
        assert models._lt_metadata(path) is None  # a plain safetensors file: open_clip's, maybe
    else:
        with pytest.raises(ValueError, match=message):
            models._lt_metadata(path)


def test_cli_with_a_metadata_less_checkpoint_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "weights.safetensors"
    save_file({"visual.x": torch.zeros(2)}, str(weights))  # no lt_utils metadata
    monkeypatch.setitem(models.FOUNDATION_MODELS, "lab-mine", models.FOUNDATION_MODELS["lab-clip"])
    monkeypatch.setitem(models._LOCAL_WEIGHTS, "lab-mine", weights)
    message = usage_error(["estimate-prior", "--model", "lab-mine"], capsys)
    assert str(weights) in message and "has no lt_utils metadata" in message
