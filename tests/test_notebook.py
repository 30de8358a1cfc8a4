"""notebooks/quickstart.ipynb: committed with the outputs of a full run, and a fresh run still works.

``scripts/execute_notebook.py`` produces the committed outputs; the fresh run here uses the same
``execute`` function: a real Jupyter kernel on this interpreter (a kernelspec written into a temp dir
by ``ipykernel``'s ``write_kernel_spec``), in a temp working directory where the notebook writes its
logs and figure.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
LAYERS = ("act1", "act2", "act3")
STATS = ("mismatch", "ignored", "saturated", "loss")


def _execute_script():
    spec = importlib.util.spec_from_file_location("execute_notebook", REPO / "scripts" / "execute_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _check_summary_and_accuracies(printed: str) -> None:
    # Both models trained and were tested; the accuracies are well above chance (10%).
    match = re.search(r"test accuracy: ReLU (\d\.\d{3}) \| sign \+ FTP-SH (\d\.\d{3})", printed)
    assert match, printed
    relu_acc, sign_acc = float(match.group(1)), float(match.group(2))
    assert 0.3 < relu_acc <= 1.0 and 0.3 < sign_acc <= 1.0
    # The callback converted the notebook's own ReLU model: the summary lists three sign layers.
    assert "total: 3 threshold layers" in printed
    for layer in LAYERS:
        assert re.search(rf"^{layer}\s+sign\s+2 \(1\)\s+soft_hinge\s", printed, flags=re.MULTILINE), printed
        assert re.search(rf"^{layer}: mismatch=0\.\d{{3}} ignored=", printed, flags=re.MULTILINE)


def test_committed_quickstart_notebook_holds_the_outputs_of_one_full_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # one run, in order
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure is stored
    _check_summary_and_accuracies(_text_outputs(nb))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_notebook_trains_both_models_and_plots_the_logged_diagnostics(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    _execute_script().execute(nb, workdir)  # clears the stored outputs first; raises if a cell fails

    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # every cell ran afresh
    printed = _text_outputs(nb)
    _check_summary_and_accuracies(printed)

    # The figure was written and displayed.
    png = workdir / "quickstart-output" / "ftprop_diagnostics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))

    # The CSV log the notebook plotted holds every layer's statistics at steps 0, 5, 10, ...
    with open(workdir / "quickstart-output" / "sign_soft_hinge" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for layer in LAYERS:
        for stat in STATS:
            key = f"ftprop/{layer}/{stat}"
            logged = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
            assert len(logged) >= 2 and all(step % 5 == 0 for step, _ in logged), key
            if stat != "loss":
                assert all(0.0 <= value <= 1.0 for _, value in logged), key
    # The baseline run logged no ftprop statistics: it has no threshold units.
    with open(workdir / "quickstart-output" / "relu" / "version_0" / "metrics.csv") as handle:
        assert not [key for key in next(csv.reader(handle)) if key.startswith("ftprop/")]
