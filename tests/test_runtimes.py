"""llama.cpp in a child process (course_lib/runtimes.py over course_lib/native.py): a build that crashes on
this CPU gives one sentence (NativeCrash), not a dead kernel; the bench, the server and the environment
report carry on; and the child-hosted runner gives what an in-process llama.cpp gives.

The crashes are real: the injected hosts die by a genuine SIGSEGV in their child process
(``ctypes.string_at(0)``), as llama.cpp does on CPUs its native build is wrong for (AMX Xeons,
ggml-org/llama.cpp#20824). Every child gets a timeout, so a test that would hang fails instead: a
death must be noticed as a death (NativeCrash), never waited out (TimeoutError).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from course_lib import env, native, runtimes
from course_lib.native import NativeCrash

TIMEOUT_S = 60  # per answer; a dead child is reported at once, long before this


def _segfault():
    ctypes.string_at(0)  # reads address 0: a real SIGSEGV, in whichever process runs it


class CrashingHost:
    """Loads like ``runtimes.LlamaCppHost``, then dies by SIGSEGV at its first matrix product."""

    def __init__(self, path, n_ctx, threads):
        self.path = path

    def tokenize(self, text):
        return [1, 2, 3]

    def logits(self, ids):
        _segfault()

    def greedy(self, ids, max_new_tokens, stop_ids=()):
        _segfault()

    def stream(self, ids, max_new_tokens, stop_ids=()):
        yield 7  # a first token, then the crash: mid-stream
        _segfault()


class LoadCrashingHost:
    """Dies while loading the file."""

    def __init__(self, path, n_ctx, threads):
        _segfault()


class EchoHost:
    """A well-behaved host for the protocol: results, streams, Python errors, slow answers."""

    def __init__(self, *args):
        self.args = args

    def echo(self, value):
        return value

    def count(self, n):
        yield from range(n)

    def fail(self):
        raise ValueError("bad input, said in the child")

    def sleep(self, seconds):
        time.sleep(seconds)
        return os.getpid()


def _crashing_runner(name="model-q8_0.gguf", host=CrashingHost):
    return runtimes.LlamaCppRunner(name, threads=1, host=host, timeout_s=TIMEOUT_S)  # the hosts never open the file


# --------------------------------------------------------------------------- a crash is a sentence


def test_a_segfault_in_the_child_is_one_sentence_and_the_parent_goes_on():
    runner = _crashing_runner()
    with pytest.raises(NativeCrash) as caught:
        runner.logits([1, 2, 3])
    message = str(caught.value)
    assert caught.value.signal == signal.SIGSEGV and "signal 11, SIGSEGV" in message
    assert "model-q8_0.gguf" in message and 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install' in message
    assert "\n" not in message and message.startswith("llama.cpp crashed on this CPU")
    assert not runner.child.alive
    with pytest.raises(NativeCrash, match="SIGSEGV"):  # every later call: the same sentence, at once
        runner.greedy([1], 2)
    runner.close()
    runner.close()
    # This process is fine: it still computes, and starts other children.
    assert sum(range(10)) == 45 and native.Child(EchoHost).call("echo", [1, "a"]) == [1, "a"]


def test_a_crash_mid_stream_comes_after_the_tokens_already_made():
    runner = _crashing_runner()
    tokens = []
    with pytest.raises(NativeCrash, match="SIGSEGV"):
        for token in runner.stream([1, 2], 5):
            tokens.append(token)
    assert tokens == [7]


def test_a_crash_while_loading_is_raised_by_the_constructor():
    with pytest.raises(NativeCrash, match="signal 11, SIGSEGV.*model-f32.gguf"):
        _crashing_runner("model-f32.gguf", LoadCrashingHost)


def test_how_a_process_ended_reads_as_words():
    assert native.death(-signal.SIGSEGV) == "signal 11, SIGSEGV"
    assert native.death(-signal.SIGILL) == "signal 4, SIGILL"
    assert native.death(3) == "exit code 3"
    assert "lack of memory" in runtimes.crash_sentence("m.gguf", -signal.SIGKILL)
    assert "ended unexpectedly (exit code 1)" in runtimes.crash_sentence("m.gguf", 1)


# --------------------------------------------------------------------------- the pipe between them


def test_results_streams_errors_and_timeouts_cross_the_pipe():
    child = native.Child(EchoHost, ("a", 1), timeout_s=TIMEOUT_S)
    try:
        assert child.call("echo", {"x": [1.5]}) == {"x": [1.5]}
        assert list(child.stream("count", 4)) == [0, 1, 2, 3]
        abandoned = child.stream("count", 100)
        assert next(abandoned) == 0  # left open: the next call ends it, nothing stale stays in the pipe
        assert child.call("echo", "after") == "after"
        with pytest.raises(RuntimeError, match="ended by a later call"):
            next(abandoned)
        with pytest.raises(ValueError, match="said in the child"):  # a Python error: raised here, child lives
            child.call("fail")
        assert child.alive and child.call("echo", 2) == 2
        first = child.call("sleep", 0)
        child.timeout_s = 0.5
        with pytest.raises(TimeoutError, match="did not answer within"):
            child.call("sleep", 30)
        assert not child.alive  # stopped, not left computing
        child.timeout_s = TIMEOUT_S
        assert child.call("sleep", 0) != first  # a new child took over
    finally:
        child.close()
    assert not child.alive


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_the_child_ends_when_its_parent_dies(state):
    """A parent killed by SIGKILL (no cleanup at all): its child follows it, idle (the pipe's end) or busy."""
    work = ("busy = child.stream('count', 10); next(busy)\n" if state == "idle" else  # waits for "next"
            "import threading, time; threading.Thread(target=child.call, args=('sleep', 60)).start(); time.sleep(1)\n")
    script = ("import os, signal; from course_lib import native; import test_runtimes as t\n"
              "child = native.Child(t.EchoHost)\n"
              "print(child.process.pid, flush=True)\n"
              f"{work}"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    env_vars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env_vars, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout.split()[0])
    for _ in range(100):  # the child notices within a second or two
        if not _running(pid):
            break
        time.sleep(0.1)
    assert not _running(pid), f"child {pid} outlived its parent"


def test_a_script_read_from_stdin_starts_a_child_and_is_not_run_again():
    """The child runs course_lib.native only: the caller's main script is never re-run in it."""
    script = ("from course_lib import native; import test_runtimes as t\n"
              "print('top of the script', flush=True)\n"
              "print(native.Child(t.EchoHost).call('echo', 'answer'))\n")
    env_vars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, env=env_vars,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["top of the script", "answer"]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits for init


# --------------------------------------------------------------------------- the probe


def test_the_probe_says_what_happened():
    assert "SIGSEGV" in runtimes.llama_cpp_works("model.gguf", host=CrashingHost, timeout_s=TIMEOUT_S)
    status, sentence = runtimes.probe_llama_cpp("model.gguf", host=LoadCrashingHost, timeout_s=TIMEOUT_S)
    assert status == "crashed" and "-DGGML_NATIVE=OFF" in sentence and "\n" not in sentence
    status, sentence = runtimes.probe_llama_cpp("model.gguf", host=MissingLibraryHost, timeout_s=TIMEOUT_S)
    assert status == "missing" and "not installed" in sentence


class MissingLibraryHost:
    def __init__(self, path, n_ctx, threads):
        import llama_cpp_not_here  # noqa: F401


def test_the_probe_runs_the_shipped_gguf_file_here():
    if runtimes.llama_cpp_available():
        pytest.skip(runtimes.llama_cpp_available())
    assert runtimes.llama_cpp_works() is None


def test_probe_command_line_exit_codes(monkeypatch, capsys):
    for status, code in (("ok", 0), ("missing", 1), ("failed", 1), ("crashed", 3)):
        monkeypatch.setattr(runtimes, "probe_llama_cpp", lambda path, status=status: (status, f"{status}."))
        assert runtimes.main(["probe"]) == code
        assert capsys.readouterr().out == f"{status}.\n"


def test_the_environment_report_has_a_llama_cpp_line(monkeypatch):
    monkeypatch.setattr(runtimes, "probe_llama_cpp", lambda: ("crashed", runtimes.crash_sentence("x.gguf", -11)))
    check = env._check_llama_cpp()
    assert check.item == "llama.cpp (GGUF runtime)" and check.verdict == "warning"
    assert check.value == "crashes on this CPU" and "-DGGML_NATIVE=OFF" in check.advice
    monkeypatch.setattr(runtimes, "probe_llama_cpp", lambda: ("ok", "llama.cpp runs x.gguf here."))
    assert env._check_llama_cpp().verdict == "ok"


# --------------------------------------------------------------------------- same answers as in-process


def test_the_child_gives_what_llama_cpp_gives_in_process():
    if runtimes.llama_cpp_available():
        pytest.skip(runtimes.llama_cpp_available())
    import itertools

    import numpy as np
    from llama_cpp import Llama

    from course_lib import models

    path = models._gguf_path()
    # One thread each: on a busy machine llama.cpp's spinning threads can slow a prompt down 50-fold.
    llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, seed=0, n_threads=1,
                n_threads_batch=1)
    try:
        ids = llm.tokenize(b"The capital of France is")
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        tokens = [int(t) for t in itertools.islice(llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                                                repeat_penalty=1.0, reset=True), 8)]
    finally:
        llm.close()
    runner = runtimes.LlamaCppRunner(path, n_ctx=128, threads=1, timeout_s=TIMEOUT_S)
    try:
        assert np.allclose(runner.logits(ids), logits, atol=1e-4)
        assert runner.greedy(ids, 8) == tokens
        assert list(runner.stream(ids, 8)) == tokens
        assert runner.greedy(ids, 8, stop_ids=[tokens[2]]) == tokens[:3]
    finally:
        runner.close()


