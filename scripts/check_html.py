"""The rendered book as a reader sees it: open every page of the built HTML in headless Chromium, with no network,
and fail on anything a reader would meet broken.

    python scripts/check_html.py [--html _build/html] [--screenshots _build/screenshots]   # `make check-html`
    python scripts/check_html.py --self-test     # only prove that every check catches what it is for

A page fails when it
- shows an error output, a traceback or a docutils error message;
- has an image that does not load, or asks for anything from outside the build (a script, a font, an image:
  the book must render with no network, so requests that leave the local server are refused and reported);
- leaves math untypeset (MathJax is served from the build), or MathJax reports an error in a formula;
- shows a raw role such as {glue}` or {cite}`, or raw TeX delimiters in its text;
- links to a page or an anchor that does not exist (internal links and citations);
- scrolls sideways at 1280 px width: the page itself, or a code cell, output or table inside it;
- raises a JavaScript error.

Before the book, the script checks itself on small fabricated pages, one fault each (``--self-test`` does only
that), so a check that stopped catching its fault fails the run. A full-page screenshot of every page goes to
``--screenshots``. Chromium comes from Debian's ``chromium`` package: when it is missing, the script installs it with
apt-get (as root, or through sudo); no browser is downloaded from anywhere else. Playwright (a pip package of the
``dev`` extra) drives it.
"""
from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 900

# Run in the page after it has loaded and MathJax has finished: everything the checks need, as plain data.
_INSPECT = r"""
async () => {
  const main = document.querySelector("main") || document.body;
  // Text a reader sees outside code: raw roles and raw TeX are looked for here only.
  const prose = [];
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => n.parentElement.closest(
      "pre, code, script, style, mjx-container, .math, .highlight, textarea, .cell_input, nav"
    ) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT });
  while (walker.nextNode()) prose.push(walker.currentNode.nodeValue);

  for (const img of document.images) img.loading = "eager";
  await Promise.all([...document.images].map((img) => img.decode().catch(() => null)));
  const describe = (el) => {
    const cls = (el.className && el.className.baseVal === undefined) ? String(el.className) : "";
    return el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
      + (cls ? "." + cls.trim().split(/\s+/).join(".") : "")
      + ": " + (el.innerText || "").trim().slice(0, 60).replace(/\s+/g, " ");
  };
  const sideways = [];
  for (const el of main.querySelectorAll("*")) {
    const overflow = getComputedStyle(el).overflowX;
    if ((overflow === "auto" || overflow === "scroll") && el.scrollWidth > el.clientWidth + 1
        && el.clientWidth > 0) sideways.push(describe(el) + ` (${el.scrollWidth} > ${el.clientWidth} px)`);
  }
  const maths = [...document.querySelectorAll(".math")];
  return {
    prose: prose.join(" "),
    errors: [...document.querySelectorAll(
      ".output.error, .output.traceback, .system-message")]
      .map(describe).concat([...document.querySelectorAll(".cell_output")]
      .filter((el) => /Traceback \(most recent call last\)|\w+Error: /.test(el.innerText)).map(describe)),
    broken_images: [...document.images].filter((img) => !img.complete || img.naturalWidth === 0)
      .map((img) => img.getAttribute("src")),
    math_total: maths.length,
    math_untypeset: maths.filter((el) => !el.querySelector("mjx-container") && el.tagName !== "MJX-CONTAINER")
      .map((el) => el.textContent.trim().slice(0, 60)),
    math_errors: [...document.querySelectorAll("mjx-merror")].map((el) => el.getAttribute("data-mjx-error")
      || el.textContent.slice(0, 60)),
    mathjax: typeof window.MathJax === "object" && !!window.MathJax.startup,
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    page_width: document.documentElement.scrollWidth,
    viewport_width: document.documentElement.clientWidth,
    sideways: sideways,
  };
}
"""
_WAIT_MATHJAX = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
}"""

_RAW_ROLE = r"\{(glue|glue:[a-z]+|cite|cite:[a-z]+|numref|ref|doc|eq|term|download)\}`"
_RAW_TEX = r"\$[^$\s][^$]*\$|\\\(|\\\[|\\begin\{|\\frac\{|\\mathrm\{"


class _Ids(html.parser.HTMLParser):
    """Every id (and old-style anchor name) of an HTML file: the targets of its #fragment links."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


_REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["'][^"']*url=([^"']+)["']""", re.I)


def _redirect_target(path: Path) -> str | None:
    """The target of a page that only redirects (Sphinx's index.html to the root page), else None."""
    match = _REFRESH.search(path.read_text(encoding="utf-8", errors="replace")[:2000])
    return match.group(1).strip() if match else None


