"""The memory planner: how much memory a training run needs, before you start it, and a check
against what a real run takes.

Training memory has four parts, plus what the runtime itself costs:

    weights      every parameter, in its storage precision (4 bytes fp32, 2 bf16/fp16, ~0.52 NF4)
    gradients    one per *trainable* parameter
    optimizer    AdamW keeps two running averages per trainable parameter
    activations  what the forward pass keeps for the backward pass; grows with batch x sequence
    overhead     the Python runtime, tokenizer, allocator slack (CPU) or the CUDA context (GPU)

Full fine-tuning pays gradients and optimizer states for every weight; LoRA pays them only for
the small adapters; QLoRA also stores the frozen weights in 4 bits. Activations do not care which
parameters train, and for a small model with a 49k-token vocabulary the logits dominate them.

    python -m course_lib.memory estimate --model smollm2-135m --method lora --seq-len 256 --batch-size 4
    python -m course_lib.memory measure --model smollm2-135m --method lora --seq-len 256 --batch-size 4 --steps 3

``measure`` trains for a few steps in *this* process and prints its peak memory as JSON;
``measure_peak()`` runs it in a fresh subprocess per call, because a process's peak resident
memory only ever goes up: a second measurement in the same process would see the first one's peak.

"MB" here is 2**20 bytes (MiB), the unit nvidia-smi and the operating system tools show.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from course_lib import procmem

MB = 2**20
GB = 1024 * MB
METHODS = ("full", "lora", "qlora")
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}

# NF4 with double quantization (what models.quantization_config asks bitsandbytes for): 4 bits per
# weight, one absmax constant per block of 64 weights stored in 8 bits (double quantization), and
# one fp32 constant per 256 such blocks for the second level. Without double quantization the
# absmax would be fp32: 0.5 + 4/64 = 0.5625 bytes per weight.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

# Runtime overhead and allocator slack, calibrated on this course's CPU machine (2 cores, torch
# 2.13, transformers 5.23, bitsandbytes 0.50, glibc malloc) with `measure` on smollm2-135m: seq
# 128-512 x batch 2-4, full/lora/qlora, with and without checkpointing (13 runs, all within 8% after
# calibration), and on the tests' tiny model. The process's peak resident memory rose by the
# tensors this module counts plus:
# - ~70 MB whatever the run: tokenizer, model and PEFT objects, code pages of torch kernels
#   touched for the first time (CPU_RUNTIME_MB);
# - a share of the layer activations (CPU_SLACK): the forward pass also makes temporaries it does
#   not keep (attention and MLP intermediates; LoRA's dropout, B.A product and scaled copy; QLoRA's
#   dequantized weights), and glibc's heap keeps the freed blocks, fragmented between the tensors
#   that are kept. Measured after the forward pass: the resident memory exceeded the saved tensors
#   by about that much, growing with tokens and layers (not with the vocabulary: the tiny 2-layer
#   model, whose activations are almost all logits, shows none of it).
# - in full fine-tuning the peak can come at the end of backward instead: all weight gradients
#   exist and the freed activation blocks were not reused for them (big gradient buffers get fresh
#   pages), so the peak is never below the plain sum of weights, gradients, AdamW and activations.
CPU_RUNTIME_MB = 70
CPU_SLACK = {  # (method, gradient checkpointing) -> share of the non-checkpointed layer activations
    ("full", False): 0.30, ("lora", False): 0.45, ("qlora", False): 0.60,
    ("full", True): 0.30, ("lora", True): 0.30, ("qlora", True): 0.40,
}
# On a GPU the CUDA context (kernels, cuBLAS workspace) takes ~300-500 MB that
# torch.cuda.max_memory_allocated() does not count but nvidia-smi does, and the caching allocator
# reuses freed blocks (the plain sum is then slightly cautious). Guesses, not calibrated: the course
# machine has no GPU.
CUDA_CONTEXT_MB = 500
CUDA_SLACK = 0.20
# "fits" leaves this share of the memory free: other processes, fragmentation, a longer batch.
HEADROOM = 0.10


# --------------------------------------------------------------------------- model sizes


@dataclass(frozen=True)
class Dims:
    """The sizes of a Llama-style decoder that memory depends on (from a preset or a config)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool = True
    head_dim: int | None = None
    attention_bias: bool = False  # Qwen2 has biases on q, k and v
    name: str = "custom"
    checkpoint_bytes: int = 2  # bytes per weight in the checkpoint files (hub models ship bf16)

    @property
    def q_dim(self) -> int:
        return self.num_heads * (self.head_dim or self.hidden_size // self.num_heads)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * (self.head_dim or self.hidden_size // self.num_heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def dims_of(model) -> Dims:
    """Dims from a preset name, a models.Preset, a transformers config, a dict, or a model folder."""
    from course_lib import models

    if isinstance(model, Dims):
        return model
    if isinstance(model, str) and model in models.PRESETS:
        model = models.PRESETS[model]
    if isinstance(model, models.Preset):
        return Dims(model.hidden_size, model.num_layers, model.intermediate_size, model.num_heads,
                    model.num_kv_heads, model.vocab_size, model.tie_embeddings,
                    head_dim=model.extra.get("head_dim"),
                    attention_bias=model.qkv_bias,
                    name=model.name,
                    # the offline default is cached as fp32 safetensors; hub checkpoints are bf16
                    checkpoint_bytes=4 if model.offline_package else 2)
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        name = str(model)
        location, kwargs = models.model_location(name)  # a folder, or a hub id (offline: from the cache)
        try:
            config = AutoConfig.from_pretrained(location, **kwargs)
        except OSError as error:
            raise models._unavailable(models.resolve(name), error) from None
        return replace(dims_of(config), name=Path(name).name if Path(name).expanduser().is_dir() else name)
    config = model.to_dict() if hasattr(model, "to_dict") else dict(model)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16").replace("torch.", "")
    return Dims(
        hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        intermediate_size=config["intermediate_size"], num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab_size=config["vocab_size"], tie_embeddings=config.get("tie_word_embeddings", True),
        head_dim=config.get("head_dim"),
        attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        name=config.get("_name_or_path") or config.get("model_type", "custom"),
        checkpoint_bytes=DTYPE_BYTES.get(dtype, 2))


def parameter_count(model) -> dict[str, int]:
    """Parameters by part, computed from the sizes alone (no weights needed).

    embeddings: vocab x hidden. Per layer: q/k/v/o projections (k and v are smaller with
    grouped-query attention: num_kv_heads x head_dim outputs), gate/up/down of the MLP, two RMSNorm
    weight vectors. A final norm; an lm_head of vocab x hidden unless tied to the embeddings.
    """
    d = dims_of(model)
    linears = d.linear_shapes()
    attention = sum(i * o for k, (i, o) in linears.items() if k.endswith(("q_proj", "k_proj", "v_proj", "o_proj")))
    if d.attention_bias:
        attention += d.q_dim + 2 * d.kv_dim
    mlp = sum(i * o for k, (i, o) in linears.items() if k in ("gate_proj", "up_proj", "down_proj"))
    parts = {
        "embeddings": d.vocab_size * d.hidden_size,
        "attention": d.num_layers * attention,
        "mlp": d.num_layers * mlp,
        "norms": (2 * d.num_layers + 1) * d.hidden_size,
        "lm_head": 0 if d.tie_embeddings else d.vocab_size * d.hidden_size,
    }
    parts["total"] = sum(parts.values())
    return parts


def lora_targets(targets) -> list[str]:
    """"q_proj,v_proj" / ["q_proj", "v_proj"] / "all-linear" -> the projection names."""
    if targets == "all-linear":
        return list(Dims(1, 1, 1, 1, 1, 1).linear_shapes())
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [n.strip() for n in names if n.strip()]
    known = Dims(1, 1, 1, 1, 1, 1).linear_shapes()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; known: {', '.join(known)} or 'all-linear'")
    return names


def lora_parameters(model, r: int = 16, targets="q_proj,v_proj") -> int:
    """Trainable LoRA parameters: per targeted projection A (r x in) plus B (out x r), every layer."""
    d = dims_of(model)
    shapes = d.linear_shapes()
    return d.num_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in lora_targets(targets))


