"""Shared fixtures: an offline world, a tiny model, and notebooks executed once per session.

Every test runs with HF_HUB_OFFLINE=1: nothing the learner relies on may need the network.
Notebook runs go through course_lib.ops.runner.run_notebook, the same path `make course` takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight Llama with the default tokenizer (~3.4M parameters), built at test time."""
    from course_lib.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def default_tokenizer():
    from course_lib.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def course_run_dir(tmp_path_factory) -> Path:
    """One run directory for every notebook of the session, so later stages find earlier artifacts."""
    return tmp_path_factory.mktemp("course_run")


@pytest.fixture(scope="session")
def executed(course_run_dir):
    """executed("02_lora_qlora") -> the runner's report entry for that notebook's small run.

    Each notebook runs at most once per session, whichever tests ask for it.
    """
    from course_lib.ops.runner import discover, run_notebook

    cache: dict[str, dict] = {}
    notebooks = {p.stem: p for p in discover(ROOT / "notebooks")}

    def run(name: str) -> dict:
        if name not in cache:
            cache[name] = run_notebook(notebooks[name], course_run_dir, small=True, log_output=False)
        return cache[name]

    run.notebooks = notebooks
    return run
