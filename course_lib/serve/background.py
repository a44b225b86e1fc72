"""The server in the background: ``python -m course_lib.serve``, or llama.cpp's own server, in a process of its own.

Notebook 05 starts the course's server this way, and notebook 04 llama.cpp's: the model, its threads
and its memory stay out of the notebook's kernel, and a crash ends the server, not the kernel.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

from course_lib import paths, runtimes


def free_port() -> int:
    """A loopback port the OS says is free right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python -m course_lib.serve`` started in the background (what notebook 05 does).

    A separate process, not a thread of the notebook's kernel: the model, its threads and its
    memory stay out of the kernel, and ``stop()`` ends them all (uvicorn shuts down gracefully on
    SIGTERM; a process that ignores it for 15 s is killed). Use as a context manager, or call stop().
    A forgotten server still ends with the process that started it: at that process's exit (``atexit``),
    or, if it is killed, when the server sees its parent gone (``--parent-pid``).
    """

    health_path = "/health"  # answers 200 once the model is loaded

    def __init__(self, model: str = "runs", port: int | None = None, log_file=None, wait_s: float = 300, **options):
        import sys

        argv = [sys.executable, "-m", "course_lib.serve", "--model", str(model), "--parent-pid", str(os.getpid())]
        argv += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        self._start(argv, port, log_file, wait_s)

    def _start(self, argv: list[str], port: int | None, log_file, wait_s: float):
        """Run ARGV (plus ``--port``) in its own process group and wait until ``health_path`` answers."""
        import subprocess

        port = free_port() if port is None else port  # so two notebooks never collide
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = Path(log_file or paths.run_dir() / "serve" / f"server-{port}.log")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [*argv, "--port", str(port)]
        with open(self.log_file, "w") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_until_healthy(wait_s)
        except BaseException:  # it did not start, or the wait was interrupted: no half-started server left
            self.stop()
            raise

    def _wait_until_healthy(self, wait_s: float):
        import httpx

        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"the server exited with code {self.process.returncode}: {tail[0]} "
                                   f"(whole log: {self.log_file})")
            try:
                if httpx.get(f"{self.url}{self.health_path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server did not answer {self.health_path} within {wait_s:.0f} s (log: {self.log_file})")

    def stop(self, grace_s: float = 15) -> int:
        """Stop the server and everything it started; returns its exit code."""
        import signal
        import subprocess

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# llama.cpp's server, started the way ``python -m course_lib.serve --parent-pid`` starts: it watches
# the process that started it (argv[1]) and shuts down when that process is gone.
_LLAMA_MAIN = ("import runpy, sys; from course_lib.serve.__main__ import _exit_with_parent; "
               "_exit_with_parent(int(sys.argv[1])); sys.argv = ['llama_cpp.server', *sys.argv[2:]]; "
               "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")


class LlamaServer(Server):
    """llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``) on a GGUF file.

    The runtime Ollama and LM Studio build on, answering over HTTP the way they do: chat requests are
    formatted with the chat template stored in the GGUF file, and generation stops at its end-of-turn
    token. Its own process, like ``Server``: if the native code crashes, the server dies, not the
    notebook, and it ends with the process that started it.
    """

    health_path = "/v1/models"

    def __init__(self, gguf_file, port: int | None = None, log_file=None, wait_s: float = 120, n_ctx: int = 1024,
                 threads: int | None = None):
        import sys

        threads = threads or runtimes._threads()  # what the course's own llama.cpp runner uses
        argv = [sys.executable, "-c", _LLAMA_MAIN, str(os.getpid()), "--model", str(gguf_file), "--host", "127.0.0.1",
                "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        self._start(argv, port, log_file, wait_s)