@functools.lru_cache(maxsize=None)
def _ids_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def broken_links(links: list[str], base: str, html_root: Path) -> list[str]:
    """The links of a page (absolute URLs) that point inside the book at a file or an anchor that does not exist.
    Links that leave the book (https://...) are not followed: the checked build has no network."""
    problems = []
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue
        parts = urlsplit(link)
        target = html_root / unquote(parts.path[len(urlsplit(base).path):])
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"link to a missing file: {link[len(base):]}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids_of(target):
            problems.append(f"link to a missing anchor: {link[len(base):]}")
    return problems


def page_problems(report: dict, outside: list[str], js_errors: list[str], missing: list[str],
                  base: str, html_root: Path) -> list[str]:
    """Everything wrong with one page, from what the browser saw (``report``: the result of _INSPECT)."""
    problems = [f"error output: {e}" for e in report["errors"]]
    problems += [f"image does not load: {src}" for src in report["broken_images"]]
    problems += [f"needs the network: {url}" for url in outside]
    problems += [f"file missing from the build: {url}" for url in missing]
    problems += [f"JavaScript error: {e}" for e in js_errors]
    if report["math_total"] and not report["mathjax"]:
        problems.append("MathJax did not load: every formula shows as raw TeX")
    problems += [f"math left untypeset: {m}" for m in report["math_untypeset"]]
    problems += [f"MathJax error in a formula: {m}" for m in report["math_errors"]]
    for pattern, what in ((_RAW_ROLE, "raw role"), (_RAW_TEX, "raw TeX")):
        for match in re.finditer(pattern, report["prose"]):
            start = max(match.start() - 30, 0)
            problems.append(f"{what} in the text: ...{report['prose'][start:match.end() + 30]}...")
    if report["page_width"] > report["viewport_width"]:
        problems.append(f"the page scrolls sideways: {report['page_width']} px wide in a "
                        f"{report['viewport_width']} px window")
    problems += [f"scrolls sideways: {s}" for s in report["sideways"]]
    problems += broken_links(report["links"], base, html_root)
    return problems


class _Server:
    """The built book on a loopback HTTP server (Chromium treats file:// pages differently from served ones)."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # Chromium drops connections it no longer needs: not an error of the page; anything else is printed
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def chromium() -> str:
    """The path of Debian's Chromium, installed with apt-get when it is missing."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if not shutil.which("apt-get"):
        raise SystemExit("error: no Chromium found and no apt-get to install it. Install Chromium (Debian/Ubuntu: "
                         "`apt-get install chromium`) and put it on PATH, or set $LT_CHROMIUM to its path.")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("check-html: installing Debian's chromium package (once) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(sudo + command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"error: `{' '.join(sudo + command)}` failed:\n{done.stderr[-2000:]}\nInstall Chromium "
                             "yourself (`sudo apt-get install chromium`) and rerun `make check-html`.")
    path = shutil.which("chromium")
    if not path:
        raise SystemExit("error: apt-get installed chromium but it is not on PATH.")
    return path


def _offline_route(base: str, outside: list[str]):
    """A route handler that serves the local book and refuses (and records) every request that leaves it."""
    def route(r, request):
        if request.url.startswith(base) or request.url.startswith("data:"):
            r.continue_()
        else:
            outside.append(f"{request.resource_type} {request.url}")
            r.abort()
    return route


