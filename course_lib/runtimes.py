"""Three runtimes behind one interface: token ids in, logits or greedy tokens out.

PyTorch (any transformers model, quantized or not), ONNX Runtime (an exported graph) and llama.cpp
(a GGUF file, the runtime of Ollama and LM Studio). The quantization stage measures every variant
through them and the server answers through them, so a runtime is written once. Each one takes the
same token ids from the transformers tokenizer, so differences come from the runtime, not the input.
The heavy libraries (torch, onnxruntime, llama_cpp) are imported inside the methods: a learner
without llama-cpp-python can still use the other two.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

from course_lib import evaluate


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


class LlamaCppRunner:
    """A GGUF file run by llama.cpp (through llama-cpp-python): the runtime of Ollama and LM Studio.

    Token ids come from the transformers tokenizer, so both runtimes see exactly the same input.
    """

    runtime = "llama.cpp"

    def __init__(self, path, n_ctx: int = 1024, threads: int | None = None):
        import torch
        from llama_cpp import Llama

        threads = threads or torch.get_num_threads()
        # n_threads_batch too: by default llama-cpp-python processes prompts with one thread per core,
        # and on a busy machine its spinning threads made an 80-token prompt take 15 s instead of 0.3 s.
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                         n_threads=threads, n_threads_batch=threads)

    def logits(self, ids):
        import numpy as np

        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids, max_new_tokens, stop_ids=()):
        return list(self.stream(ids, max_new_tokens, stop_ids))

    def stream(self, ids, max_new_tokens, stop_ids=()):
        """Greedy tokens one at a time (the server streams them as they come)."""
        self.llm.reset()
        produced = 0
        for token in self.llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            produced += 1
            yield int(token)
            if token in stop_ids or produced >= max_new_tokens:
                return

    def answers(self, tokenizer, data) -> list[str]:
        return [tokenizer.decode(self.greedy(p, data.max_new_tokens, data.stop_ids), skip_special_tokens=True).strip()
                for p in data.prompts]

    def close(self):
        if self.llm is not None:
            self.llm.close()  # explicitly: Llama.__del__ can raise at interpreter exit
            self.llm = None
