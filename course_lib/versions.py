"""The versions the course was tested with, and one warning when this environment is outside them.

The tested versions are the lock (requirements/lock.txt, written by `make lock`; CI runs the tests
on exactly those). A learner who installed course_lib into an environment of their own (Colab, an
existing conda env) may have other releases of transformers, peft, ...: the stage modules call
``warn_once()`` on import, which says in one sentence which ones differ, once per process.

    python -m course_lib.versions      # tested vs installed, for the course's libraries
"""

from __future__ import annotations

import re
import sys
import warnings
from functools import cache
from importlib import metadata, resources
from pathlib import Path

# The libraries whose APIs the course calls directly and that move fast (renames, removed
# arguments). torch is reported but not warned about: the Colab setup keeps Colab's own CUDA build
# on purpose, and the torch API the course uses is stable across the releases pyproject allows.
COURSE_LIBRARIES = ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "tokenizers",
                    "safetensors", "huggingface-hub", "gguf", "onnx", "onnxruntime", "optuna", "trl")
REPORTED = ("torch", *COURSE_LIBRARIES)
_warned = False


class UntestedVersionsWarning(UserWarning):
    """A course library's installed release differs from the one the course was tested with."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """name -> version for every `name==version` line of a requirements text."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            found[normalize(m.group(1))] = m.group(2)
    return found


def lock_text() -> str:
    """requirements/lock.txt from the checkout, or the copy shipped as course_lib.requirements."""
    checkout = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
    if checkout.exists():
        return checkout.read_text()
    return resources.files("course_lib.requirements").joinpath("lock.txt").read_text()


@cache
def tested() -> dict[str, str]:
    """Every locked package and its version: what `make test` installs and CI passes with."""
    return parse_pins(lock_text())


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _minor(version: str) -> tuple[str, ...]:
    return tuple(re.split(r"[.+]", version)[:2])


def untested() -> list[tuple[str, str, str]]:
    """(name, installed, tested) for each course library whose installed major.minor differs.

    Patch releases count as tested (they fix bugs, they don't rename APIs); a library that is not
    installed is left to the import that needs it to report.
    """
    out = []
    for name in COURSE_LIBRARIES:
        have, want = installed(name), tested().get(name)
        if have and want and _minor(have) != _minor(want):
            out.append((name, have, want))
    return out


def warn_once() -> None:
    """One sentence, once per process, when the course's libraries differ from the tested ones."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        differ = untested()
    except (OSError, ValueError):  # no lock shipped (an unusual install): nothing to compare with
        return
    if differ:
        have = ", ".join(f"{n} {h}" for n, h, _ in differ)
        want = ", ".join(f"{n} {w}" for n, _, w in differ)
        warnings.warn(f"course_lib was tested with {want} but this environment has {have}: if a cell fails, "
                      "install the tested versions (on Colab, run the setup cell first).",
                      UntestedVersionsWarning, stacklevel=3)


def report() -> str:
    lines = [f"{'library':<18} {'tested':<14} installed"]
    for name in REPORTED:
        have = installed(name) or "-"
        want = tested().get(name, "-")
        mark = "" if have == "-" or _minor(have) == _minor(want) else "   <- differs"
        lines.append(f"{name:<18} {want:<14} {have}{mark}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(0)
