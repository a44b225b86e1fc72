"""The generation side of the server: load any artifact of the course, answer batches of requests.

Notebook 05's server (``course_lib.serve.app``) is a thin HTTP layer over two pieces defined here:

- an *engine* that owns the model: ``TorchEngine`` for everything transformers loads (a preset,
  an adapter, a merged or bitsandbytes-quantized folder), ``RunnerEngine`` for the ONNX and GGUF
  files of notebook 04 (through the same runners notebook 04 measured);
- a *batcher*: one worker thread that takes queued requests, groups the ones that can share a
  forward pass, and hands each caller its own answer. A model is not safe to call from many
  threads at once, and on a CPU one batched forward pass of 8 prompts costs far less than 8 single
  ones, so queueing + batching is both the correct and the fast way to serve 32 clients.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import models, runs, runtimes


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy (the course's default: answers you can compare)
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # a sampled answer that repeats: the same seed gives the same answer, in any batch

    @property
    def seeded(self) -> bool:
        """Sampled with a seed of its own (a seed on a greedy request changes nothing)."""
        return self.temperature > 0 and self.seed is not None

    def sampling_key(self) -> tuple:
        """Requests with the same key can share one ``generate`` call."""
        return (self.temperature > 0, round(self.temperature, 4), round(self.top_p, 4), self.stop, self.seeded)


@dataclass
class GenResult:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (end of answer or a stop string) or "length" (max_new_tokens reached)
    blocked_by: str = ""  # set by the app when the safety filter replaced the text: "input:<rule>" or "output:<rule>"


def cut_at_stop(text: str, stop) -> tuple[str, bool]:
    """TEXT up to the first stop string (excluded, as OpenAI's API does), and whether one was found."""
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)


# --------------------------------------------------------------------------- engines


class Engine:
    """What every engine shares: the tokenizer, what was loaded (INFO), the tokens that end an answer.

    Subclasses set ``runtime`` and add ``generate_batch(requests)`` and ``stream(request, should_stop)``.
    """

    def __init__(self, tokenizer, info: dict):
        self.tokenizer, self.info = tokenizer, info
        self.stop_ids = models.stop_token_ids(tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _result(self, new_ids: list[int], request: GenRequest) -> GenResult:
        tokens = new_ids[:request.max_new_tokens]
        ended = any(t in self.stop_ids for t in tokens)
        if ended:
            tokens = tokens[:min(tokens.index(t) for t in self.stop_ids if t in tokens)]
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
        reason = "stop" if ended or stopped or len(tokens) < request.max_new_tokens else "length"
        return GenResult(text.strip(), len(tokens), reason)


class TorchEngine(Engine):
    """A transformers model: batched greedy or sampled generation, and token-by-token streaming."""

    runtime = "PyTorch"

    def __init__(self, model, tokenizer, info: dict):
        self.model = model.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(tokenizer, info)

    def generate_batch(self, requests: list[GenRequest]) -> list[GenResult]:
        """Answer REQUESTS (same sampling settings) in one left-padded ``generate`` call."""
        import torch

        width = max(len(r.prompt_ids) for r in requests)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
        settings = self._settings(requests[0], max(r.max_new_tokens for r in requests), [r.seed for r in requests])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                      **settings)
        return [self._result(row[width:].tolist(), r) for row, r in zip(out, requests)]

    def stream(self, request: GenRequest, should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Yield the answer's text piece by piece while ``generate`` runs in this thread's helper."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):  # lets the caller stop generation (client gone, filter fired)
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        settings = self._settings(request, request.max_new_tokens)
        ids = torch.tensor([request.prompt_ids], device=self.model.device)
        worker = threading.Thread(target=self._generate_quietly, daemon=True, kwargs=dict(
            input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancelled()]), **settings))
        worker.start()
        yield from streamer
        worker.join()

    def _generate_quietly(self, **kwargs):
        import torch

        with torch.no_grad():
            self.model.generate(**kwargs)

    def _settings(self, request: GenRequest, max_new_tokens: int, seeds: list | None = None) -> dict:
        """``generate``'s settings for REQUEST's sampling; SEEDS (one per row) if the rows are seeded."""
        sampled = request.temperature > 0 and not request.seeded
        settings = dict(max_new_tokens=max_new_tokens, do_sample=sampled, use_cache=True,
                        pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids)
        if sampled:
            settings.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        else:  # greedy, or seeded sampling done as greedy on noisy scores: silence generation_config's defaults
            settings.update(temperature=None, top_p=None, top_k=None)
        if request.seeded:
            settings.update(logits_processor=seeded_sampling(request.temperature, request.top_p, seeds or [request.seed]))
        if request.stop:  # transformers stops each sequence at the first stop string it produces
            settings.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        return settings