def _check_page(browser, base: str, html_root: Path, rel: Path, screenshots: Path | None) -> tuple[list[str], str]:
    """(problems, a short note) of one page."""
    from playwright.sync_api import Error as PlaywrightError

    redirect = _redirect_target(html_root / rel)
    if redirect is not None:  # e.g. index.html -> the root page: only its target must exist
        return broken_links([urljoin(base + rel.as_posix(), redirect)], base, html_root), f"redirects to {redirect}"
    outside, missing, js_errors = [], [], []
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=1)
    try:
        page = context.new_page()
        page.route("**/*", _offline_route(base, outside))
        page.on("pageerror", lambda e: js_errors.append(str(e)))
        page.on("response", lambda r: r.status >= 400 and missing.append(f"{r.status} {r.url[len(base):]}"))
        try:
            page.goto(base + rel.as_posix(), wait_until="load")
            page.evaluate(_WAIT_MATHJAX)
            report = page.evaluate(_INSPECT)
        except PlaywrightError as err:
            return [f"the page could not be checked: {str(err).splitlines()[0]}"], "not checked"
        if screenshots is not None:
            shot = Path(screenshots) / (rel.with_suffix("").as_posix().replace("/", "__") + ".png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        problems = page_problems(report, outside, js_errors, missing, base, html_root)
        return problems, f"{report['math_total']} formulas, {len(report['links'])} links"
    finally:
        context.close()


def check_site(html_root: Path, pages: list[Path] | None = None, screenshots: Path | None = None,
               executable: str | None = None, progress=print) -> dict[str, list[str]]:
    """{page (relative path): problems} for every page of a built site."""
    from playwright.sync_api import sync_playwright

    html_root = Path(html_root).resolve()
    if pages is None:
        pages = sorted(p.relative_to(html_root) for p in html_root.rglob("*.html")
                       if not {"_static", "_sources", "_images"} & set(p.relative_to(html_root).parts))
    results = {}
    with _Server(html_root) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable or os.environ.get("LT_CHROMIUM") or chromium(),
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            for rel in pages:
                problems, note = _check_page(browser, server.base, html_root, rel, screenshots)
                results[rel.as_posix()] = problems
                progress(f"  {'FAIL' if problems else 'ok  '} {rel.as_posix()}  ({note})")
        finally:
            browser.close()
    return results


# --- self-test: one fabricated page per fault, and one clean page

_GOOD = """<!DOCTYPE html><html><head><meta charset="utf-8">{mathjax}</head><body><main>
<p id="top">Clean prose with math <span class="math notranslate nohighlight">\\(P_D(y)\\)</span>.</p>
<p><a href="good.html#top">an internal link</a> <img src="ok.svg" alt="ok"></p></main></body></html>"""

FAULTS = {
    "traceback": ('<div class="cell_output"><pre>Traceback (most recent call last):\nValueError: bad</pre></div>',
                  "error output"),
    "broken_image": ('<img src="missing.png" alt="x">', "image does not load"),
    "network": ('<img src="https://example.org/badge.svg" alt="x">', "needs the network"),
    # MathJax skips this formula (as it would a page it never loaded on)
    "untypeset": ('<div class="mathjax_ignore"><span class="math">\\(x^{2}\\)</span></div>', "math left untypeset"),
    "raw_role": ("<p>we gain {glue}`gain` points, see {cite}`chen2025`</p>", "raw role"),
    "raw_tex": ("<p>the prior $P_P(y)$ of the model</p>", "raw TeX"),
    "dead_link": ('<a href="nowhere.html">x</a> <a href="good.html#no-such-anchor">y</a>', "link to a missing"),
    "wide_page": ('<div style="width:2000px">wide</div>', "the page scrolls sideways"),
    "wide_code": ('<pre style="overflow-x:auto;width:300px">' + "x" * 400 + "</pre>", "scrolls sideways:"),
    "js_error": ("<script>undefinedFunctionOfTheBook()</script>", "JavaScript error"),
}


def self_test(executable: str | None = None, mathjax_dir: Path | None = None) -> list[str]:
    """Failures of the checker itself: a fabricated page with one fault each must be caught (with the right
    message), and a clean page, typeset by the book's MathJax, must pass. Returns what went wrong (empty: the
    checks work)."""
    mathjax_dir = mathjax_dir or mathjax_source()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        shutil.copytree(mathjax_dir, site / "mathjax")
        mathjax = '<script defer src="mathjax/tex-chtml.js"></script>'
        (site / "ok.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
        (site / "good.html").write_text(_GOOD.format(mathjax=mathjax))
        for name, (fault, _) in FAULTS.items():
            (site / f"{name}.html").write_text(_GOOD.format(mathjax=mathjax).replace("</main>", fault + "</main>"))
        results = check_site(site, executable=executable, progress=lambda *_: None)
    failures = []
    if results["good.html"]:
        failures.append(f"a clean page was reported: {results['good.html']}")
    for name, (_, expected) in FAULTS.items():
        if not any(expected in p for p in results[f"{name}.html"]):
            failures.append(f"the fault '{name}' was not caught (expected '{expected}'), got {results[f'{name}.html']}")
    return failures


def mathjax_source() -> Path:
    """The MathJax the book is built with: the files of the `sphinx-mathjax-offline` package (the `book` extra),
    which copies them into the build's _static/mathjax."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise SystemExit("error: the package sphinx-mathjax-offline is not installed: run `make install`.")
    return Path(spec.origin).parent / "static" / "mathjax"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built book")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--self-test", action="store_true", help="only check the checker on fabricated pages")
    args = parser.parse_args(argv)
    if not args.self_test and not (args.html / "index.html").is_file():
        print(f"error: no built book in {args.html}: run `make html` (after `make test` or `make book`) first.",
              file=sys.stderr)
        return 1
    executable = os.environ.get("LT_CHROMIUM") or chromium()
    failures = self_test(executable)
    for failure in failures:
        print(f"error: check-html itself is broken: {failure}", file=sys.stderr)
    if failures or args.self_test:
        print(f"check-html self-test: {len(FAULTS)} faults, {len(failures)} missed")
        return 1 if failures else 0
    print(f"check-html: every page of {args.html} in headless Chromium at {WIDTH} px, offline")
    if args.screenshots.exists():
        shutil.rmtree(args.screenshots)
    results = check_site(args.html, screenshots=args.screenshots, executable=executable)
    bad = {page: problems for page, problems in results.items() if problems}
    for page, problems in bad.items():
        print(f"\n{page}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    print(f"check-html: {len(results)} pages, {len(bad)} with problems; screenshots in {args.screenshots}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
