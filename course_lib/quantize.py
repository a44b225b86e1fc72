"""The quantize stage: merge the trained adapter, then make the model smaller (and maybe faster),
and measure every variant the same way.

    data = quantize.eval_data(tokenizer, run_dir)          # the same inputs for every variant
    merged = quantize.merge(adapter_dir, run_dir / "quantize" / "merged", data)  # adapter folded in
    bench = quantize.Bench(merged.folder, tokenizer, data, run_dir / "quantize")
    bench.run("nf4"); bench.table(); bench.claims()

Variants (``VARIANTS``): the fp32 model you start from (the baseline), bf16, PyTorch dynamic INT8,
bitsandbytes LLM.int8 and NF4 (double quantization), magnitude pruning, an ONNX export run by ONNX
Runtime, and a GGUF file run by llama.cpp. Each one is measured on the same things: size on disk,
weight memory, perplexity on the validation answers, persona score, decoding speed (ms/token), and
how far its logits move from the baseline's.

GGUF needs llama.cpp's converter, which ships only in the llama-cpp-python *source* package: fetch
it once at install time (``python -m course_lib.quantize fetch-converter``); nothing downloads
while a notebook runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import models, paths, runs, runtimes, train, versions
from course_lib.models import stop_token_ids
from course_lib.runtimes import LlamaCppRunner, OnnxRunner, TorchRunner, llama_cpp_available

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

VARIANTS = ("fp32", "bf16", "int8_dynamic", "bnb_int8", "nf4", "pruned", "onnx", "gguf")
# What notebook 04 measures by default (bf16 is one click away in its panel).
DEFAULT_VARIANTS = ("fp32", "int8_dynamic", "bnb_int8", "nf4", "pruned", "onnx", "gguf")
RUNTIMES = {"onnx": "ONNX Runtime", "gguf": "llama.cpp"}
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # what llama.cpp's converter writes by itself
LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python release whose sdist the converter comes from
IGNORE = -100
REFERENCE_EXAMPLES = 4  # validation examples whose logits every variant is compared on, position by position


# --------------------------------------------------------------------------- small helpers


def weight_files_bytes(path) -> int:
    """Bytes of the weight files only (what the size claims are about), not tokenizer or config."""
    path = Path(path)
    suffixes = {".safetensors", ".pt", ".bin", ".onnx", ".gguf", ".data"}
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in suffixes)


def weight_bytes(model) -> int:
    """Bytes the model's weights take in memory, counting a shared (tied) tensor once.

    Walks the state dict rather than ``parameters()``: quantized layers keep their int8/uint8
    weights and scales in buffers or packed objects that ``parameters()`` does not list.
    """
    import torch

    seen, total = set(), 0

    def add(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = (value.untyped_storage().data_ptr() if value.numel() else id(value), value.dtype, value.numel())
            if key not in seen:
                seen.add(key)
                total += value.numel() * value.element_size()
        elif isinstance(value, (tuple, list)):
            for item in value:
                add(item)

    for value in model.state_dict().values():
        add(value)
    return total


def _free(*objects) -> None:
    for obj in objects:
        close = getattr(obj, "close", None)
        if callable(close):
            close()
    gc.collect()


# --------------------------------------------------------------------------- 1. the adapter and the merge


@dataclass
class MergeResult:
    folder: Path
    base_model: str
    ppl_unmerged: float
    ppl_merged: float
    max_abs_logit_diff: float
    seconds: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_merged / self.ppl_unmerged

    def __str__(self) -> str:
        return (f"perplexity with the adapter on the side: {self.ppl_unmerged:.4f}   merged into the weights: "
                f"{self.ppl_merged:.4f}   ratio {self.ppl_ratio:.4f}   largest logit difference "
                f"{self.max_abs_logit_diff:.1e}   ({self.seconds:.0f} s)")


def load_unmerged(adapter_dir, dtype="float32"):
    """Base model (full precision, even for a QLoRA adapter) + adapter on the side -> (model, tokenizer, cfg)."""
    cfg = runs.read_config(adapter_dir)
    if cfg["method"] not in ("lora", "qlora", "full"):
        raise ValueError(f"{adapter_dir}: a {cfg['method']} adapter cannot be merged into the weights "
                         "(prompt tuning adds virtual tokens, not weight updates); train LoRA or QLoRA.")
    # A QLoRA adapter was trained against 4-bit weights; we merge it into the full-precision ones
    # (merging into 4-bit weights would round the update away), as a deployment pipeline does.
    model, tokenizer = runs.load(adapter_dir, device="cpu", dtype=dtype, full_precision=True)
    return model, tokenizer, cfg


def merge(adapter_dir, out_dir, data: EvalData | None = None, examples: int = 16) -> MergeResult:
    """Fold the adapter's B·A into the base weights and save a standard model folder.

    Measures perplexity before and after on DATA's validation examples (the first EXAMPLES of
    them): merging is exact algebra (W + B·A·alpha/r), so the ratio must be 1.000 up to rounding.
    """
    started = time.perf_counter()
    with runtimes.quiet():
        model, tokenizer, cfg = load_unmerged(adapter_dir)
    if data is None:
        data = eval_data(tokenizer, ppl_examples=examples, persona_questions=0)
    subset = data.examples[:examples]
    before = TorchRunner(model)
    ppl_before, logits_before = perplexity(before, subset, keep_logits=2)
    merged = model.merge_and_unload() if cfg["method"] != "full" else model
    ppl_after, logits_after = perplexity(TorchRunner(merged), subset, keep_logits=2)
    diff = max(float(abs(a - b).max()) for a, b in zip(logits_before, logits_after))
    out = Path(out_dir)
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    with runtimes.quiet():
        merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "course_merge.json").write_text(json.dumps(
        {"adapter": str(adapter_dir), "base_model": cfg["model"], "method": cfg["method"]}, indent=2))
    shutil.rmtree(out, ignore_errors=True)  # derived from the adapter: rebuilt, never the learner's own work
    staging.rename(out)
    _free(merged, model)
    return MergeResult(out, cfg["model"], ppl_before, ppl_after, diff, time.perf_counter() - started)


# --------------------------------------------------------------------------- 2. what we measure


@dataclass
class EvalData:
    """The same inputs for every variant: validation answers, persona questions, a latency prompt."""

    examples: list  # (input_ids, labels) pairs; labels -100 outside the assistant's answer
    items: list  # persona questions with their keywords (course_lib.evaluate)
    prompts: list  # each question rendered by the chat template, as token ids
    latency_prompt: list
    stop_ids: list
    max_new_tokens: int = 40
    latency_tokens: int = 32

    def describe(self) -> str:
        tokens = sum(sum(l != IGNORE for l in labels) for _, labels in self.examples)
        return (f"perplexity: {len(self.examples)} validation examples, {tokens} answer tokens; persona score: "
                f"{len(self.items)} questions, greedy, {self.max_new_tokens} new tokens at most; speed: "
                f"{self.latency_tokens} tokens decoded after a {len(self.latency_prompt)}-token prompt")


def _chat_ids(tokenizer, question: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def eval_data(tokenizer, run_dir=None, ppl_examples: int = 32, persona_questions: int = 12,
              max_new_tokens: int = 40, latency_tokens: int = 32) -> EvalData:
    """Build the shared measurement inputs from the validation split and the persona eval set."""
    from course_lib import batches, data, evaluate

    validation = data.load_split(data.ensure_dataset(paths.run_dir(run_dir)))["validation"]
    validation = validation.select(range(min(ppl_examples, len(validation))))
    tokenized = batches.tokenize(validation.select_columns(["messages"]), tokenizer)
    examples = [(list(ex["input_ids"]), list(ex["labels"])) for ex in tokenized]
    items = evaluate.load_eval_set("persona")[:persona_questions] if persona_questions else []
    return EvalData(examples=examples, items=items, prompts=[_chat_ids(tokenizer, i["question"]) for i in items],
                    latency_prompt=_chat_ids(tokenizer, "Tell me about tomatoes in a few sentences."),
                    stop_ids=stop_token_ids(tokenizer), max_new_tokens=max_new_tokens, latency_tokens=latency_tokens)


def nll(logits, labels) -> tuple[float, int]:
    """Summed negative log-likelihood of the answer tokens and their count (logits: [T, V] numpy)."""
    import numpy as np

    labels = np.asarray(labels)
    targets = labels[1:]  # position t predicts token t+1
    keep = targets != IGNORE
    if not keep.any():
        return 0.0, 0
    rows = np.asarray(logits[:-1], dtype=np.float64)[keep]
    peak = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
    return float((log_z - rows[np.arange(len(rows)), targets[keep]]).sum()), int(keep.sum())


def perplexity(runner, examples, keep_logits: int = 0):
    """exp(mean NLL over every answer token of EXAMPLES), and the logits of the first KEEP_LOGITS examples."""
    total, count, kept = 0.0, 0, []
    for i, (ids, labels) in enumerate(examples):
        logits = runner.logits(ids)
        if i < keep_logits:
            kept.append(logits)
        loss, n = nll(logits, labels)
        total, count = total + loss, count + n
    ppl = math.exp(total / count) if count else float("nan")
    return (ppl, kept) if keep_logits else ppl


def ms_per_token(runners, prompt: list[int], tokens: int = 32, rounds: int = 1) -> list[float]:
    """Decoding speed of each runner: (time for TOKENS new tokens - time for 1) / (TOKENS - 1).

    Subtracting the one-token run removes the prompt's processing, so this is the per-token cost a
    chat user feels while the answer streams (greedy, one sequence, end-of-text ignored). Several
    runners are timed side by side, in turns: on a shared machine whose load changes by the
    minute, only measurements taken together can be compared.
    """
    def timed(runner, n):
        start = time.perf_counter()
        runner.greedy(prompt, n, stop_ids=())
        return time.perf_counter() - start

    runners = list(runners) if isinstance(runners, (list, tuple)) else [runners]
    for runner in runners:
        runner.greedy(prompt, 1, stop_ids=())  # warm-up: first calls allocate memory and pick kernels
    one, many = [float("inf")] * len(runners), [float("inf")] * len(runners)
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            one[i] = min(one[i], timed(runner, 1), timed(runner, 1))
            many[i] = min(many[i], timed(runner, tokens))
    result = []
    for o, m in zip(one, many):
        per_token = (m - o) / (tokens - 1) if tokens > 1 else m
        result.append(1000 * (per_token if per_token > 0 else m / tokens))  # tiny runs: noise can beat the difference
    return result


# --------------------------------------------------------------------------- 4. the variants


def prune_magnitude(model, sparsity: float) -> dict:
    """Zero the SPARSITY share of smallest-magnitude weights, globally over the decoder's linear layers.

    Global: one threshold for all layers, so layers with many small weights lose more. Embeddings,
    the (tied) output layer and the norms stay dense. Exactly ``round(sparsity * n)`` weights are
    zeroed (ties at the threshold are broken by position), so the measured sparsity is the asked one.
    """
    import torch

    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"]
    sizes = [w.numel() for w in weights]
    k = round(sparsity * sum(sizes))
    with torch.no_grad():
        if k:
            magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
            drop = torch.topk(magnitudes, k, largest=False, sorted=False).indices
            mask = torch.ones_like(magnitudes, dtype=torch.bool)
            mask[drop] = False
            del magnitudes, drop
            for w, part in zip(weights, torch.split(mask, sizes)):
                w.mul_(part.view_as(w))
        zeros = sum(int((w == 0).sum()) for w in weights)
    return {"asked": sparsity, "measured": zeros / sum(sizes), "pruned_weights": zeros, "prunable": sum(sizes)}


def export_onnx(model, path) -> Path:
    """Export MODEL with its KV cache as inputs/outputs, so ONNX Runtime can decode token by token.

    The graph takes input_ids plus past keys/values of every layer and returns logits plus the
    updated keys/values. Exported with the TorchScript-based exporter (``dynamo=False``, opset 17):
    fast here, and it traces the general path (a prompt after earlier tokens) that covers every
    later call; the parity check against PyTorch is what proves it.
    """
    import torch
    from transformers import DynamicCache

    class WithCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, *past):
            cache = DynamicCache(ddp_cache_data=[(past[i], past[i + 1]) for i in range(0, len(past), 2)])
            out = self.inner(input_ids=input_ids, past_key_values=cache, use_cache=True)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    cfg = model.config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    names_in = ["input_ids"] + [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    names_out = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes = {"input_ids": {1: "sequence"}, "logits": {1: "sequence"},
            **{n: {2: "past_sequence"} for n in names_in[1:]}, **{n: {2: "total_sequence"} for n in names_out[1:]}}
    # Example shapes matter for a tracer: 3 earlier tokens and a 4-token input take the general branch.
    example = (torch.zeros(1, 4, dtype=torch.long), *[torch.zeros(1, kv_heads, 3, head_dim) for _ in names_in[1:]])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), runtimes.quiet():
        torch.onnx.export(WithCache(model.eval()), example, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def converter_dir() -> Path:
    """Where ``fetch-converter`` puts llama.cpp's converter (``COURSE_GGUF_CONVERTER`` overrides)."""
    return Path(os.environ.get("COURSE_GGUF_CONVERTER", paths.cache_dir() / "llama.cpp")).expanduser()