def seeded_sampling(temperature: float, top_p: float, seeds: list[int]):
    """Sampling that each row repeats from its own seed, whatever else shares its batch.

    ``generate(do_sample=True)`` draws every row from one random generator, so a row's answer depends
    on which requests happened to share its batch. Here each row gets its own generator, and sampling
    is done with the Gumbel-max trick: the argmax of (logits / temperature + Gumbel noise) is a draw from
    softmax(logits / temperature) (Gumbel 1954; see Huijben et al. 2022, "A Review of the Gumbel-max
    Trick"), so ``generate`` runs greedily on noisy scores. transformers has no per-row generator,
    which is why this processor exists; its temperature and top-p steps are transformers' own.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    class GumbelNoise(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

        def __call__(self, input_ids, scores):
            # -log(E) with E ~ Exp(1) is Gumbel noise; row i's draws come from row i's generator only
            noise = torch.stack([torch.empty(scores.shape[-1]).exponential_(generator=g) for g in self.generators])
            return scores - noise.log().to(scores.device, scores.dtype)

    steps = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
    return LogitsProcessorList(steps + [GumbelNoise()])


class RunnerEngine(Engine):
    """An ONNX graph (ONNX Runtime) or a GGUF file (llama.cpp): greedy, one request at a time.

    These runtimes come with their own decoding loop (``course_lib.runtimes``' runners), so there
    is no batching and no sampling here: temperature and top_p are ignored, as ``GET /model`` says.
    """

    def __init__(self, runner, tokenizer, info: dict):
        self.runner = runner
        self.runtime = runner.runtime
        super().__init__(tokenizer, info)

    def generate_batch(self, requests: list[GenRequest]) -> list[GenResult]:
        results = []
        for r in requests:
            new = list(self.runner.stream(r.prompt_ids, r.max_new_tokens, self.stop_ids))
            results.append(self._result(new, r))
        return results

    def stream(self, request: GenRequest, should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        sent, new = "", []
        for token in self.runner.stream(request.prompt_ids, request.max_new_tokens, self.stop_ids):
            if token in self.stop_ids or should_stop():
                break
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                yield text[len(sent):]
                sent = text


# --------------------------------------------------------------------------- loading artifacts


def describe_artifact(spec: str) -> tuple[str, Path | None]:
    """What SPEC names: ("preset", None) for a preset or hub id, or (kind, folder-or-file).

    kinds: run (a course run directory), adapter, full (a full fine-tune), merged (a transformers
    folder, possibly bitsandbytes-quantized), onnx, gguf.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".onnx")):
            raise FileNotFoundError(f"--model {spec}: no such file or folder.")
        return "preset", None
    if path.is_file():
        kinds = {".gguf": "gguf", ".onnx": "onnx"}
        if path.suffix not in kinds:
            raise ValueError(f"--model {spec}: a file must be a .gguf or .onnx model.")
        return kinds[path.suffix], path
    if (path / runs.TRAIN_FILE).exists():
        method = runs.read_config(path).get("method")
        return ("full" if method == "full" else "adapter"), path
    if (path / "model.onnx").exists():
        return "onnx", path / "model.onnx"
    if ggufs := sorted(path.glob("*.gguf")):
        return "gguf", ggufs[0]
    if (path / "config.json").exists():
        return "merged", path
    if (path / "train").is_dir():
        return "run", path
    raise ValueError(f"--model {spec}: this folder holds no model (no config.json, adapter, .onnx or .gguf).")


def persona_adapter(run_dir: Path) -> Path:
    """The model notebook 02 trained in RUN_DIR (the folders ``train.ensure_adapter`` looks in)."""
    if folder := runs.find_adapter(run_dir):
        return folder
    raise FileNotFoundError(f"{run_dir} holds no trained adapter: run notebook 02 first, or pass a preset.")