# --------------------------------------------------------------------------- the bench goes on


@pytest.fixture
def crashing_gguf(monkeypatch):
    """build("gguf") writes a (stand-in) GGUF file, then runs it in a llama.cpp that segfaults."""
    from course_lib.quantize import bench, variants

    def write_file(model_dir, out_file, outtype):  # the converter's output is not what is tested here
        Path(out_file).write_bytes(b"GGUF")
        return Path(out_file)

    monkeypatch.setattr(variants, "convert_gguf", write_file)
    monkeypatch.setattr(variants, "gguf_contents", lambda path: {"metadata_mb": 0.0})
    monkeypatch.setattr(variants, "llama_cpp_available", lambda: None)
    monkeypatch.setattr(bench, "converter_available", lambda: None)
    monkeypatch.setattr(variants, "LlamaCppRunner", partial(runtimes.LlamaCppRunner, host=CrashingHost,
                                                            timeout_s=TIMEOUT_S))
    return variants


def test_a_crashing_gguf_variant_is_reported_and_the_bench_goes_on(crashing_gguf, tiny_model_dir, tokenizer, data,
                                                                     tmp_path, capsys):
    from course_lib import quantize

    small = replace(data, examples=data.examples[:2], items=data.items[:1], prompts=data.prompts[:1], latency_tokens=2)
    bench = quantize.Bench(tiny_model_dir, tokenizer, small, tmp_path)
    result = bench.run("gguf")  # the fp32 baseline first, then the GGUF file, whose runner segfaults
    assert result.size_mb > 0 and math.isnan(result.ppl) and math.isnan(result.ms_per_token)
    assert "SIGSEGV" in result.extra["error"] and "-DGGML_NATIVE=OFF" in result.notes
    assert "gguf: llama.cpp crashed on this CPU (signal 11, SIGSEGV)" in capsys.readouterr().out
    pruned = bench.run("pruned")  # the next variant is measured as usual
    assert math.isfinite(pruned.ppl) and pruned.ms_per_token > 0
    table = bench.table()
    assert list(table.index) == ["fp32", "pruned", "gguf"]
    assert "SIGSEGV" in table.loc["gguf", "notes"] and math.isnan(table.loc["gguf", "perplexity"])
    assert "gguf_ms_per_token" in bench.figures() and len(bench.claims())  # the claims skip what is missing
    assert bench.run("gguf") is not result  # not kept as final: tried again (after a rebuild, it would run)