def converter_available() -> str | None:
    """None if llama.cpp's converter is in place, else one sentence saying how to get it."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if script.exists():
        return None
    return (f"llama.cpp's converter is not in {script.parent}: run `python -m course_lib.quantize fetch-converter` "
            "once (make install does), then re-run this cell.")


def fetch_converter(dest=None, sdist=None, version: str | None = None) -> Path:
    """Copy llama.cpp's ``convert_hf_to_gguf.py`` (+ its ``conversion`` and ``gguf-py`` packages) into DEST.

    Neither the gguf wheel nor the llama-cpp-python wheel contains the converter; the llama-cpp-python
    source package does, under vendor/llama.cpp/. With no SDIST given, pip downloads that source
    package (an install step, ~75 MB; never done while a notebook runs).
    """
    dest = Path(dest) if dest else converter_dir()
    if version is None:
        try:
            from importlib.metadata import version as installed

            version = installed("llama-cpp-python")
        except Exception:
            version = LLAMA_CPP_VERSION
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                            f"llama-cpp-python=={version}", "-d", tmp], check=True)
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tmp) / "converter"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = member.name.split("/vendor/llama.cpp/", 1)
                if len(parts) == 2 and parts[1].startswith(wanted) and (member.isfile() or member.isdir()):
                    member.name = parts[1]
                    archive.extract(member, staging, filter="data")
        if not (staging / "convert_hf_to_gguf.py").exists():
            raise FileNotFoundError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        (staging / "SOURCE.txt").write_text(f"from {Path(sdist).name}: vendor/llama.cpp (MIT licence, see LICENSE)\n")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, dest)
    return dest


def convert_gguf(model_dir, out_file, outtype: str = "q8_0") -> Path:
    """Run llama.cpp's converter on a model folder (subprocess; ~10-30 s for a 135M model)."""
    if outtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type must be one of {GGUF_TYPES}, not {outtype!r}")
    missing = converter_available()
    if missing:
        raise FileNotFoundError(missing)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(converter_dir() / "convert_hf_to_gguf.py"), str(model_dir),
                           "--outfile", str(out_file), "--outtype", outtype],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 or not out_file.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"llama.cpp's converter failed on {model_dir}:\n{tail}")
    return out_file


