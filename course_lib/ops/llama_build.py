"""After pip builds llama-cpp-python (``make install``): keep the native build if it runs here, else
rebuild it once with portable kernels.

pip compiles llama.cpp for the CPU it runs on (GGML_NATIVE, -march=native). On some CPUs that build
crashes at its first matrix product: Xeons that advertise AMX, compiled by gcc 12, for one
(ggml-org/llama.cpp#20824). The probe (``runtimes.probe_llama_cpp``) runs a few tokens of the
default model's GGUF file in a child process, so a crash is an answer here, not the end of the
install. After a crash we rebuild once with CMAKE_ARGS="-DGGML_NATIVE=OFF" (AVX2 kernels, no
CPU-specific extensions) and probe again. Whatever happens, the install goes on: the course runs
without llama.cpp, and notebook 04 then writes its GGUF file without running it.

    python -m course_lib.ops.llama_build llama-cpp-python==0.3.36     # one line says what happened
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from course_lib import runtimes

PORTABLE = {"CMAKE_ARGS": runtimes.PORTABLE_CMAKE_ARGS}  # what runtimes.crash_sentence advises learners too


def rebuild_portable(requirement: str) -> bool:
    """pip reinstalls REQUIREMENT compiled without this CPU's extensions (minutes); True if it built.

    --no-cache-dir: pip's cache holds the native wheel, which it would hand back unchanged; --no-deps:
    only llama-cpp-python changes, never numpy or the other pins.
    """
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps",
                           "--no-cache-dir", requirement], env={**os.environ, **PORTABLE})
    return done.returncode == 0


def _say(line: str) -> None:
    print(line, flush=True)  # before a long compile, not after it


def ensure_working_build(requirement: str, probe=None, rebuild=None, say=_say) -> str:
    """Probe; after a crash rebuild portable once and probe again. Returns what happened:

    "works" (the installed build runs), "portable" (it crashed; the rebuild runs), "none" (not
    installed: nothing to rebuild) or "broken" (still failing: the course goes on without llama.cpp).
    PROBE and REBUILD default to ``runtimes.probe_llama_cpp`` and ``rebuild_portable``.
    """
    probe, rebuild = probe or runtimes.probe_llama_cpp, rebuild or rebuild_portable
    status, sentence = probe()
    if status == "ok":
        say(sentence)  # "llama.cpp runs SmolLM2-135M-Instruct.Q4_1.gguf here."
        return "works"
    if status != "crashed":
        say(f"llama.cpp: {sentence}")
        return "none" if status == "missing" else "broken"
    what = sentence.split(";")[0]  # "llama.cpp crashed on this CPU (signal 11, SIGSEGV) while running ..."
    say(f"{what}: rebuilding {requirement} without this CPU's native extensions "
        f"(CMAKE_ARGS=\"{PORTABLE['CMAKE_ARGS']}\", compiles for minutes)...")
    built = rebuild(requirement)
    status, sentence = probe()
    if status == "ok":
        say("llama.cpp: the portable build runs here; the native one crashed on this CPU.")
        return "portable"
    how = "the portable build fails too" if built else "the portable build did not compile"
    say(f"llama.cpp: {how}: {sentence} The course runs without it (notebook 04 writes its GGUF file without "
        "running it).")
    return "broken"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.ops.llama_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("requirement", nargs="?", default=f"llama-cpp-python=={runtimes.LLAMA_CPP_VERSION}")
    ensure_working_build(parser.parse_args(argv).requirement)
    return 0  # never stops the install


if __name__ == "__main__":
    sys.exit(main())
