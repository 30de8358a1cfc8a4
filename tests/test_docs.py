"""The reference site's contract, checked in the suite: examples run, public names are documented, links hold.

The site itself (``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``, run by
``.ci/run``) is built from the same pages and fails on the same missing docstrings; these tests give
the answer in seconds, module by module.
"""

from __future__ import annotations

import doctest
import importlib
import io
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
import api_pages  # noqa: E402 (docs/api_pages.py: the module walk the site uses)

sys.path.remove(str(REPO / "docs"))

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _all_modules():
    import pkgutil

    import lightning_ftprop

    walked = [info.name for info in pkgutil.walk_packages(lightning_ftprop.__path__, "lightning_ftprop.")]
    return ["lightning_ftprop"] + sorted(walked)


@pytest.fixture
def restored_registries():
    """Examples may register rules or recognisers; the rest of the suite sees the registries unchanged."""
    from lightning_ftprop import kinds, recognise, rules

    saved_rules = dict(rules._REGISTRY)
    saved_kinds = dict(kinds.KINDS)
    saved_recognisers = recognise.registered_activations()
    yield
    rules._REGISTRY.clear()
    rules._REGISTRY.update(saved_rules)
    kinds.KINDS.clear()
    kinds.KINDS.update(saved_kinds)
    for key in set(recognise.registered_activations()) - set(saved_recognisers):
        recognise.unregister_activation(key)


@pytest.mark.parametrize("module_name", _all_modules())
def test_docstring_examples_run_and_print_what_they_show(module_name, restored_registries, tmp_path, monkeypatch):
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.examples]
    if not tests:
        pytest.skip(f"{module_name} has no examples")
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here...
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # ...or in tempfile.mkdtemp(), here too
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    try:
        for test in tests:
            runner.run(test, out=report.write)
    finally:
        torch.set_num_threads(threads)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, report.getvalue()


def _pycon_blocks(page: Path):
    """The ```pycon blocks of a guide: examples meant to run, as doctests."""
    return re.findall(r"```pycon\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md") if _pycon_blocks(p)))
def test_guide_examples_run_as_doctests(page, restored_registries, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser, runner, report = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=OPTIONS), io.StringIO()
    for i, block in enumerate(_pycon_blocks(REPO / "docs" / page)):
        runner.run(parser.get_doctest(block, {}, f"{page}[{i}]", page, 0), out=report.write)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, report.getvalue()


def test_units_guide_holds_the_ternary_example():
    assert any("class Ternary(UnitKind)" in block for block in _pycon_blocks(REPO / "docs" / "units.md"))


def test_every_public_module_class_and_function_has_a_docstring():
    missing = api_pages.missing_docstrings()  # the same list fails the site's strict build
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_class_and_function_has_an_example():
    missing = [
        f"{module}.{name}" for module, name, obj in api_pages.public_objects() if ">>>" not in (obj.__doc__ or "")
    ]
    assert not missing, f"public classes and functions without a '>>>' example: {missing}"


def test_api_pages_list_every_public_module_and_document_each_object_once():
    modules = api_pages.public_modules()
    assert "lightning_ftprop.rules" in modules and "lightning_ftprop.data.idx" in modules
    assert not [m for m in modules if "._" in m]  # private modules stay out
    page = api_pages.module_page("lightning_ftprop")
    assert ":py:obj:`~lightning_ftprop.rules.get_rule`" in page  # a re-export links to its home entry
    assert api_pages.documented_target("lightning_ftprop.FTPropCallback") == "lightning_ftprop.callback.FTPropCallback"
    assert (
        api_pages.documented_target("ThresholdUnit", "lightning_ftprop.convert") == "lightning_ftprop.nn.ThresholdUnit"
    )


def test_guides_and_readme_link_only_to_files_that_exist():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_package_map_in_units_guide_names_every_public_top_level_module():
    import pkgutil

    import lightning_ftprop

    table = (REPO / "docs" / "units.md").read_text().split("## Package layout")[1].split("\n## ")[0]
    named = set(re.findall(r"`(?:lightning_ftprop)?\.(\w+)`", table))
    modules = {info.name for info in pkgutil.iter_modules(lightning_ftprop.__path__) if not info.name.startswith("_")}
    assert not modules - named, f"docs/units.md's package map omits {sorted(modules - named)}"


def test_package_docstring_names_every_module_that_import_loads():
    import subprocess

    probe = "import sys, lightning_ftprop; print(' '.join(sorted(m.split('.')[1] for m in sys.modules "
    probe += "if m.startswith('lightning_ftprop.') and not m.split('.')[1].startswith('_'))))"  # private helpers aside
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    import lightning_ftprop

    sentence = lightning_ftprop.__doc__.split("``import lightning_ftprop`` loads")[1].split(".")[0]
    assert loaded.stdout.split() and all(name in sentence for name in loaded.stdout.split()), (loaded.stdout, sentence)