def gguf_contents(path) -> dict:
    """What a GGUF file holds: tensors per type, their MB, and the metadata (tokenizer, template...)."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types, tensor_bytes = Counter(), 0
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] += 1
        tensor_bytes += int(tensor.n_bytes)
    size = Path(path).stat().st_size
    return {"tensors": dict(types), "tensor_mb": tensor_bytes / 1e6, "metadata_mb": (size - tensor_bytes) / 1e6,
            "chat_template": "tokenizer.chat_template" in reader.fields,
            "vocabulary": len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0}


@dataclass
class Built:
    """One variant, ready to measure: how to run it, what it takes on disk and in memory."""

    variant: str
    runner: object
    disk_bytes: int
    memory_bytes: int
    files: Path
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _load_fp32(model_dir, dtype="float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()


def build(variant: str, model_dir, work_dir, sparsity: float = 0.2, gguf_type: str = "q8_0",
          double_quant: bool = True, int8_skip: tuple = (), runnable: bool = True) -> Built:
    """Make VARIANT of the merged model in MODEL_DIR, saving its files under WORK_DIR/VARIANT.

    ``int8_skip``: Linear layers whose name contains one of these stay fp32 in ``int8_dynamic``
    (e.g. ``("down_proj",)``); ``runnable=False`` only writes the files (for a size check).
    """
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    model_dir, out = Path(model_dir), Path(work_dir) / variant
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with runtimes.quiet():
        if variant == "fp32":
            model = _load_fp32(model_dir)
            return Built(variant, TorchRunner(model), weight_files_bytes(model_dir), weight_bytes(model), model_dir)
        if variant == "bf16":
            model = _load_fp32(model_dir, "bfloat16")
            model.save_pretrained(out)
            return Built(variant, TorchRunner(model), weight_files_bytes(out), weight_bytes(model), out)
        if variant == "int8_dynamic":
            from torch.ao.quantization import quantize_dynamic

            # Every nn.Linear gets int8 weights (one scale per tensor); activations are quantized on
            # the fly, per batch. The embedding is not a Linear: it stays fp32 (and the output layer,
            # which shared it, gets its own int8 copy).
            model = _load_fp32(model_dir)
            layers = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                      and not any(part in name for part in int8_skip)}
            model = quantize_dynamic(model, layers, dtype=torch.qint8)
            torch.save(model.state_dict(), out / "model_int8_dynamic.pt")
            skipped = [f"{', '.join(int8_skip)} kept fp32"] if int8_skip else []
            return Built(variant, TorchRunner(model), weight_files_bytes(out), weight_bytes(model), out,
                         notes=["embedding stays fp32, output layer gets an int8 copy"] + skipped)
        if variant in ("bnb_int8", "nf4"):
            from transformers import AutoModelForCausalLM, BitsAndBytesConfig

            # bitsandbytes quantizes the Linear layers of the decoder; it keeps the embedding and the
            # output layer (tied to it) in full precision: they are sensitive and one matrix.
            quant = BitsAndBytesConfig(load_in_8bit=True) if variant == "bnb_int8" else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                bnb_4bit_compute_dtype=torch.float32)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=quant,
                                                         device_map={"": "cpu"}).eval()
            model.save_pretrained(out)
            return Built(variant, TorchRunner(model), weight_files_bytes(out), weight_bytes(model), out,
                         notes=["embedding stays fp32"])
        if variant == "pruned":
            model = _load_fp32(model_dir)
            stats = prune_magnitude(model, sparsity)
            model.save_pretrained(out)
            return Built(variant, TorchRunner(model), weight_files_bytes(out), weight_bytes(model), out,
                         notes=[f"{stats['measured']:.0%} of decoder weights zero, stored densely"], extra=stats)
        if variant == "onnx":
            model = _load_fp32(model_dir)
            path = export_onnx(model, out / "model.onnx")
            _free(model)
            size = weight_files_bytes(out)
            return Built(variant, OnnxRunner(path) if runnable else None, size, size, out,
                         notes=["tied embedding stored twice"])
    # gguf
    path = convert_gguf(model_dir, out / f"model-{gguf_type}.gguf", gguf_type)
    missing = llama_cpp_available()
    runner = LlamaCppRunner(path) if runnable and not missing else None
    metadata = gguf_contents(path)["metadata_mb"]
    return Built(variant, runner, path.stat().st_size, path.stat().st_size, out,
                 notes=[f"{gguf_type}; +{metadata:.1f} MB tokenizer and template"]
                 + (["not run: llama-cpp-python is not installed"] if missing and runnable else []))


def measure_size(variant: str, model_dir, work_dir, **options) -> float:
    """Build VARIANT's files only and return their size on disk in MB (for predict-then-measure)."""
    built = build(variant, model_dir, work_dir, runnable=False, **options)
    _free(built.runner)
    return built.disk_bytes / 1e6


