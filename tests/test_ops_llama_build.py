"""The install step after pip builds llama-cpp-python (course_lib/ops/llama_build.py): probe, rebuild
portable once if the native build crashes, probe again, and never stop the install.

The probe and the rebuild are injected: the real rebuild compiles llama.cpp for many minutes. The
probe's own behaviour on real crashes is tested in tests/test_runtimes.py.
"""

from __future__ import annotations

import pytest

from course_lib import runtimes
from course_lib.ops import llama_build

CRASH = ("crashed", runtimes.crash_sentence("SmolLM2-135M-Instruct.Q4_1.gguf", -11))
OK = ("ok", "llama.cpp runs SmolLM2-135M-Instruct.Q4_1.gguf here.")


def _install(probes, rebuilt=True):
    """Run the decision with PROBES answered in turn; returns (outcome, rebuilds asked for, lines said)."""
    answers, rebuilds, said = iter(probes), [], []

    def rebuild(requirement):
        rebuilds.append(requirement)
        return rebuilt

    outcome = llama_build.ensure_working_build("llama-cpp-python==0.3.36", probe=lambda: next(answers),
                                               rebuild=rebuild, say=said.append)
    assert next(answers, None) is None, "every expected probe ran"
    return outcome, rebuilds, said


def test_a_build_that_runs_is_kept():
    assert _install([OK]) == ("works", [], [OK[1]])


@pytest.mark.parametrize("status", ["missing", "failed"])
def test_no_rebuild_unless_it_crashed(status):
    outcome, rebuilds, said = _install([(status, "llama-cpp-python is not installed (ImportError): ...")])
    assert outcome == ("none" if status == "missing" else "broken") and rebuilds == [] and len(said) == 1


def test_a_crash_rebuilds_portable_once_and_probes_again():
    outcome, rebuilds, said = _install([CRASH, OK])
    assert outcome == "portable" and rebuilds == ["llama-cpp-python==0.3.36"]
    assert said[0].startswith("llama.cpp crashed on this CPU (signal 11, SIGSEGV) while running SmolLM2")
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in said[0] and "portable build runs here" in said[1]
    assert all("\n" not in line for line in said)


@pytest.mark.parametrize("rebuilt, how", [(True, "fails too"), (False, "did not compile")])
def test_still_broken_after_the_rebuild_is_said_and_the_install_goes_on(rebuilt, how):
    outcome, rebuilds, said = _install([CRASH, CRASH], rebuilt=rebuilt)
    assert outcome == "broken" and len(rebuilds) == 1 and len(said) == 2
    assert how in said[1] and "SIGSEGV" in said[1] and "course runs without it" in said[1]


def test_the_command_line_never_fails_the_install(monkeypatch, capsys):
    monkeypatch.setattr(llama_build, "rebuild_portable", lambda requirement: pytest.fail("no rebuild here"))
    monkeypatch.setattr(runtimes, "probe_llama_cpp", lambda: ("missing", "llama-cpp-python is not installed."))
    assert llama_build.main([]) == 0
    assert capsys.readouterr().out == "llama.cpp: llama-cpp-python is not installed.\n"


def test_the_rebuild_is_pips_own_portable_build(monkeypatch):
    seen = {}

    def run(argv, env):
        seen.update(argv=argv, env=env)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(llama_build.subprocess, "run", run)
    assert llama_build.rebuild_portable("llama-cpp-python==0.3.36")
    assert seen["env"]["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"
    assert {"--force-reinstall", "--no-deps", "--no-cache-dir", "llama-cpp-python==0.3.36"} <= set(seen["argv"])
