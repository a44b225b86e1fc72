"""Where things live: the course folder, the shipped data, the run directory, the model cache.

Every stage writes its artifact under one run directory (default ``runs/`` in the course folder),
so that the next notebook finds it and ``make course`` can gather the figures.
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path


def course_root() -> Path:
    """The checked-out course folder (the one holding pyproject.toml), or the current folder.

    A learner may open a notebook from notebooks/ (JupyterLab), from the repo root (a script) or
    from /content (Colab, where only the package is installed); all three must find the same place.
    """
    source_tree = Path(__file__).resolve().parent.parent
    if (source_tree / "pyproject.toml").exists() and (source_tree / "notebooks").is_dir():
        return source_tree
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "pyproject.toml").exists() and (folder / "course_lib").is_dir():
            return folder
    return Path.cwd()


def data_samples(*parts: str) -> Path:
    """A path inside the datasets the course ships (data_samples/ in the repo, or in the package)."""
    in_repo = course_root() / "data_samples"
    base = in_repo if in_repo.is_dir() else Path(str(resources.files("course_lib.data_samples")))
    path = base.joinpath(*parts)
    if parts and not path.exists():
        raise FileNotFoundError(f"{path} is not among the course's shipped datasets ({base}).")
    return path


def run_dir(value: str | os.PathLike | None = None) -> Path:
    """Resolve a notebook's RUN_DIR: absolute as given, relative to the course folder otherwise.

    ``COURSE_RUN_DIR`` overrides the default, so tests can send every artifact to a temporary folder.
    """
    if value is None:
        value = os.environ.get("COURSE_RUN_DIR", "runs")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = course_root() / path
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Where converted models are kept between runs (``COURSE_CACHE_DIR`` overrides)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "course_lib"
    path = Path(os.environ.get("COURSE_CACHE_DIR", default)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_aside(folder: Path) -> Path:
    """Rename FOLDER to ``<name>.previous-<time>`` beside it and return the new path: an earlier run's
    artifacts are never overwritten or deleted, only moved out of the way of the next run."""
    kept = folder.with_name(f"{folder.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(kept)
    return kept