def activation_outliers(model, examples, levels: int = 127):
    """What int8 with one scale per tensor does to each Linear layer's *input* (activations).

    Dynamic INT8 picks one scale per input tensor: scale = max|x| / LEVELS. When a few features
    are hundreds of times larger than the rest (a known trait of LLM activations, the reason
    LLM.int8 exists), the step becomes so coarse that most values round to zero. Per kind of
    projection, the worst layer: max|x|, median |x|, their ratio, and the share that rounds to 0.
    """
    import pandas as pd
    import torch

    stats: dict[str, list] = {}

    def hook(name):
        kind = name.rsplit(".", 1)[-1]

        def record(_module, inputs):
            x = inputs[0].detach().abs().flatten().float()
            step = x.max() / levels
            stats.setdefault(kind, []).append((float(x.max()), float(x.median()), float((x < step / 2).float().mean())))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"]
    try:
        with torch.no_grad():
            for ids, _ in examples:
                model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for kind, values in stats.items():
        peak, typical, zero = max(values, key=lambda v: v[0] / max(v[1], 1e-12))
        rows.append({"layer input of": kind, "max |x|": round(peak, 1), "median |x|": round(typical, 4),
                     "max / median": round(peak / max(typical, 1e-12)), "share rounded to 0 in int8": round(zero, 3)})
    return pd.DataFrame(rows).set_index("layer input of").sort_values("max / median")


# --------------------------------------------------------------------------- 5. measuring and the table