def _tokenizer_near(path: Path):
    """A tokenizer for a bare ONNX/GGUF file: beside it, in notebook 04's merged folder, or the default."""
    from transformers import AutoTokenizer

    for folder in (path.parent, path.parent.parent / "merged"):
        if (folder / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(folder)
    return models.load_tokenizer()


def load_engine(spec: str, threads: int | None = None):
    """Load SPEC (preset, hub id, run directory, adapter, merged/quantized folder, .onnx, .gguf)."""
    kind, path = describe_artifact(spec)
    if kind == "run":
        kind, path = "adapter", persona_adapter(path)
    info = {"source": spec, "kind": kind}
    if kind in ("onnx", "gguf"):
        runner = runtimes.OnnxRunner(path, threads) if kind == "onnx" else runtimes.LlamaCppRunner(path, threads=threads)
        return RunnerEngine(runner, _tokenizer_near(path), info | {"path": str(path)})
    if kind in ("adapter", "full"):
        model, tokenizer = runs.load(path)
        info |= {"path": str(path), "trained": runs.read_config(path)}
    elif kind == "merged":
        model, tokenizer = _load_folder(path)
        info |= {"path": str(path)}
    else:
        model, tokenizer = models.load(spec)
    info["parameters"] = models.count_parameters(model)
    return TorchEngine(model, tokenizer, info)


def _load_folder(path: Path):
    """A transformers folder; a bitsandbytes-quantized one (notebook 04's nf4/bnb_int8) stays quantized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((path / "config.json").read_text())
    placement = {"device_map": {"": "cpu"}} if "quantization_config" in config else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", **placement)
    tokenizer_dir = path if (path / "tokenizer_config.json").exists() else path.parent / "merged"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return model, tokenizer


# --------------------------------------------------------------------------- the batcher


@dataclass
class Job:
    request: GenRequest
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """One worker thread that serves queued jobs in batches of up to MAX_BATCH compatible requests.

    ``submit`` returns a concurrent Future (awaitable from asyncio with ``asyncio.wrap_future``).
    A job whose future was cancelled (its client timed out) is skipped, never computed. Jobs are
    served in the order they came: one that cannot join the batch being formed (other sampling
    settings) waits at the head of the line for the next batch.

    The batcher also times itself: ``step_s`` is the measured time of one generation step of a
    full batch (a warm-up batch first, then the batches it serves), and ``estimate_wait`` turns it
    into how long a new request would wait. The server uses it to refuse at once, with a time to
    retry, a request it could not answer before the client's time-out.
    """

    def __init__(self, engine, max_batch: int = 8, wait_ms: float = 5.0, max_queue: int = 256):
        self.engine, self.max_batch, self.wait = engine, max_batch, wait_ms / 1000
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.held: deque[Job | None] = deque()  # taken from the queue, waiting for a batch with their settings
        self.lock = threading.Lock()  # streaming requests take the model while they run
        self.batches: list[int] = []  # sizes of the batches served (the notebook plots them)
        self.step_s: float | None = None  # seconds per generation step of a full batch, measured
        self.busy_until = 0.0  # when the batch being computed should end (perf_counter)
        self.thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, request: GenRequest) -> Future:
        job = Job(request)
        self.jobs.put_nowait(job)  # queue.Full when the server is saturated: the caller answers 503
        return job.future

    def pending(self) -> int:
        return self.jobs.qsize() + len(self.held)

    def warm_up(self, prompt_ids: list[int], tokens: int = 8) -> float:
        """Time one full batch before the first client, so that ``estimate_wait`` has a speed to go by."""
        requests = [GenRequest(list(prompt_ids), tokens) for _ in range(self.max_batch)]
        start = time.perf_counter()
        with self.lock:
            results = self.engine.generate_batch(requests)
        self._timed(len(requests), results, tokens, time.perf_counter() - start)
        return self.step_s

    def estimate_wait(self, max_new_tokens: int) -> float | None:
        """Seconds until a request submitted now is answered: the batch in flight, then one full batch
        per MAX_BATCH requests ahead of it, each as long as this one (None before any measurement)."""
        if self.step_s is None:
            return None
        rounds = self.pending() // self.max_batch + 1
        return max(0.0, self.busy_until - time.perf_counter()) + rounds * self.step_s * max_new_tokens

    def close(self):
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _timed(self, size: int, results: list[GenResult], max_new_tokens: int, seconds: float) -> None:
        # Steps run until every answer has stopped: the longest answer, plus its stop token.
        steps = min(max_new_tokens, max((r.completion_tokens for r in results), default=0) + 1)
        if size >= max(1, self.max_batch // 2):  # smaller batches step faster: they would make estimates short
            step = seconds / steps
            self.step_s = step if self.step_s is None else 0.7 * self.step_s + 0.3 * step

    def _next(self) -> Job | None:
        return self.held.popleft() if self.held else self.jobs.get()

    def _work(self):
        while (first := self._next()) is not None:
            batch = [first] + self._compatible(first)
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            tokens = max(j.request.max_new_tokens for j in batch)
            start = time.perf_counter()
            self.busy_until = start + (self.step_s or 0.0) * tokens
            try:
                with self.lock:
                    results = self.engine.generate_batch([j.request for j in batch])
                self._timed(len(batch), results, tokens, time.perf_counter() - start)
                self.batches.append(len(batch))
                for job, result in zip(batch, results):
                    job.future.set_result(result)
            except Exception as error:  # every caller of the batch gets the error, the worker lives on
                for job in batch:
                    job.future.set_exception(error)
            finally:
                self.busy_until = 0.0

    def _compatible(self, first: Job) -> list[Job]:
        """Jobs that share FIRST's sampling settings: those already waiting, then new ones that arrive
        within the wait window. The others keep their place in the line, oldest first."""
        key = first.request.sampling_key()
        taken, skipped = [], []
        held, self.held = list(self.held), deque()
        for job in held:
            fits = job is not None and len(taken) < self.max_batch - 1 and job.request.sampling_key() == key
            (taken if fits else skipped).append(job)
        deadline = time.perf_counter() + self.wait
        while len(taken) < self.max_batch - 1:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None or job.request.sampling_key() != key:
                skipped.append(job)
                if job is None:  # closing: serve this batch, then the worker stops at the sentinel
                    break
                continue
            taken.append(job)
        self.held.extend(skipped)
        return taken
