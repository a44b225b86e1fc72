"""Build the pretraining corpus: English prose from the docstrings of Python's standard library.

    python data_samples/tools/make_pretrain_corpus.py            # writes data_samples/pretrain/
    python data_samples/tools/make_pretrain_corpus.py --check    # only says what it would write

Every Python installation carries these docstrings, so the corpus needs no network and no
download. The script imports each pure-Python stdlib module, collects the docstrings of the
module and of its public classes, functions and methods, keeps the prose paragraphs (no code
examples, no tables, no argument lists), removes duplicates, and splits by module: every 10th
module (by a stable hash of its name) goes to the held-out file, so held-out text is about
subjects the model never trained on, not sentences cut from the same paragraph.

Standard library only; deterministic for a given Python version (the shipped files were built
with the version printed in data_samples/pretrain/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import io
import pkgutil
import re
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "pretrain"
SKIP = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "test", "lib2to3", "ensurepip",
        "venv", "pydoc_data", "__main__", "__phello__", "_pydecimal", "_pyio", "_pydatetime"}
HELD_OUT_EVERY = 10
MAX_BYTES = 2_800_000


def stdlib_modules() -> list[str]:
    """Top-level stdlib modules and the submodules of its packages (email.mime, xml.dom, ...)."""
    names = set()
    for top in sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP):
        names.add(top)
        spec = importlib.util.find_spec(top)
        if spec and spec.submodule_search_locations:
            for info in pkgutil.walk_packages(spec.submodule_search_locations, top + "."):
                if not any(part.startswith("_") or part in SKIP for part in info.name.split(".")):
                    names.add(info.name)
    return sorted(names)


def docstrings_of(module) -> list[str]:
    """The module's docstring and those of its public classes, functions and methods."""
    found = [inspect.getdoc(module) or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            found.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and (inspect.isroutine(member) or isinstance(member, property)):
                    found.append(inspect.getdoc(member) or "")
    return found


PROSE = re.compile(r"^[A-Z][^\n]*[a-z][^\n]*[.!?:)]$")


def prose_paragraphs(doc: str) -> list[str]:
    """Paragraphs that read as English sentences: start upper-case, end with punctuation, mostly words."""
    kept = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.splitlines()
        if not lines or any(l.startswith((" ", ">>>", "...", "-", "*", "|", "=")) for l in lines):
            continue  # code examples, lists, tables, indented argument descriptions
        text = " ".join(l.strip() for l in lines)
        words = text.split()
        letters = sum(c.isalpha() or c.isspace() for c in text) / max(len(text), 1)
        if len(words) >= 5 and letters > 0.8 and PROSE.match(text) and text.isascii():
            kept.append(text)
    return kept


def held_out(module_name: str) -> bool:
    return int(hashlib.sha256(module_name.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def collect() -> tuple[list[str], list[str], int]:
    train, val, seen, modules = [], [], set(), 0
    warnings.simplefilter("ignore")
    for name in stdlib_modules():
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001, S112 - platform-specific modules (winreg ...) or ones that refuse import
            continue
        modules += 1
        for doc in docstrings_of(module):
            for para in prose_paragraphs(doc):
                if para not in seen:
                    seen.add(para)
                    (val if held_out(name) else train).append(para)
    # The language reference's topics as pydoc shows them (`help("if")`): long explanatory prose.
    from pydoc_data.topics import topics
    for name, doc in sorted(topics.items()):
        for para in prose_paragraphs(doc):
            if para not in seen:
                seen.add(para)
                (val if held_out("topic:" + name) else train).append(para)
    return train, val, modules


def main(argv=None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="print sizes, write nothing")
    opts = args.parse_args(argv)
    train, val, modules = collect()
    train_text = "\n".join(train) + "\n"
    while len(train_text.encode()) > MAX_BYTES:
        train = train[: int(len(train) * 0.95)]
        train_text = "\n".join(train) + "\n"
    val_text = "\n".join(val) + "\n"
    print(f"Python {sys.version.split()[0]}: {modules} modules, {len(train)} training paragraphs "
          f"({len(train_text.encode()):,} bytes), {len(val)} held-out ({len(val_text.encode()):,} bytes)")
    if not opts.check:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "train.txt").write_text(train_text, encoding="utf-8")
        (OUT / "val.txt").write_text(val_text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
