"""What the quantize stage measures, the same way for every variant: the merge check (adapter on
the side, then folded in), the shared inputs, perplexity over any runtime, decoding speed, bytes on
disk and in memory, the activation outliers that break int8, and where the parameters are (for
predicting each format's size before building it: ``predict_bytes``, ``bytes_table``, ``plot_bytes``).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from course_lib import batches, data, evaluate, paths, runs, runtimes, versions
from course_lib.batches import IGNORE
from course_lib.models import stop_token_ids
from course_lib.runtimes import TorchRunner

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions


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
        if hasattr(value, "__tensor_flatten__"):  # a tensor subclass (torchao's int8): count what it holds
            for name in value.__tensor_flatten__()[0]:
                add(getattr(value, name))
        elif isinstance(value, torch.Tensor):
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


class MergeCheck:
    """Perplexity and logits of a model with its adapter on the side, then the same after merging.

    Merging is exact algebra (W + B·A·alpha/r), so ``after`` must find a perplexity ratio of 1.000
    up to float rounding. Measure before ``merge_and_unload``: it changes the base weights in place.
    """

    def __init__(self, with_adapter, data: EvalData, examples: int = 16):
        self.started = time.perf_counter()
        self.examples = data.examples[:examples]
        self.ppl, self.logits = perplexity_of_runner(TorchRunner(with_adapter), self.examples, keep_logits=2)

    def after(self, merged_model, folder) -> MergeResult:
        """The same figures for MERGED_MODEL (saved in FOLDER), set beside those taken before merging."""
        ppl, logits = perplexity_of_runner(TorchRunner(merged_model), self.examples, keep_logits=2)
        diff = max(float(abs(a - b).max()) for a, b in zip(self.logits, logits))
        return MergeResult(Path(folder), self.ppl, ppl, diff, time.perf_counter() - self.started)


def load_unmerged(adapter_dir, dtype="float32"):
    """Base model (full precision, even for a QLoRA adapter) + adapter on the side -> (model, tokenizer, cfg)."""
    cfg = runs.read_config(adapter_dir)
    if cfg["method"] not in ("lora", "qlora", "full"):
        raise ValueError(f"{adapter_dir}: a {cfg['method']} adapter cannot be merged into the weights "
                         "(prompt tuning adds virtual tokens, not weight updates); train LoRA or QLoRA.")
    # A QLoRA adapter was trained against 4-bit weights; we merge it into the full-precision ones
    # (merging into 4-bit weights would round the update away), as a deployment pipeline does.
    # runs.load: the base by AutoModelForCausalLM.from_pretrained, then PeftModel.from_pretrained.
    model, tokenizer = runs.load(adapter_dir, device="cpu", dtype=dtype, full_precision=True)
    return model, tokenizer, cfg


def merge(adapter_dir, out_dir, data: EvalData | None = None, examples: int = 16) -> MergeResult:
    """Notebook 04's merge cell in one call (for the command line and the tests): the base with the
    adapter on the side, ``merge_and_unload`` (W' = W + B·A·alpha/r), saved as a standard model folder.

    Measures perplexity before and after on DATA's validation examples (the first EXAMPLES of them).
    The folder is written beside OUT_DIR, then renamed into place, so a failed save leaves no half folder.
    """
    with runtimes.quiet():
        model, tokenizer, cfg = load_unmerged(adapter_dir)
    if data is None:
        data = eval_data(tokenizer, ppl_examples=examples, persona_questions=0)
    check = MergeCheck(model, data, examples)
    merged = model.merge_and_unload() if cfg["method"] != "full" else model
    out = Path(out_dir)
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    with runtimes.quiet():
        merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)  # derived from the adapter: rebuilt, never the learner's own work
    staging.rename(out)
    result = check.after(merged, out)
    _free(merged, model)
    return result


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


def perplexity_of_runner(runner, examples, keep_logits: int = 0):
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


def log_axis(ax, low: float, high: float, base: int = 2) -> None:
    """A log-scale x axis from LOW to HIGH, labelled at powers of BASE in plain numbers (0.25, 1, 4)."""
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ticks = [float(base) ** k for k in range(-12, 16) if low <= float(base) ** k <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xticks([], minor=True)


def plot_outliers(table):
    """``activation_outliers``' TABLE as two bar charts: how far the largest input value stands out
    from the typical one, and the share of the input that int8 with one scale per tensor rounds to 0.
    """
    import matplotlib.pyplot as plt

    fig, (ax_ratio, ax_zero) = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    ratios = table["max / median"].clip(lower=1)
    ax_ratio.barh(table.index, ratios - 1, left=1, color="tab:orange")
    log_axis(ax_ratio, 1, max(10.0, float(ratios.max()) * 1.5), base=10)
    ax_ratio.set(xlabel="max |x| / median |x| (log scale)", title="how far the outliers stand out")
    ax_zero.barh(table.index, table["share rounded to 0 in int8"], color="tab:red")
    ax_zero.set(xlim=(0, 1), xlabel="share of the input rounded to 0", title="what one int8 scale per tensor loses")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 3. bytes per parameter


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
            "linear_rows": sum(m.out_features for m in linears), "vocab": model.get_input_embeddings().num_embeddings,
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
    if variant == "int8_weight_only":  # one fp32 scale per output row, the output layer an int8 copy too
        head_rows = split["vocab"] if split["tied"] else 0
        return linear + 4 * split["linear_rows"] + 4 * rest + untied_head + 4 * head_rows
    if variant == "nf4":
        bits = 4 + 8 / 64 + 32 / (64 * 256) if double_quant else 4 + 32 / 64
        return linear * bits / 8 + 4 * rest
    if variant == "onnx":
        return 4 * split["total"] + 4 * untied_head  # the tied matrix is stored twice (once transposed)
    if variant == "gguf":
        bits = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5}[gguf_type]
        return split["total"] * bits / 8
    raise ValueError(f"no prediction for {variant!r}")


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



def plot_bytes(split: dict):
    """``bytes_table`` as bars: each format's predicted size if every weight is converted, and if only
    the decoder's Linear layers are (the rest kept fp32, as most libraries do), beside fp32's size.
    """
    import matplotlib.pyplot as plt

    table = bytes_table(split)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    rows = range(len(table))
    ax.barh([r - 0.2 for r in rows], table["everything MB"], height=0.4, label="every weight converted")
    ax.barh([r + 0.2 for r in rows], table["Linear layers only, rest fp32 MB"], height=0.4,
            label="Linear layers only, the rest fp32")
    ax.axvline(table["everything MB"].iloc[0], color="grey", lw=0.8, ls="--")
    ax.set_yticks(list(rows), table.index)
    ax.invert_yaxis()
    ax.set(xlabel="predicted size of this model's weights (MB)", title="bytes per parameter, before building anything")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