# --------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Peak training memory by part, in MB (2**20 bytes)."""

    model: str
    method: str
    seq_len: int
    batch_size: int
    gradient_checkpointing: bool
    device: str
    dtype: str
    parameters: int
    trainable: int
    weights_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    overhead_mb: float
    loading_mb: float = 0.0  # peak while loading (can exceed training's for QLoRA on a CPU)
    file_cache_mb: float = 0.0  # reclaimable checkpoint pages RSS may also show (not in the total)
    notes: list[str] = field(default_factory=list)

    PARTS = ("weights", "gradients", "optimizer", "activations", "overhead")

    @property
    def total_mb(self) -> float:
        return max(sum(self.breakdown().values()), self.loading_mb)

    def breakdown(self) -> dict[str, float]:
        return {part: getattr(self, f"{part}_mb") for part in self.PARTS}

    @property
    def label(self) -> str:
        return f"{self.method}{' + ckpt' if self.gradient_checkpointing else ''}"

    def as_dict(self) -> dict:
        return {**asdict(self), "total_mb": round(self.total_mb, 1)}

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in self.breakdown().items() if v)
        return (f"{self.model} {self.label} seq {self.seq_len} x batch {self.batch_size} on {self.device} "
                f"({self.dtype}): {self.total_mb:,.0f} MB = {parts} MB")


