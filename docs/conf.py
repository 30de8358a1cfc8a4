"""Sphinx configuration of the lightning_ftprop reference site.

Build it strictly (what ``.ci/run`` runs)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

* The API pages are generated at build time, one per public module found by walking the package
  (``docs/_api/``, not committed), so a new module appears without editing anything here.
* Strict: ``-W`` turns every warning into an error, ``-n`` reports every cross-reference that does not
  resolve (references into other projects are exempt: the build runs offline, without intersphinx), and
  :func:`_require_docstrings` warns about every public module, class or function without a docstring.
* The guides are the Markdown files beside this one (myst-parser); the quickstart notebook is rendered
  with its stored outputs and never re-executed (myst-nb, ``nb_execution_mode = "off"``).
"""

from __future__ import annotations

import importlib
import logging as pylogging
import sys
from pathlib import Path

from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

import api_pages  # noqa: E402 (docs/api_pages.py, beside this file)

project = "lightning-ftprop"
author = "the lightning-ftprop developers"
copyright = "2026, " + author
release = importlib.import_module("lightning_ftprop").__version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
html_theme = "alabaster"
html_title = "lightning-ftprop"

# Notebooks are shown as committed (outputs included); the build never runs them.
nb_execution_mode = "off"
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
autodoc_inherit_docstrings = False  # an overridden Lightning hook without its own docstring stays out
autosummary_generate = False  # the pages come from api_pages.write_pages
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = True
# The build is offline (no intersphinx), so names in other projects cannot resolve; ours must.
nitpick_ignore_regex = [(r"py:.*", api_pages.EXTERNAL_TARGET)]

_log = logging.getLogger("lightning_ftprop.docs")


class _RepositoryFileLinks(pylogging.Filter):
    """Let a guide link to a file of the repository outside the site (``../benchmarks/RESULTS.md``).

    myst reports such a link as an unknown document; where the file exists the link is fine on
    GitHub, where the guides are also read, so the warning is dropped. A link to a file that exists
    nowhere still fails the build.
    """

    def filter(self, record: pylogging.LogRecord) -> bool:
        message = record.getMessage()
        prefix = "Unknown source document '"
        if not message.startswith(prefix):
            return True
        target = Path(message[len(prefix) :].split("'")[0])
        return not any(candidate.is_file() for candidate in (target, target.with_suffix(".md")))


def _require_docstrings(app) -> None:
    """A public module, class or function without a docstring fails the strict build."""
    for name in api_pages.missing_docstrings():
        _log.warning(f"{name} is public and has no docstring; every public module, class and function needs one")


_DATA_DOCS: dict = {}


def _keep_data_docstring(app, what, name, obj, options, lines) -> None:
    """Napoleon reads ``text: more`` on a constant or property as ``type: description``; keep the text as written."""
    if what in ("data", "attribute", "property"):
        _DATA_DOCS[name] = list(lines)


def _restore_data_docstring(app, what, name, obj, options, lines) -> None:
    if name in _DATA_DOCS:
        lines[:] = _DATA_DOCS.pop(name)


def _resolve_reexport(app, env, node, contnode):
    """Resolve ``lightning_ftprop.X`` (a re-export) or a short name to the entry that documents it."""
    if node.get("refdomain") != "py":
        return None
    target = api_pages.documented_target(node.get("reftarget", ""), node.get("py:module") or "")
    if target is None:
        return None
    found = env.get_domain("py").resolve_any_xref(env, node["refdoc"], app.builder, target, node, contnode)
    return found[0][1] if found else None


def _write_api_pages(app) -> None:
    api_pages.write_pages(Path(app.srcdir) / "_api")


def setup(app):
    app.connect("builder-inited", _write_api_pages)
    app.connect("autodoc-process-docstring", _keep_data_docstring, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _restore_data_docstring, priority=600)
    app.connect("builder-inited", _require_docstrings)
    app.connect("missing-reference", _resolve_reexport)
    for handler in pylogging.getLogger("sphinx").handlers:
        handler.filters.insert(0, _RepositoryFileLinks())
