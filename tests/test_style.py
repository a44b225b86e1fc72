"""Linters the maintainers rely on: ruff over the code and the notebooks, actionlint over the workflows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it is in pyproject's dev extra (make install)")
    return found


def test_ruff_passes_on_code_tests_bench_and_notebooks():
    """pyproject's [tool.ruff] picks the rules; notebooks' code cells are checked too (magics allowed)."""
    done = subprocess.run([_tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr + "\n(`ruff check --fix .` fixes the safe ones)"
    checked = subprocess.run([_tool("ruff"), "check", "--show-files", "."], cwd=ROOT, capture_output=True,
                             text=True).stdout
    assert "course_lib/" in checked and "tests/" in checked and ".ipynb" in checked


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files
    done = subprocess.run([_tool("actionlint"), *map(str, files)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_test_workflow_runs_make_test_on_push_and_pull_request():
    flow = _workflow("test.yml")
    triggers = flow[True]  # YAML 1.1 reads the key `on` as true
    assert "push" in triggers and "pull_request" in triggers
    steps = flow["jobs"]["test"]["steps"]
    assert any(s.get("run") == "make test" for s in steps)
    assert "download.pytorch.org/whl/cpu" in flow["jobs"]["test"]["env"]["PIP_EXTRA_INDEX_URL"]


def test_drift_workflow_runs_check_latest_weekly():
    flow = _workflow("drift.yml")
    cron = flow[True]["schedule"][0]["cron"].split()
    assert cron[2] == "*" and cron[3] == "*" and cron[4] != "*", "once a week"
    assert any(s.get("run") == "make check-latest" for s in flow["jobs"]["check-latest"]["steps"])