def activation_bytes(model, method: str, seq_len: int, batch_size: int, gradient_checkpointing: bool = False,
                     lora_r: int = 16, targets: str = "q_proj,v_proj", lora_dropout: float = 0.1,
                     dtype: str = "float32", attention: str = "sdpa") -> dict[str, float]:
    """Bytes the forward pass keeps for backward, plus the loss's transient peak.

    Counted per token and per decoder layer, as PyTorch saves them for a Llama block on the sdpa
    path (checked with torch.autograd.graph.saved_tensors_hooks on transformers 5.23):
    - with frozen projections (LoRA, QLoRA): 4 hidden-sized tensors (layer input, residual, norm
      outputs), 3 MLP-sized ones (gate, SiLU output, up), q and the attention output (2 x q_dim),
      k and v (2 x kv_dim: grouped-query attention keeps the smaller kv heads), and the attention's
      log-sum-exp (one float per head): sdpa's fused kernel never stores the seq x seq scores;
    - full fine-tuning also keeps the inputs of every trainable projection: +2 hidden, +1 MLP-sized;
    - each LoRA target adds its dropout output (in_features) and the r-sized A output;
    - ``attention="eager"`` also stores the softmax probabilities: heads x seq_len per token.
    - with frozen embeddings (LoRA, QLoRA) the first layer keeps two hidden-sized tensors fewer.
    Gradient checkpointing keeps only each layer's input and recomputes one layer at a time.
    The logits are vocab-sized per token, and the loss works on them in fp32: the log-probabilities
    are kept for backward, which then holds their gradient and the logits' gradient at the same
    time: 3 fp32 copies, 12 bytes per token and vocabulary entry (measured: a cross-entropy
    backward on this stack peaks at 3.1 copies). 16-bit models add the bf16/fp16 logits and the
    gradient's cast back: 16 bytes (an estimate).

    Returns bytes: ``layers`` (kept by the decoder layers), ``layers_uncheckpointed`` (what they
    would keep without checkpointing: the forward pass computes all of it either way) and ``logits``.
    """
    d = dims_of(model)
    a = DTYPE_BYTES[dtype]
    tokens = seq_len * batch_size
    h, i = d.hidden_size, d.intermediate_size
    per_layer = 4 * h + 3 * i + 2 * d.q_dim + 2 * d.kv_dim + d.num_heads
    if method == "full":
        per_layer += 2 * h + i
    else:
        shapes = d.linear_shapes()
        for target in lora_targets(targets):
            per_layer += (shapes[target][0] if lora_dropout > 0 else 0) + lora_r
    if attention == "eager":
        per_layer += d.num_heads * seq_len * (1 if a == 4 else 2)
    if method == "full":
        full = d.num_layers * per_layer + 3 * h  # + the final norm's input, output and lm_head input
    else:
        # frozen embeddings: nothing before the first layer needs a gradient, so its input and
        # first norm output are not kept (-2h); the final norm keeps only its input for backward.
        full = d.num_layers * per_layer - 2 * h
    layers = full
    if gradient_checkpointing:
        layers = d.num_layers * h + per_layer  # layer inputs + one layer recomputed in backward
        layers += (2 if method == "full" else 0) * h  # the final norm's output for a trainable lm_head
    logits = d.vocab_size * (12 if a == 4 else 16)
    return {"layers": layers * a * tokens, "layers_uncheckpointed": full * a * tokens, "logits": logits * tokens}