@dataclass
class Result:
    variant: str
    runtime: str
    size_mb: float
    weight_mb: float
    ppl: float = float("nan")
    persona_score: float = float("nan")
    ms_per_token: float = float("nan")
    max_abs_logit_diff: float = float("nan")
    top1_agreement: float = float("nan")
    build_s: float = 0.0
    measure_s: float = 0.0
    notes: str = ""
    answers: list = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def measure(built: Built, tokenizer, data: EvalData, reference=None, baseline_runner=None) -> Result:
    """Every figure of one variant.

    REFERENCE: the baseline's logits on the first examples (for the logit columns); BASELINE_RUNNER:
    the baseline, timed in turns with this variant so that their speed ratio is a fair one.
    """
    import numpy as np

    started = time.perf_counter()
    runtime = getattr(built.runner, "runtime", RUNTIMES.get(built.variant, "PyTorch"))
    result = Result(built.variant, runtime, built.disk_bytes / 1e6, built.memory_bytes / 1e6,
                    notes="; ".join(built.notes), extra=built.extra)
    if built.runner is None:  # written but cannot be run here (said in notes)
        return result
    ppl, kept = perplexity(built.runner, data.examples, keep_logits=REFERENCE_EXAMPLES)
    result.ppl = ppl
    result.extra = {**built.extra, "logits": kept}
    if reference is not None:
        result.max_abs_logit_diff = max(float(np.abs(a - b).max()) for a, b in zip(kept, reference))
        agree = [float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(kept, reference)]
        result.top1_agreement = float(np.mean(agree))
    if data.items:
        from course_lib import evaluate

        answers = built.runner.answers(tokenizer, data)
        result.persona_score = evaluate.score_answers("persona", data.items, answers).score
        result.answers = answers
    if data.latency_tokens:
        runners = [built.runner] + ([baseline_runner] if baseline_runner is not None else [])
        times = ms_per_token(runners, data.latency_prompt, data.latency_tokens)
        result.ms_per_token = times[0]
        if len(times) > 1:
            result.extra["baseline_ms_per_token"] = times[1]  # fp32, measured in the same minute
    result.measure_s = time.perf_counter() - started
    return result


SOURCE_NOTE = ("Note: the offline default's weights are a dequantized 4-bit (Q4_1) copy of SmolLM2-135M-Instruct, "
               "stored as fp32. Every ratio here is measured against that fp32 model (with the adapter merged), not "
               "against the original full-precision weights; re-quantizing weights that already went through a "
               "4-bit grid is not the same experiment, and its losses can differ either way from those of the hub "
               "copy (MODEL=\"HuggingFaceTB/SmolLM2-135M-Instruct\" online).")


