"""A local Sphinx extension for the book's HTML (named in _config.yml under sphinx.local_extensions).

- Every page declared sphinx-thebe's inline configuration (``const THEBE_JS_URL``) twice, a JavaScript error on
  every page (Jupyter Book 1.x adds it once per read of the sources; `make check-html` caught it): identical
  scripts are kept once.
- ``static/book.css``: code, printed output and tables fit the text column at 1280 px instead of scrolling
  sideways (the notebooks keep code lines to 88 characters, tests/test_notebook_style.py).
"""
from pathlib import Path


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # file name (None and "" both mean an inline script), priority and attributes, the inline body included
        key = (getattr(script, "filename", script) or "", getattr(script, "priority", 0),
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def _add_static(app):
    app.config.html_static_path.append(str(Path(__file__).resolve().parent / "static"))


def setup(app):
    app.connect("builder-inited", _add_static)
    # late (priority 900): after the extensions that add their scripts on this event
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    app.add_css_file("book.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
