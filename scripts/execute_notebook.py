"""Re-run notebooks/quickstart.ipynb top to bottom and store it with its outputs (offline, seconds on a CPU).

    python scripts/execute_notebook.py                 # rewrites notebooks/quickstart.ipynb in place
    python scripts/execute_notebook.py --check         # runs a fresh copy, writes nothing; exit 1 on error

The kernel is this interpreter (a kernelspec written to a temp dir, so no installed kernelspec is
needed) with this checkout first on PYTHONPATH and one intra-op thread. It runs in a temp dir, where
the notebook writes its logs and figure; the figure reaches the notebook as a displayed PNG. Cell
timings are not recorded, so a re-run changes only what the run itself changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def kernel_manager(spec_root: Path):
    """A KernelManager whose kernel runs ``sys.executable -m ipykernel_launcher``."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    name = "lightning-ftprop"
    write_kernel_spec(path=spec_root / name)
    specs = KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False)
    return KernelManager(kernel_name=name, kernel_spec_manager=specs)


def execute(nb, workdir: Path, timeout: int = 300):
    """Clear ``nb``'s outputs, run every cell in ``workdir`` and return ``nb`` with the new outputs.

    Raises nbclient's CellExecutionError, with the traceback, if a cell fails.
    """
    import nbclient

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this checkout
    # One intra-op thread: on a shared 2-core machine two OpenMP threads per op made the notebook's
    # training 20-30x slower (measured here: 30-44 s per model instead of 1.3 s with one thread).
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no debugger warning in the stored stderr
    client = nbclient.NotebookClient(
        nb,
        km=kernel_manager(workdir / "kernels"),
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def main(argv=None) -> int:
    """Run the notebook; store it unless ``--check``."""
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run a fresh copy and write nothing")
    args = parser.parse_args(argv)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        execute(nb, Path(tmp))
    if not args.check:
        nbformat.write(nb, NOTEBOOK)
        print(f"wrote {NOTEBOOK.relative_to(REPO)} with the outputs of a fresh run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