def estimate(model, method: str = "lora", seq_len: int = 256, batch_size: int = 4,
             gradient_checkpointing: bool = False, lora_r: int = 16, lora_targets: str = "q_proj,v_proj",
             lora_dropout: float = 0.1, dtype: str | None = None, device: str = "cpu",
             attention: str = "sdpa") -> Estimate:
    """Plan the peak memory of training MODEL (preset, Dims, config or folder) with METHOD.

    ``dtype`` is the compute/storage precision of the (non-quantized) weights: fp32 on a CPU
    (the course default), bf16 or fp16 on a GPU (None picks: fp32 on cpu/mps, bf16 on cuda).

    - full: weights, gradients and both AdamW states all take the parameters' dtype (what
      Trainer does with a model loaded in bf16: 8 bytes per parameter in bf16, 16 in fp32).
      In fp16 (a T4) the weights cannot train in 16 bits (Trainer refuses to unscale fp16
      gradients), so they stay fp32 with fp16 autocast: 16 bytes per parameter, 16-bit activations.
    - lora: frozen weights in dtype; PEFT keeps the adapters in fp32 (autocast_adapter_dtype), so
      each trainable parameter costs 4 (weight) + 4 (gradient) + 8 (AdamW) bytes.
    - qlora: projections in NF4 (NF4_BYTES_PER_PARAM), embeddings, norms and lm_head stay in
      dtype (bitsandbytes does not quantize them), adapters as in LoRA.
    QLoRA on a CPU reads the whole full-precision checkpoint to quantize it: while loading, the
    file's pages, the 4-bit copy and the unquantized weights exist together (``loading_mb``; the
    total is the larger of loading and training). Afterwards the file pages are reclaimable cache
    that tools like top may still count (``file_cache_mb``, not in the total; see
    ``release_checkpoint_file``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if seq_len < 1 or batch_size < 1:
        raise ValueError("seq_len and batch_size must be at least 1")
    d = dims_of(model)
    device = "cuda" if device.startswith("cuda") or device == "gpu" else device
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    w = DTYPE_BYTES[dtype]
    if method == "full" and w == 2 and dtype in ("float16", "fp16"):
        w = 4  # fp32 master weights, fp16 autocast (see above); activations stay 16-bit
    counts = parameter_count(d)
    total = counts["total"]
    quantized = counts["attention"] + counts["mlp"] - (d.num_layers * (d.q_dim + 2 * d.kv_dim) if d.attention_bias else 0)
    notes = []
    if method == "full":
        trainable = total
        weights = total * w
        gradients, optimizer = total * w, 2 * total * w
    else:
        trainable = lora_parameters(d, lora_r, lora_targets)
        frozen = quantized * NF4_BYTES_PER_PARAM + (total - quantized) * w if method == "qlora" else total * w
        weights = frozen + trainable * 4
        gradients, optimizer = trainable * 4, trainable * 8
    acts = activation_bytes(d, method, seq_len, batch_size, gradient_checkpointing, lora_r, lora_targets,
                            lora_dropout, dtype, attention)
    activations = acts["layers"] + acts["logits"]
    runtime = (CUDA_CONTEXT_MB if device == "cuda" else CPU_RUNTIME_MB) * MB
    loading, file_cache = runtime + weights, 0.0
    if method == "qlora" and device != "cuda":
        file_cache = quantized * d.checkpoint_bytes  # the projections' full-precision pages, read once
        loading = runtime + total * d.checkpoint_bytes + weights
        notes.append("CPU: up to the checkpoint's size in file cache may show in RSS until the kernel reclaims it")
    # The peak is either at the start of backward (every kept activation, the allocator's slack
    # from the forward pass, and the lm_head's gradient if it trains) or at its end, where on a CPU
    # all weight gradients coexist with the activation memory the allocator still holds (the plain
    # sum gradients + activations). See the constants above.
    slack = activation_slack(device, method, gradient_checkpointing) * acts["layers_uncheckpointed"]
    head_gradient = d.vocab_size * d.hidden_size * w if method == "full" else gradients
    peak = max(activations + slack + head_gradient, gradients + activations)
    overhead = runtime + peak - gradients - activations  # the breakdown still sums to the total
    return Estimate(
        model=d.name, method=method, seq_len=seq_len, batch_size=batch_size,
        gradient_checkpointing=gradient_checkpointing, device=device, dtype=dtype,
        parameters=total, trainable=trainable, weights_mb=weights / MB, gradients_mb=gradients / MB,
        optimizer_mb=optimizer / MB, activations_mb=activations / MB, overhead_mb=overhead / MB,
        loading_mb=loading / MB, file_cache_mb=file_cache / MB, notes=notes)


def activation_slack(device: str = "cpu", method: str = "lora", gradient_checkpointing: bool = False) -> float:
    """Temporaries and allocator slack, as a share of the (non-checkpointed) layer activations."""
    if device.startswith("cuda") or device == "gpu":
        return CUDA_SLACK
    return CPU_SLACK[(method, bool(gradient_checkpointing))]


@dataclass
class Fit:
    """Does an estimate fit in some memory? ``verdict`` is "fits", "tight" or "does not fit"."""

    verdict: str
    needed_mb: float
    available_mb: float
    advice: str

    def __bool__(self) -> bool:
        return self.verdict != "does not fit"

    def __str__(self) -> str:
        return (f"{self.verdict}: needs ~{self.needed_mb / 1024:.1f} GB of {self.available_mb / 1024:.1f} GB"
                + (f". {self.advice}" if self.advice else ""))


def fits(est: Estimate, available_mb: float) -> Fit:
    """"fits" with HEADROOM to spare, "tight" if it only just fits, else "does not fit" + what to cut first."""
    need = est.total_mb
    if need <= (1 - HEADROOM) * available_mb:
        return Fit("fits", need, available_mb, "")
    parts = est.breakdown()
    if parts["activations"] > 0.3 * need and not est.gradient_checkpointing:
        advice = "activations are the biggest lever: turn on gradient checkpointing or halve batch size / seq length"
    elif parts["activations"] > 0.3 * need:
        advice = "reduce batch size or sequence length (use gradient accumulation to keep the effective batch)"
    elif est.method == "full":
        advice = "switch to LoRA: gradients and AdamW states for every weight are what does not fit"
    elif est.method == "lora":
        advice = "switch to QLoRA: 4-bit frozen weights take ~1/4 of 16-bit ones"
    else:
        advice = "the weights alone are too big even in 4 bits: pick a smaller model"
    verdict = "tight" if need <= available_mb else "does not fit"
    return Fit(verdict, need, available_mb, advice)


def available_memory_mb(device: str = "auto") -> float:
    """Memory a training run could use: free GPU memory on CUDA, available RAM otherwise."""
    import psutil

    from course_lib import models

    device = models.pick_device(device)
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return free / MB
    return psutil.virtual_memory().available / MB  # MPS shares the machine's RAM


# --------------------------------------------------------------------------- measuring


def release_checkpoint_file(model) -> None:
    """See ``models.release_checkpoint_file`` (kept here for the planner's measurement)."""
    from course_lib import models

    models.release_checkpoint_file(model)


def measure_here(model: str = "smollm2-135m", method: str = "lora", seq_len: int = 256, batch_size: int = 4,
                 steps: int = 3, gradient_checkpointing: bool = False, device: str = "auto", seed: int = 0) -> dict:
    """Train a few steps in THIS process and return its peak memory rise (see ``measure_peak``).

    Same setup as the course's training: ``train.prepare_model`` for the method, AdamW over the
    trainable parameters, forward with labels, backward, optimizer step, gradients set to None.
    QLoRA on a CPU first releases the checkpoint file (``release_checkpoint_file``).
    """
    import peft  # noqa: F401
    import torch  # noqa: F401  (imports happen before the baseline: they are not training memory)
    import transformers  # noqa: F401

    from course_lib import models, report, train

    if method == "qlora":
        import bitsandbytes  # noqa: F401
    report.quiet_libraries()
    torch.manual_seed(seed)
    device = models.pick_device(device)
    models.model_location(model)  # builds the offline default's cache first, if needed
    gc.collect()
    baseline = procmem.rss_now()
    reset = procmem.reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    net, _tokenizer = train.prepare_model(model, method, gradient_checkpointing=gradient_checkpointing,
                                          device=device)
    load_seconds = time.perf_counter() - started
    if method == "qlora" and device == "cpu":
        release_checkpoint_file(net)  # see the docstring: count what training needs, not file cache

    def peak_mb() -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / MB
        return (procmem.peak_rss()[0] - baseline) / MB

    load_peak = peak_mb()
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    try:  # Trainer's default optimizer on torch >= 2.8 is the fused AdamW
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    vocab = net.config.vocab_size
    losses, step_peaks = [], []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)
        loss = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        step_peaks.append(round(peak_mb(), 1))
        del loss
    trainable, total = train.trainable_parameters(net)
    return {
        "model": model, "method": method, "seq_len": seq_len, "batch_size": batch_size, "steps": steps,
        "gradient_checkpointing": gradient_checkpointing, "device": device,
        "baseline_mb": round(baseline / MB, 1), "load_peak_mb": round(load_peak, 1),
        "peak_mb": round(peak_mb(), 1), "step_peaks_mb": step_peaks,
        "source": "torch.cuda.max_memory_allocated" if device == "cuda" else procmem.peak_rss()[1] + ("" if reset else " (not reset)"),
        "trainable": trainable, "parameters": total, "losses": losses,
        "load_seconds": round(load_seconds, 1), "seconds": round(time.perf_counter() - started, 1),
    }


