"""scripts/check_html.py (`make check-html`): the checks that need no browser, on fabricated reports and files.
The browser checks prove themselves on fabricated pages each time `make check-html` runs (its self-test); here
that self-test runs too where Chromium and Playwright are installed."""
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_html  # noqa: E402

BASE = "http://127.0.0.1:8000/"


def _site(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "index.html").write_text('<html><body><h1 id="top">x</h1><a name="old"></a></body></html>')
    (tmp_path / "book" / "ch.html").write_text('<html><body><section id="the-3x3-matrix">x</section></body></html>')
    return tmp_path


def _report(**changes):
    report = dict(prose="", errors=[], broken_images=[], math_total=0, math_untypeset=[], math_errors=[],
                  mathjax=True, links=[], page_width=1280, viewport_width=1280, sideways=[])
    report.update(changes)
    return report


def test_links_to_existing_pages_and_anchors_pass(tmp_path):
    site = _site(tmp_path)
    links = [BASE + "index.html#top", BASE + "index.html#old", BASE + "book/ch.html#the-3x3-matrix", BASE,
             "https://arxiv.org/abs/2501.15955"]
    assert check_html.broken_links(links, BASE, site) == []


def test_a_missing_page_or_anchor_is_reported(tmp_path):
    site = _site(tmp_path)
    problems = check_html.broken_links([BASE + "book/nope.html", BASE + "book/ch.html#no-such-id"], BASE, site)
    assert problems == ["link to a missing anchor: book/ch.html#no-such-id",
                        "link to a missing file: book/nope.html"]


def test_a_clean_report_has_no_problem(tmp_path):
    assert check_html.page_problems(_report(prose="P_D and P_P, 35/35/30 classes"), [], [], [], BASE, tmp_path) == []


@pytest.mark.parametrize("changes, expected", [
    (dict(prose="we gain {glue}`gain` points"), "raw role"),
    (dict(prose="see {cite}`chen2025` for"), "raw role"),
    (dict(prose="the prior $P_P(y)$ is"), "raw TeX"),
    (dict(prose=r"the prior \(P_P\) is"), "raw TeX"),
    (dict(math_total=3, mathjax=False), "MathJax did not load"),
    (dict(math_untypeset=["x^2"]), "math left untypeset"),
    (dict(math_errors=["Undefined control sequence"]), "MathJax error"),
    (dict(errors=["div.output.error: ValueError"]), "error output"),
    (dict(broken_images=["_images/x.png"]), "image does not load"),
    (dict(page_width=1400), "the page scrolls sideways"),
    (dict(sideways=["pre: x (900 > 700 px)"]), "scrolls sideways: pre"),
])
def test_each_fault_in_a_report_is_named(tmp_path, changes, expected):
    problems = check_html.page_problems(_report(**changes), [], [], [], BASE, tmp_path)
    assert len(problems) == 1 and expected in problems[0], problems


def test_network_requests_missing_files_and_script_errors_are_named(tmp_path):
    problems = check_html.page_problems(_report(), ["script https://cdn.example/mathjax.js"], ["ReferenceError: f"],
                                        ["404 _static/x.css"], BASE, tmp_path)
    assert [p.split(":")[0] for p in problems] == ["needs the network", "file missing from the build",
                                                   "JavaScript error"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_browser_checks_catch_every_fabricated_fault():
    pytest.importorskip("playwright")
    assert check_html.self_test() == []


def test_server_is_quiet_about_dropped_connections_only(tmp_path, capsys):
    with check_html._Server(tmp_path) as server:
        for error in (BrokenPipeError(), ConnectionResetError(), ValueError("a real fault")):
            try:
                raise error
            except Exception:  # as socketserver calls handle_error: inside the except block
                server.httpd.handle_error(None, ("127.0.0.1", 1))
    printed = capsys.readouterr().err
    assert "ValueError: a real fault" in printed
    assert "BrokenPipeError" not in printed and "ConnectionResetError" not in printed
