"""The book's protocol and claims, checked in the chapters' own text and code: choices made on validation, criteria
that do not reuse the estimate a method adds, no result stated that the data did not compute, no claim the paper
card does not support (issue: every number the book prints can be trusted).

The text of a chapter is its Markdown cells and its prose cells: the code cells that format the paragraphs about
the run's numbers and show them with ``lt.show_markdown`` (tests/test_colab_prose.py checks their form)."""
import json
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"


def _is_prose(cell) -> bool:
    return cell["cell_type"] == "code" and "lt.show_markdown(" in "".join(cell["source"])


def _cells(name: str, kind: str) -> str:
    """The source of a chapter's cells of one kind: ``"markdown"``, ``"code"`` or ``"text"`` (the Markdown cells and
    the prose cells, whitespace collapsed: a prose cell's sentences are wrapped and indented inside its code)."""
    nb = json.loads((BOOK / f"{name}.ipynb").read_text())
    if kind == "text":
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown" or _is_prose(c))
        return " ".join(text.split())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind)


def _all_markdown() -> str:
    """Every chapter's text (Markdown and prose cells) in one line."""
    return " ".join(_cells(p.stem, "text") for p in sorted(BOOK.glob("[0-9r]*.ipynb")))


def test_the_text_includes_the_prose_cells():
    text = _cells("01_data_imbalance", "text")
    assert "What the lab shows" in text and "classical long-tail result" in text  # a prose cell's sentence
    assert "## Summary" in text  # and the Markdown
    assert "{glue:" not in _all_markdown()


@pytest.mark.parametrize("claim", [
    "the reviewers asked",            # ch. 4: no such request in the paper card
    "did not try",                    # ch. 3: the paper's post-hoc GLA is a post-hoc correction too
    "; it cannot change the features",  # ch. 3: false for training-time LA / GLA-Train
    "reports no CIFAR-100-LT result",  # we only know of none
    "for CLIP on ImageNet-LT",        # Fig. 1-3 are not placed on a named dataset by the card
    "least well for the model with the flattest prior",  # a fixed sentence: now computed
    "most for a model whose true prior is flat",         # a fixed sentence: now computed
    "The losses re-weight the classifier; they barely change",  # a fixed sentence: now computed
])
def test_no_unsupported_or_fixed_claim(claim):
    assert claim not in _all_markdown()


def test_the_best_single_model_is_chosen_on_validation():
    for name in ("04_backdoor_adjustment",):
        code = _cells(name, "code")
        line = next(l for l in code.splitlines() if l.startswith("best_single = max("))
        assert '["val"]' in line and '"test"' not in line


def test_prior_corrections_are_not_judged_on_their_own_estimate():
    code = _cells("05_beyond_the_paper", "code")
    assert '"GLA-Train vs LA": (f"GLA-Train ({main})", f"LA ({main})", "overall"' in code
    assert '"post-hoc vs LA": (f"LA + post-hoc ({main})", f"LA ({main})", "overall"' in code
    assert '"true (per method)"' in code
    ch3 = _cells("03_logit_adjustment_fails", "code")
    assert "true_groups" in ch3 and "versus_la" in ch3


def test_the_knn_settings_are_credited_to_the_code_not_to_tab_4():
    text = _cells("03_logit_adjustment_fails", "text")
    assert "settings of the kNN code in the paper's repository" in text


def test_the_post_hoc_gla_of_the_paper_is_explained():
    text = _cells("03_logit_adjustment_fails", "text")
    assert "also adds the zero-shot model's logits" in text and "+4.8" in text


def test_lift_reference_is_labelled_with_its_test_time_ensembling():
    assert "five-crop test-time ensembling" in _cells("01_data_imbalance", "text")
    assert "five-crop test-time ensembling" in _cells("results", "text")