class Bench:
    """Builds and measures variants of one merged model, remembering results (re-runs are free)."""

    def __init__(self, model_dir, tokenizer, data: EvalData, work_dir, sparsity: float = 0.2,
                 gguf_type: str = "q8_0", int8_skip: tuple = ()):
        self.model_dir, self.tokenizer, self.data = Path(model_dir), tokenizer, data
        self.work_dir, self.sparsity, self.gguf_type = Path(work_dir), sparsity, gguf_type
        self.int8_skip = tuple(int8_skip)
        self.split = parameter_split(model_dir)
        self.results: dict[str, Result] = {}
        self.skipped: dict[str, str] = {}
        self._reference = None
        self._baseline = None  # the fp32 runner, kept to time every variant beside it

    def _settings(self, variant: str) -> dict:
        return {"pruned": {"sparsity": self.sparsity}, "gguf": {"gguf_type": self.gguf_type},
                "int8_dynamic": {"int8_skip": self.int8_skip}}.get(variant, {})

    def run(self, variant: str, sparsity: float | None = None, gguf_type: str | None = None,
            int8_skip: tuple | None = None) -> Result | None:
        """Build and measure VARIANT (the fp32 baseline first, if not yet measured)."""
        self.sparsity = self.sparsity if sparsity is None else sparsity
        self.gguf_type = gguf_type or self.gguf_type
        self.int8_skip = self.int8_skip if int8_skip is None else tuple(int8_skip)
        if variant != "fp32" and "fp32" not in self.results:
            self.run("fp32")
        cached = self.results.get(variant)
        if cached is not None and cached.settings == self._settings(variant):
            return cached
        if variant == "gguf" and converter_available():
            self.skipped[variant] = converter_available()
            print(f"gguf skipped: {self.skipped[variant]}")
            return None
        started = time.perf_counter()
        built = build(variant, self.model_dir, self.work_dir, sparsity=self.sparsity, gguf_type=self.gguf_type,
                      int8_skip=self.int8_skip)
        build_s = time.perf_counter() - started
        try:
            result = measure(built, self.tokenizer, self.data, reference=self._reference,
                             baseline_runner=self._baseline if variant != "fp32" else None)
        finally:
            if variant != "fp32":
                _free(built.runner)
                built.runner = None
        result.build_s, result.settings = build_s, self._settings(variant)
        if variant == "fp32":
            self._reference, self._baseline = result.extra.get("logits"), built.runner
            result.max_abs_logit_diff, result.top1_agreement = 0.0, 1.0
        self.results[variant] = result
        return result

    def show(self, variant: str, wanted=VARIANTS):
        """Build and measure VARIANT if it is among WANTED (the notebook's VARIANTS), then its table row."""
        if variant not in wanted:
            return f"{variant} is not in VARIANTS: skipped (add it to the parameters cell to measure it)."
        self.run(variant)
        return self.row(variant)

    @property
    def model(self):
        """The fp32 baseline model (transformers), loaded once for the whole bench."""
        if self._baseline is None:
            self.run("fp32")
        return self._baseline.model

    def close(self):
        """Free the fp32 model kept for side-by-side timing."""
        _free(self._baseline)
        self._baseline = None

    def run_many(self, variants, **settings) -> object:
        for variant in variants:
            self.run(variant, **settings)
        return self.table([v for v in variants if v in self.results])

    def row(self, variant: str):
        """One variant's line of the table (a DataFrame), or a sentence if it was skipped."""
        if variant in self.results:
            return self.table([variant])
        return self.skipped.get(variant, f"{variant} not measured: add it to VARIANTS.")

    def table(self, variants=None):
        """The comparison table: one row per measured variant, ratios against the fp32 baseline."""
        import pandas as pd

        base = self.results.get("fp32")
        rows = []
        for variant in variants or [v for v in VARIANTS if v in self.results]:
            r = self.results[variant]
            rows.append({
                "variant": variant, "runtime": r.runtime,
                "predicted MB": None if r.settings.get("int8_skip") else
                round(predict_bytes(variant, self.split, r.settings.get("gguf_type", "q8_0")) / 1e6, 1),
                "size MB": round(r.size_mb, 1),
                "size ratio": _ratio(r.size_mb, base.size_mb if base else None),
                "weight memory MB": round(r.weight_mb, 1), "perplexity": _round(r.ppl, 3),
                "ppl ratio": _ratio(r.ppl, base.ppl if base else None),
                "persona score": _round(r.persona_score, 2), "ms/token": _round(r.ms_per_token, 1),
                "ms/token ratio": _round(self.ratio(variant, "ms_per_token"), 2),
                "max |Δlogit| vs fp32": _round(r.max_abs_logit_diff, 4),
                "top-1 agreement": _round(r.top1_agreement, 3), "notes": r.notes,
            })
        return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()

    def ratio(self, variant: str, what: str) -> float:
        """VARIANT's WHAT over the fp32 baseline's; speed against fp32 timed in the same minute."""
        base, r = self.results.get("fp32"), self.results.get(variant)
        if base is None or r is None:
            return float("nan")
        reference = getattr(base, what)
        if what == "ms_per_token":
            reference = r.extra.get("baseline_ms_per_token", reference)
        return getattr(r, what) / reference if reference and reference == reference else float("nan")

    def figures(self) -> dict:
        """Per variant: size_mb, size_ratio, ppl_ratio, ms_per_token, persona_score (for nb.record)."""
        out = {}
        for variant, r in self.results.items():
            out.update({f"{variant}_size_mb": round(r.size_mb, 2), f"{variant}_size_ratio": self.ratio(variant, "size_mb"),
                        f"{variant}_ppl_ratio": self.ratio(variant, "ppl"), f"{variant}_ms_per_token": r.ms_per_token,
                        f"{variant}_persona_score": r.persona_score,
                        f"{variant}_ms_per_token_ratio": self.ratio(variant, "ms_per_token")})
        if "onnx" in self.results:
            out["onnx_max_abs_logit_diff"] = self.results["onnx"].max_abs_logit_diff
            out["onnx_top1_agreement"] = self.results["onnx"].top1_agreement
        if "pruned" in self.results:
            out["pruned_sparsity_measured"] = self.results["pruned"].extra.get("measured")
        return out

    def claims(self):
        """The seeds' claims beside what this machine measured, and whether each one holds here."""
        import pandas as pd

        rows = []
        for claim, variant, check in CLAIMS:
            if variant not in self.results or (variant != "fp32" and "fp32" not in self.results):
                continue
            checked = check(self, variant)
            if checked is None:  # a figure this claim needs was not measured (e.g. no llama.cpp here)
                continue
            measured, holds = checked
            rows.append({"claim": claim, "variant": variant, "measured here": measured, "holds here?": holds})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line per measured variant: size, perplexity, persona and speed, with their ratios."""
        lines = []
        for variant in [v for v in VARIANTS if v in self.results]:
            r = self.results[variant]
            lines.append(f"{variant:>13}: {r.size_mb:7.1f} MB (x{self.ratio(variant, 'size_mb'):.2f})   "
                         f"perplexity x{self.ratio(variant, 'ppl'):.3f}   persona {r.persona_score:.2f}   "
                         f"{r.ms_per_token:6.1f} ms/token (x{self.ratio(variant, 'ms_per_token'):.2f})")
        return "\n".join(lines)

    def answers(self, variants=("fp32", "nf4", "gguf"), n: int = 3):
        """The first N persona questions with each variant's greedy answer (a DataFrame)."""
        import pandas as pd

        shown = [v for v in variants if v in self.results and self.results[v].answers]
        rows = [{"question": item["question"], **{v: self.results[v].answers[i] for v in shown}}
                for i, item in enumerate(self.data.items[:n])]
        return pd.DataFrame(rows)

    def plot(self):
        """Size against perplexity ratio and decoding speed, one point per variant."""
        import matplotlib.pyplot as plt

        fig, (ax_q, ax_s) = plt.subplots(1, 2, figsize=(10, 3.6))
        for variant, r in self.results.items():
            ppl_ratio, speed = self.ratio(variant, "ppl"), r.ms_per_token
            if ppl_ratio == ppl_ratio:
                ax_q.scatter(r.size_mb, ppl_ratio)
                ax_q.annotate(variant, (r.size_mb, ppl_ratio), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if speed == speed:
                ax_s.barh(variant, speed, color="tab:green" if speed <= self.results["fp32"].ms_per_token else "tab:red")
        ax_q.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax_q.set(xlabel="size on disk (MB)", ylabel="perplexity / fp32 perplexity", title="smaller vs. worse")
        ax_s.set(xlabel="ms per generated token (lower is faster)", title="decoding speed on this machine")
        ax_s.invert_yaxis()
        fig.tight_layout()
        return fig


def panel(bench: Bench, variants=DEFAULT_VARIANTS, sparsity: float = 0.2, gguf_type: str = "q8_0"):
    """Pick variants, a sparsity and a GGUF type, press Run: missing ones are built and measured.

    Headless (papermill) it runs once with the given values; already measured variants cost nothing.
    """
    import ipywidgets as widgets
    from IPython.display import display

    from course_lib.ui import panel as make_panel

    controls = {
        "variants": widgets.SelectMultiple(options=VARIANTS, value=tuple(variants), rows=len(VARIANTS),
                                           description="variants"),
        "sparsity": widgets.FloatSlider(value=sparsity, min=0.0, max=0.9, step=0.05, description="sparsity",
                                        continuous_update=False),
        "gguf_type": widgets.Dropdown(options=GGUF_TYPES, value=gguf_type, description="GGUF type"),
    }

    def run(variants, sparsity, gguf_type):
        display(bench.run_many(list(variants), sparsity=sparsity, gguf_type=gguf_type))

    return make_panel(run, controls, button="Build and measure")


def source_note(model_name: str) -> str:
    """What the baseline is made of, to print beside the table."""

    if model_name in models.PRESETS and models.resolve(model_name).kind == "package":
        return SOURCE_NOTE
    return f"Baseline: {model_name} with the adapter merged, in fp32; every ratio is against it."


def _round(value, digits):
    return round(value, digits) if value == value else None


def _ratio(value, base, digits: int = 3):
    if base in (None, 0) or value != value or base != base:
        return None
    return round(value / base, digits)


def _size_claim(target: float, margin: float = 0.05):
    def check(bench: Bench, variant: str):
        ratio = bench.ratio(variant, "size_mb")
        if ratio != ratio:
            return None
        return f"{1 - ratio:.0%} smaller (size ratio {ratio:.2f})", "yes" if ratio <= target + margin else "no"
    return check


def _speed_claim(bench: Bench, variant: str):
    ratio = bench.ratio(variant, "ms_per_token")
    if ratio != ratio:
        return None
    verdict = "yes" if ratio < 0.95 else "no" if ratio > 1.05 else "no difference"
    return f"{ratio:.2f}x the fp32 time per token", verdict


def _quality_claim(limit: float):
    def check(bench: Bench, variant: str):
        ratio = bench.ratio(variant, "ppl")
        persona = bench.results[variant].persona_score
        base = bench.results["fp32"].persona_score
        if ratio != ratio:
            return None
        text = f"perplexity x{ratio:.3f}; persona {persona:.2f} (fp32 {base:.2f})"
        return text, "yes" if ratio <= limit and persona >= base - 0.15 else "no"
    return check


def _pruning_claim(bench: Bench, variant: str):
    size, speed = bench.ratio(variant, "size_mb"), bench.ratio(variant, "ms_per_token")
    if speed != speed:
        return None
    return (f"size ratio {size:.2f}, time per token x{speed:.2f}",
            "no: zeros are stored and multiplied like any weight" if size > 0.95 else "yes")


def _parity_claim(bench: Bench, variant: str):
    r = bench.results[variant]
    if r.max_abs_logit_diff != r.max_abs_logit_diff:
        return None
    return (f"max |Δlogit| {r.max_abs_logit_diff:.1e}, top-1 agreement {r.top1_agreement:.1%}",
            "yes" if r.max_abs_logit_diff < 1e-3 else "no")


# (claim as the seeds / tutorials state it, variant it is about, how to check it on this machine)
CLAIMS = [
    ("FP32 to INT8: 75% smaller", "int8_dynamic", _size_claim(0.25)),
    ("FP32 to INT8: 75% smaller", "bnb_int8", _size_claim(0.25)),
    ("INT8 is faster than FP32", "int8_dynamic", _speed_claim),
    ("INT8 is faster than FP32", "bnb_int8", _speed_claim),
    ("4-bit (bitsandbytes NF4): ~8x smaller than FP32", "nf4", _size_claim(0.125, 0.03)),
    ("8-bit quantization barely changes quality (<1% perplexity)", "int8_dynamic", _quality_claim(1.01)),
    ("8-bit quantization barely changes quality (<1% perplexity)", "bnb_int8", _quality_claim(1.01)),
    ("4-bit NF4 keeps quality (<5% perplexity)", "nf4", _quality_claim(1.05)),
    ("Pruning the 20% smallest weights makes the model smaller and faster", "pruned", _pruning_claim),
    ("Pruning 20% of weights barely changes quality (<5% perplexity)", "pruned", _quality_claim(1.05)),
    ("ONNX export gives the same outputs", "onnx", _parity_claim),
    ("ONNX Runtime is faster than PyTorch", "onnx", _speed_claim),
    ("GGUF Q8_0 is ~3.8x smaller than FP32 (8.5 bits per weight)", "gguf", _size_claim(8.5 / 32, 0.03)),
    ("llama.cpp is faster than PyTorch on CPU", "gguf", _speed_claim),
    ("bf16 halves the size", "bf16", _size_claim(0.5, 0.02)),
    ("bf16 is faster than fp32", "bf16", _speed_claim),
]


# --------------------------------------------------------------------------- 6. bytes per parameter


def bits_per_weight(split: dict) -> list[tuple[str, float, str]]:
    """(format, bits per weight with its scales, what the extra bits are) for the common formats."""
    per_row = 32 * split["linear_rows"] / split["linear"]  # LLM.int8: one fp32 scale per output row
    return [
        ("fp32", 32.0, "sign, 8-bit exponent, 23-bit mantissa"),
        ("bf16", 16.0, "fp32's exponent range with a 7-bit mantissa"),
        ("int8, one scale per tensor (PyTorch dynamic)", 8.0, "one float scale per matrix: negligible"),
        ("LLM.int8 (bitsandbytes)", 8 + per_row, "an fp32 scale per output row"),
        ("GGUF Q8_0", 8.5, "an fp16 scale per block of 32 weights"),
        ("NF4 (bitsandbytes)", 4 + 32 / 64, "an fp32 absmax per block of 64 weights"),
        ("NF4 + double quantization", 4 + 8 / 64 + 32 / (64 * 256), "absmax in 8 bits; one fp32 per 256 absmax"),
    ]


def bytes_table(split: dict):
    """Predicted weight sizes per format: all weights converted, or only the decoder's Linear layers."""
    import pandas as pd

    rest = split["total"] - split["linear"]
    rows = [{"format": name, "bits/weight": round(bits, 3), "bytes/weight": round(bits / 8, 3),
             "everything MB": round(split["total"] * bits / 8 / 1e6, 1),
             "Linear layers only, rest fp32 MB": round((split["linear"] * bits / 8 + rest * 4) / 1e6, 1),
             "the extra bits": why}
            for name, bits, why in bits_per_weight(split)]
    return pd.DataFrame(rows).set_index("format")


def parameter_split(model_dir) -> dict:
    """Where the parameters are: the decoder's Linear layers (what quantizers convert) and the rest.

    Built on the meta device from the config: no weights are read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"]
    total = sum(p.numel() for p in model.parameters())  # a tied matrix counts once
    embedding = model.get_input_embeddings().weight.numel()
    linear = sum(m.weight.numel() for m in linears)
    return {"total": total, "linear": linear, "embedding": embedding, "other": total - linear - embedding,
            "linear_rows": sum(m.out_features for m in linears),
            "tied": bool(getattr(config, "tie_word_embeddings", False))}


def predict_bytes(variant: str, split: dict, gguf_type: str = "q8_0", double_quant: bool = True) -> float:
    """Size on disk VARIANT should take, from bytes per parameter (file headers and metadata aside).

    The assumptions are the lesson: what gets quantized (the decoder's Linear layers), what stays
    fp32 (embedding, norms), and what a format stores on top of the weights (scales, copies).
    """
    linear, rest = split["linear"], split["total"] - split["linear"]
    untied_head = split["embedding"] if split["tied"] else 0  # an output layer that stops sharing the embedding
    if variant in ("fp32", "pruned"):
        return 4 * split["total"]  # pruning writes zeros: a dense file does not shrink
    if variant == "bf16":
        return 2 * split["total"]
    if variant == "int8_dynamic":
        return linear + 4 * rest + untied_head  # the output layer becomes an int8 copy of the embedding
    if variant == "bnb_int8":
        return linear + 4 * split["linear_rows"] + 4 * rest  # one fp32 scale per output row
    if variant == "nf4":
        bits = 4 + 8 / 64 + 32 / (64 * 256) if double_quant else 4 + 32 / 64
        return linear * bits / 8 + 4 * rest
    if variant == "onnx":
        return 4 * split["total"] + 4 * untied_head  # the tied matrix is stored twice (once transposed)
    if variant == "gguf":
        bits = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5}[gguf_type]
        return split["total"] * bits / 8
    raise ValueError(f"no prediction for {variant!r}")


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.quantize", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch-converter", help="put llama.cpp's GGUF converter in the course cache (install step)")
    fetch.add_argument("--dest", default=None, help=f"default: {converter_dir()}")
    fetch.add_argument("--sdist", default=None, help="a llama-cpp-python .tar.gz already downloaded")
    fetch.add_argument("--version", default=None, help="llama-cpp-python version (default: the installed one)")
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when the converter is already there")
    table = sub.add_parser("table", help="merge the trained adapter and print the variant table")
    table.add_argument("--run-dir", default=None)
    table.add_argument("--model", default="smollm2-135m")
    table.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    table.add_argument("--sparsity", type=float, default=0.2)
    table.add_argument("--gguf-type", default="q8_0", choices=GGUF_TYPES)
    args = parser.parse_args(argv)
    if args.command == "fetch-converter":
        dest = Path(args.dest) if args.dest else converter_dir()
        if args.if_missing and (dest / "convert_hf_to_gguf.py").exists():
            print(f"converter already in {dest}")
            return 0
        print(f"llama.cpp converter in {fetch_converter(dest, args.sdist, args.version)}")
        return 0
    from transformers import AutoTokenizer

    from course_lib.report import quiet_libraries

    quiet_libraries()
    run_dir = paths.run_dir(args.run_dir)
    adapter = train.ensure_adapter(run_dir, args.model)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    data = eval_data(tokenizer, run_dir)
    merged = merge(adapter, run_dir / "quantize" / "merged", data)
    print(merged)
    bench = Bench(merged.folder, tokenizer, data, run_dir / "quantize", args.sparsity, args.gguf_type)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(bench.run_many(args.variants).drop(columns=["notes"]))
        print(bench.claims())
    return 0


if __name__ == "__main__":
    sys.exit(main())
