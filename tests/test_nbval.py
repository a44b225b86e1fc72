"""The fast notebooks exactly as a learner runs them: stored parameters, no injected cell (nbval).

The papermill runs (test_notebooks.py and the stage tests) inject small-run parameters, so they
never execute a notebook as it is stored. nbval does: ``--nbval-lax`` runs every cell of the file as
committed and fails on the first error (stored notebooks have no outputs to compare). Only the
notebooks that take well under a minute with their default parameters run here; the others run
with their defaults in ``make course``.

The copy runs in a temporary course folder (course_lib, the notebook, pyproject.toml, links to
data_samples and requirements), so its RUN_DIR = "runs" lands there and never touches the learner's own runs/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ("01_data",)


def _course_copy(tmp_path: Path, name: str) -> Path:
    """A course folder with its own runs/: course_lib and the notebook copied, the datasets linked."""
    shutil.copytree(ROOT / "course_lib", tmp_path / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", tmp_path / "notebooks")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for shipped in ("data_samples", "requirements"):  # read-only: the datasets and the lock
        (tmp_path / shipped).symlink_to(ROOT / shipped, target_is_directory=True)
    return tmp_path / "notebooks" / f"{name}.ipynb"


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_notebook_runs_as_stored(name, tmp_path):
    notebook = _course_copy(tmp_path, name)
    # The copy's course_lib comes first on the kernel's path, so paths.course_root() is the copy.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COURSE_HEADLESS": "1"}
    env.pop("COURSE_RUN_DIR", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-x", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(notebook)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout.splitlines()[-1]
    assert any((tmp_path / "runs").iterdir()), "the stored notebook writes into its own course folder"
    assert not (ROOT / "notebooks" / "runs").exists()