def test_a_gguf_file_llama_cpp_cannot_load_is_written_not_run(crashing_gguf, monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setattr(crashing_gguf, "LlamaCppRunner", partial(runtimes.LlamaCppRunner, host=LoadCrashingHost,
                                                                 timeout_s=TIMEOUT_S))
    built = crashing_gguf.build("gguf", tiny_model_dir, tmp_path)
    assert built.runner is None and built.disk_bytes == 4
    assert any(note.startswith("not run: llama.cpp crashed") for note in built.notes)


# --------------------------------------------------------------------------- the server lives on


def test_a_crash_during_a_request_is_a_500_with_the_sentence(default_tokenizer, tmp_path):
    from fastapi.testclient import TestClient

    from course_lib import serve
    from course_lib.serve.engine import RunnerEngine

    engine = RunnerEngine(_crashing_runner(), default_tokenizer,
                          {"source": str(tmp_path / "model-q8_0.gguf"), "kind": "gguf"})
    app = serve.create_app(engine, serve.ServeConfig(safety="off", name="m"))
    with TestClient(app) as client:
        for _ in range(2):  # the first request meets the crash, the next one its sentence
            answer = client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 4})
            assert answer.status_code == 500
            error = answer.json()["error"]
            assert error["type"] == "server_error" and "SIGSEGV" in error["message"]
            assert "-DGGML_NATIVE=OFF" in error["message"]
        assert client.get("/health").status_code == 200  # the server itself is fine
        streamed = client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                             "messages": [{"role": "user", "content": "Hi"}]})
        assert streamed.status_code == 200  # sent before generation starts: the error comes as an event
        events = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        assert "SIGSEGV" in events[-1]["error"]["message"]  # what the openai client raises as an APIError
        plain = client.post("/generate/stream", json={"prompt": "Hi"})
        assert "event: error" in plain.text and "-DGGML_NATIVE=OFF" in plain.text