def measure_peak(model: str = "smollm2-135m", method: str = "lora", seq_len: int = 256, batch_size: int = 4,
                 steps: int = 3, gradient_checkpointing: bool = False, device: str = "auto",
                 timeout: float = 900, threads: int | None = None) -> dict:
    """Measure the real peak memory of a few training steps, in a fresh Python process.

    On a CPU: how far the process's peak resident memory (Linux VmHWM, else ru_maxrss / peak
    working set) rose above its level just before the model was loaded (libraries already
    imported). On CUDA: torch.cuda.max_memory_allocated. A fresh process per call, because peaks
    never come back down within a process. ``threads`` sets the subprocess's CPU threads
    (OMP_NUM_THREADS); the peak memory does not depend on it.
    """
    command = [sys.executable, "-m", "course_lib.memory", "measure", "--model", str(model), "--method", method,
               "--seq-len", str(seq_len), "--batch-size", str(batch_size), "--steps", str(steps),
               "--device", device] + (["--gradient-checkpointing"] if gradient_checkpointing else [])
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"measuring {model} {method} failed (exit {result.returncode}): {tail}")
    return json.loads(lines[-1])


def compare(model: str = "smollm2-135m", methods=METHODS, seq_len: int = 256, batch_size: int = 4,
            steps: int = 3, gradient_checkpointing: bool = False, device: str = "auto",
            parallel: bool | None = None) -> list[dict]:
    """Planner vs reality: one row per method with the estimate, the measured peak and their ratio.

    On a CPU with memory to spare (all planned peaks together under half the available RAM) the
    measurements run side by side, one CPU thread each: every process has its own peak, so they
    do not disturb each other's figure, and on a 2-core machine this is faster than one after
    another (with several busy processes, multi-threaded PyTorch wastes time waiting for its threads).
    """
    from concurrent.futures import ThreadPoolExecutor

    from course_lib import models

    device = models.pick_device(device)
    methods = list(methods)
    plans = {m: estimate(model, m, seq_len, batch_size, gradient_checkpointing, device=device) for m in methods}
    if parallel is None:
        planned = sum(p.total_mb for p in plans.values())
        parallel = device == "cpu" and len(methods) > 1 and planned < 0.5 * available_memory_mb(device)
    threads = max(1, (os.cpu_count() or 1) // len(methods)) if parallel else None

    def run(method):
        return measure_peak(model, method, seq_len, batch_size, steps, gradient_checkpointing, device,
                            threads=threads)

    with ThreadPoolExecutor(max_workers=len(methods) if parallel else 1) as pool:
        measured = dict(zip(methods, pool.map(run, methods)))
    rows = []
    for method in methods:
        est, got = plans[method], measured[method]
        rows.append({"method": method, "planner_estimate_mb": round(est.total_mb, 1),
                     "measured_peak_mb": got["peak_mb"], "ratio": round(est.total_mb / got["peak_mb"], 3),
                     "seconds": got["seconds"], "parallel": bool(parallel), "estimate": est, "measurement": got})
    return rows


def compare_table(rows: list[dict]):
    """``compare``'s rows as a table: method, estimate, measured, ratio, seconds."""
    from course_lib.ui import Table

    first = rows[0]["measurement"] if rows else {}
    together = " (measured side by side)" if rows and rows[0].get("parallel") else ""
    title = (f"{first.get('model')}: seq {first.get('seq_len')} x batch {first.get('batch_size')}, "
             f"{first.get('steps')} steps on {first.get('device')}{together} (MB)") if rows else "no measurements"
    return Table([{"method": r["estimate"].label, "planner estimate": f"{r['planner_estimate_mb']:,.0f}",
                   "measured peak": f"{r['measured_peak_mb']:,.0f}", "ratio": f"{r['ratio']:.2f}",
                   "seconds": r["seconds"]} for r in rows], title=title)


def figures(rows: list[dict]) -> dict:
    """The course report's figures for ``compare``'s rows: per method estimate, measurement, ratio."""
    out = {"memory": {}}
    for r in rows:
        out[f"{r['method']}_planner_estimate_mb"] = r["planner_estimate_mb"]
        out[f"{r['method']}_measured_peak_mb"] = r["measured_peak_mb"]
        out["memory"][r["method"]] = {k: r[k] for k in ("planner_estimate_mb", "measured_peak_mb", "ratio")}
    return out


def verdict(rows: list[dict], margin: float = 0.25) -> str:
    """One sentence: how far the planner was from the measurements, method by method."""
    worst = max(rows, key=lambda r: abs(r["ratio"] - 1))
    inside = all(abs(r["ratio"] - 1) <= margin for r in rows)
    return (f"Largest gap: {worst['method']}, estimate {worst['ratio']:.2f}x the measured peak; "
            + (f"every method within {margin:.0%}." if inside else f"outside the {margin:.0%} target: "
               "the machine may be busy, or its allocator differs from the one the constants were calibrated on."))


def show_plan(model: str = "smollm2-135m", method: str = "lora", seq_len: int = 256, batch_size: int = 4,
              gradient_checkpointing: bool = False, memory_for: str = "this machine") -> Estimate:
    """The interactive planner's view: the three methods at these settings, the chosen one's verdict."""
    import matplotlib.pyplot as plt

    from course_lib import models

    if memory_for == "this machine":
        device = models.pick_device()
        available = available_memory_mb(device)
    else:
        device, available = "cuda", GPUS[memory_for]
    dtype = GPU_DTYPES.get(memory_for, "bfloat16") if device == "cuda" else None
    plan = [estimate(model, m, seq_len, batch_size, gradient_checkpointing, device=device, dtype=dtype)
            for m in METHODS]
    chosen = plan[METHODS.index(method)]
    print(f"{model}, {chosen.label}, seq {seq_len} x batch {batch_size} on {memory_for} ({device}): "
          f"{fits(chosen, available)}")
    plot(plan, available, title=f"{model} on {memory_for}: seq {seq_len} x batch {batch_size}")
    plt.show()
    return chosen


# --------------------------------------------------------------------------- planning tables

# GPU memory as nvidia-smi reports it (MiB). The T4's 16 GB shows as ~15 GB usable.
GPUS = {"T4 15 GB": 15 * 1024, "24 GB": 24 * 1024, "40 GB": 40 * 1024, "80 GB": 80 * 1024}
# The T4 (free Colab) has no bf16: fp16 there. The 24-80 GB cards people rent (A10G, RTX 3090/4090,
# A100, H100) are Ampere or newer: bf16.
GPU_DTYPES = {"T4 15 GB": "float16"}


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB"


def claims(seq_len: int = 512, batch_size: int = 1, gradient_checkpointing: bool = True) -> list[dict]:
    """The seeds' memory claims, checked by the planner for a GPU in bf16 (estimates, not measurements)."""
    kw = dict(seq_len=seq_len, batch_size=batch_size, gradient_checkpointing=gradient_checkpointing, device="cuda")
    setting = f"seq {seq_len} x batch {batch_size}{', checkpointing' if gradient_checkpointing else ''}, bf16"
    rows = []
    for preset in ("qwen2.5-7b", "llama-3.1-8b"):
        q = estimate(preset, "qlora", **kw)
        ok = q.total_mb <= 24 * 1024 * (1 - HEADROOM)
        rows.append({"claim": "7B fits in 24 GB with QLoRA", "model": preset, "setting": setting,
                     "planner": f"QLoRA {_gb(q.total_mb)}",
                     "verdict": ("true" if ok else "false") + f": {_gb(q.total_mb)} of 24 GB"})
    full, lora, qlora = (estimate("llama-2-13b", m, **kw) for m in METHODS)
    rows.append({
        "claim": "13B needs 40 GB or more", "model": "llama-2-13b", "setting": setting,
        "planner": f"full {_gb(full.total_mb)}, LoRA {_gb(lora.total_mb)}, QLoRA {_gb(qlora.total_mb)}",
        "verdict": (f"depends on the method: full fine-tuning needs far more ({_gb(full.total_mb)}), "
                    f"LoRA on 16-bit weights {'needs' if lora.total_mb > 24 * 1024 else 'fits in'} a "
                    f"{'40' if lora.total_mb > 24 * 1024 else '24'} GB card ({_gb(lora.total_mb)}), "
                    f"QLoRA fits in {_gb(qlora.total_mb)}")})
    for preset in ("qwen2.5-7b", "llama-3.1-8b"):
        q = estimate(preset, "qlora", **kw)
        short = estimate(preset, "qlora", **{**kw, "seq_len": 128})
        rows.append({
            "claim": "7B fine-tuning in only 6 GB", "model": preset, "setting": setting,
            "planner": f"QLoRA {_gb(q.total_mb)} (seq 128: {_gb(short.total_mb)})",
            "verdict": ("true" if q.total_mb <= 6 * 1024 else "false")
            + f": 4-bit weights alone are {_gb(q.weights_mb)}; with training {_gb(q.total_mb)}"})
    return rows


def recommend(presets=None, gpus: dict | None = None, seq_len: int = 512, batch_size: int = 4,
              this_machine_mb: float | None = None) -> list[dict]:
    """Per preset and memory size: the best method that fits (estimates).

    Preference: full fine-tuning (nothing frozen) > LoRA > QLoRA, each first without and then with
    gradient checkpointing. GPUs in bf16 (the T4 in fp16); "this machine" on its own device and precision.
    """
    from course_lib import models

    presets = list(presets or models.PRESETS)
    gpus = dict(GPUS if gpus is None else gpus)
    targets = [(name, mb, "cuda", GPU_DTYPES.get(name, "bfloat16")) for name, mb in gpus.items()]
    if this_machine_mb is not False:
        device = models.pick_device()
        available = this_machine_mb or available_memory_mb(device)
        targets.append((f"this machine ({device}, {available / 1024:.0f} GB)", available, device, None))
    rows = []
    for preset in presets:
        row = {"model": preset, "parameters": f"{models.PRESETS[preset].parameters / 1e9:.2f}B"
               if preset in models.PRESETS else ""}
        for name, available, device, dtype in targets:
            choice = "nothing fits"
            for method in METHODS:
                for ckpt in (False, True):
                    est = estimate(preset, method, seq_len, batch_size, ckpt, device=device, dtype=dtype)
                    if fits(est, available).verdict == "fits":
                        choice = f"{method}{' + ckpt' if ckpt else ''} ({_gb(est.total_mb)})"
                        break
                if choice != "nothing fits":
                    break
            row[name] = choice
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the chart

COLORS = {"weights": "#4c72b0", "gradients": "#dd8452", "optimizer": "#c44e52", "activations": "#55a868",
          "overhead": "#bbbbbb"}
LABELS = {"optimizer": "optimizer (AdamW)", "overhead": "overhead (runtime, allocator)"}


def plot(estimates, available_mb: float | None = None, measured: dict | None = None, ax=None, title=None):
    """Stacked horizontal bars of each estimate's breakdown; a line for the available memory and
    dots for measured peaks (``measured``: label -> MB). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    estimates = [estimates] if isinstance(estimates, Estimate) else list(estimates)
    if ax is None:
        _fig, ax = plt.subplots(figsize=(9, 0.55 * len(estimates) + 1.6))
    labels = [e.label for e in estimates]
    left = [0.0] * len(estimates)
    for part in Estimate.PARTS:
        values = [e.breakdown()[part] for e in estimates]
        if not any(values):
            continue
        ax.barh(labels, values, left=left, color=COLORS[part], label=LABELS.get(part, part))
        left = [a + b for a, b in zip(left, values)]
    measured = {k: v for k, v in (measured or {}).items() if k in labels}
    if measured:
        ax.scatter(list(measured.values()), [labels.index(k) for k in measured], marker="D", color="black",
                   zorder=3, label="measured peak")
    widest = max(left + list(measured.values()))
    for y, e in enumerate(estimates):
        ax.text(max(left[y], measured.get(e.label, 0)) + 0.01 * widest, y, f" {e.total_mb:,.0f} MB",
                va="center", fontsize=9)
    first = estimates[0]
    title = title or f"{first.model}: seq {first.seq_len} x batch {first.batch_size} on {first.device}"
    if available_mb and available_mb <= 2.5 * widest:  # draw the limit when it is on a readable scale
        ax.axvline(available_mb, color="black", linestyle="--", linewidth=1, label="available memory")
        ax.set_xlim(0, 1.2 * max(widest, available_mb))
    else:
        ax.set_xlim(0, 1.2 * widest)
        if available_mb:
            title += f"\n(available: {available_mb:,.0f} MB, off this scale)"
    ax.set_xlabel("MB (2^20 bytes)")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax.figure


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.memory", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("estimate", "measure"):
        p = sub.add_parser(command, help=f"{command} the peak memory of training; prints JSON")
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--method", default="lora", choices=METHODS)
        p.add_argument("--seq-len", type=int, default=256)
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--gradient-checkpointing", action="store_true")
        p.add_argument("--device", default="auto" if command == "measure" else "cpu")
        if command == "measure":
            p.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "estimate":
        est = estimate(args.model, args.method, args.seq_len, args.batch_size, args.gradient_checkpointing,
                       device=args.device)
        print(json.dumps(est.as_dict(), indent=2))
        return 0
    result = measure_here(args.model, args.method, args.seq_len, args.batch_size, args.steps,
                          args.gradient_checkpointing, args.device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
