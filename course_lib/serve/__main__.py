"""``python -m course_lib.serve``: the server's command line; the app itself is ``course_lib.serve.app``.

    python -m course_lib.serve --model runs                 # the persona adapter notebook 02 trained
    python -m course_lib.serve --model runs/quantize/gguf   # notebook 04's GGUF file, run by llama.cpp
    python -m course_lib.serve --model smollm2-135m --port 8001

Every limit of ``ServeConfig`` is a flag; ``--help`` lists them. ``serve.Server`` (notebook 05) runs
this command in the background and passes ``--parent-pid``, so the server ends with the notebook's kernel.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict

from course_lib.report import quiet_libraries
from course_lib.serve.app import ServeConfig, create_app
from course_lib.serve.engine import load_engine


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.serve",
                                     description="Serve a model of the course over HTTP (OpenAI-compatible).")
    parser.add_argument("--model", default="runs", help="a run directory, adapter, merged/quantized folder, "
                                                        ".onnx/.gguf file, preset or hub id (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (this machine only) unless you mean it")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    parser.add_argument("--parent-pid", type=int, default=None, help="shut down when this parent process is gone")
    for key, value in asdict(ServeConfig()).items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    return parser


def _exit_with_parent(parent_pid: int):
    """Shut down as on Ctrl+C once the process that started us (a notebook's kernel, say) is gone,
    so that no server outlives a kernel that was killed before it could call ``Server.stop()``."""
    import signal
    import threading

    import psutil

    def watch():
        try:
            parent = psutil.Process(parent_pid)  # is_running() below also tells a reused pid apart
            while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
                time.sleep(1)
        except psutil.NoSuchProcess:
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's handler: finish the requests in flight, then exit

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import torch
    import uvicorn

    quiet_libraries()
    args = vars(_parser().parse_args(argv))
    host, port, model, threads = args.pop("host"), args.pop("port"), args.pop("model"), args.pop("threads")
    if parent := args.pop("parent_pid"):
        _exit_with_parent(parent)
    if threads:
        torch.set_num_threads(threads)
    engine = load_engine(model, threads)
    app = create_app(engine, ServeConfig(**args))
    print(f"Serving {model} ({engine.runtime}) on http://{host}:{port}  (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("COURSE_SERVE_LOG", "warning"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
