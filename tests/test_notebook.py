"""notebooks/quickstart.ipynb runs top to bottom in a real Jupyter kernel and produces what it promises.

The kernel is started from a kernelspec written into a temp dir with ``ipykernel``'s
``write_kernel_spec``, whose ``argv`` is this interpreter (``sys.executable``), so the test needs no
globally installed kernelspec and always runs the venv that runs pytest. The kernel's working
directory is a temp dir, where the notebook writes its logs and figure.
"""

from __future__ import annotations

import csv
import os
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


def _kernel_manager(spec_root: Path):
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    name = "lightning-ftprop-test"
    write_kernel_spec(path=spec_root / name)  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    specs = KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False)
    return KernelManager(kernel_name=name, kernel_spec_manager=specs)


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_committed_quickstart_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.timeout(600)
def test_quickstart_notebook_trains_both_models_and_plots_the_logged_diagnostics(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this checkout
    # One intra-op thread: on a shared 2-core machine two OpenMP threads per op made the notebook's
    # training 20-30x slower (measured here: 30-44 s per model instead of 1.3 s with one thread).
    env["OMP_NUM_THREADS"] = "1"
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path / "kernels"),
        timeout=300,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)  # raises CellExecutionError, with the traceback, if any cell fails

    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    printed = _text_outputs(nb)

    # Both models trained and were tested; the accuracies are well above chance (10%).
    match = re.search(r"test accuracy: ReLU (\d\.\d{3}) \| sign \+ FTP-SH (\d\.\d{3})", printed)
    assert match, printed
    relu_acc, sign_acc = float(match.group(1)), float(match.group(2))
    assert 0.3 < relu_acc <= 1.0 and 0.3 < sign_acc <= 1.0

    # The callback converted the notebook's own ReLU model: the summary lists three sign layers.
    assert "total: 3 threshold layers" in printed
    for layer in LAYERS:
        assert re.search(rf"^{layer}\s+sign\s+2 \(1\)\s+soft_hinge\s", printed, flags=re.MULTILINE), printed

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
        assert re.search(rf"^{layer}: mismatch=0\.\d{{3}} ignored=", printed, flags=re.MULTILINE)
    # The baseline run logged no ftprop statistics: it has no threshold units.
    with open(workdir / "quickstart-output" / "relu" / "version_0" / "metrics.csv") as handle:
        assert not [key for key in next(csv.reader(handle)) if key.startswith("ftprop/")]
