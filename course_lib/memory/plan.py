"""The planner's arithmetic: how much memory a training run needs, from the model's sizes alone.

Training memory has four parts, plus what the runtime itself costs:

    weights      every parameter, in its storage precision (4 bytes fp32, 2 bf16/fp16, ~0.52 NF4)
    gradients    one per *trainable* parameter
    optimizer    AdamW keeps two running averages per trainable parameter
    activations  what the forward pass keeps for the backward pass; grows with batch x sequence
    overhead     the Python runtime, tokenizer, allocator slack (CPU) or the CUDA context (GPU)

Full fine-tuning pays gradients and optimizer states for every weight; LoRA pays them only for
the small adapters; QLoRA also stores the frozen weights in 4 bits. Activations do not care which
parameters train, and for a small model with a 49k-token vocabulary the logits dominate them.

A model's sizes are a ``models.Preset`` (a preset as it is, or one built from a config for a hub
id or a folder). Nothing here imports torch: planning a 13B run needs no weights.
"MB" here is 2**20 bytes (MiB), the unit nvidia-smi and the operating system tools show.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from course_lib import models

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

# The projections of one Llama-style decoder layer, in the order PEFT and the tables list them.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def head_dim(d: models.Preset) -> int:
    """Width of one attention head: the config's head_dim if it sets one, else hidden / heads."""
    return d.extra.get("head_dim") or d.hidden_size // d.num_heads


def q_dim(d: models.Preset) -> int:
    return d.num_heads * head_dim(d)


def kv_dim(d: models.Preset) -> int:
    return d.num_kv_heads * head_dim(d)


def linear_shapes(d: models.Preset) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection in one decoder layer."""
    h, i = d.hidden_size, d.intermediate_size
    return {"q_proj": (h, q_dim(d)), "k_proj": (h, kv_dim(d)), "v_proj": (h, kv_dim(d)),
            "o_proj": (q_dim(d), h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def checkpoint_bytes(d: models.Preset) -> int:
    """Bytes per weight in the checkpoint files: the offline default is cached as fp32 safetensors,
    hub checkpoints are bf16 (a config's own dtype when the sizes came from one)."""
    return d.extra.get("checkpoint_bytes", 4 if d.offline_package else 2)


def dims_of(model) -> models.Preset:
    """The sizes of MODEL: a preset name, a models.Preset, a transformers config, a dict, or a
    model folder / hub id (its config is read; no weights)."""
    if isinstance(model, models.Preset):
        return model
    if isinstance(model, str) and model in models.PRESETS:
        return models.PRESETS[model]
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        name = str(model)
        location, kwargs = models.model_location(name)  # a folder, or a hub id (offline: from the cache)
        try:
            config = AutoConfig.from_pretrained(location, **kwargs)
        except OSError as error:
            raise models._unavailable(models.resolve(name), error) from None
        return replace(dims_of(config), name=Path(name).name if Path(name).expanduser().is_dir() else name)
    return preset_from_config(model.to_dict() if hasattr(model, "to_dict") else dict(model))


def preset_from_config(config: dict) -> models.Preset:
    """A models.Preset for a model the course has no preset for, from its config.json fields."""
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16").replace("torch.", "")
    name = config.get("_name_or_path") or config.get("model_type", "custom")
    sizes = models.Preset(
        name=name, hub_id=name, parameters=0,
        hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        intermediate_size=config["intermediate_size"], num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab_size=config["vocab_size"], tie_embeddings=config.get("tie_word_embeddings", True),
        qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        extra={"head_dim": config.get("head_dim"), "checkpoint_bytes": DTYPE_BYTES.get(dtype, 2)})
    return replace(sizes, parameters=parameter_count(sizes)["total"])


def parameter_count(model) -> dict[str, int]:
    """Parameters by part, computed from the sizes alone (no weights needed).

    embeddings: vocab x hidden. Per layer: q/k/v/o projections (k and v are smaller with
    grouped-query attention: num_kv_heads x head_dim outputs), gate/up/down of the MLP, two RMSNorm
    weight vectors. A final norm; an lm_head of vocab x hidden unless tied to the embeddings.
    """
    d = dims_of(model)
    linears = linear_shapes(d)
    attention = sum(i * o for k, (i, o) in linears.items() if k.endswith(("q_proj", "k_proj", "v_proj", "o_proj")))
    if d.qkv_bias:
        attention += q_dim(d) + 2 * kv_dim(d)
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
        return list(PROJECTIONS)
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; known: {', '.join(PROJECTIONS)} or 'all-linear'")
    return names


def lora_parameters(model, r: int = 16, targets="q_proj,v_proj") -> int:
    """Trainable LoRA parameters: per targeted projection A (r x in) plus B (out x r), every layer."""
    d = dims_of(model)
    shapes = linear_shapes(d)
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
    per_layer = 4 * h + 3 * i + 2 * q_dim(d) + 2 * kv_dim(d) + d.num_heads
    if method == "full":
        per_layer += 2 * h + i
    else:
        shapes = linear_shapes(d)
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
    """Plan the peak memory of training MODEL (preset name, models.Preset, config or folder) with METHOD.

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
    p = _parameter_bytes(d, method, w, lora_r, lora_targets)
    acts = activation_bytes(d, method, seq_len, batch_size, gradient_checkpointing, lora_r, lora_targets,
                            lora_dropout, dtype, attention)
    activations = acts["layers"] + acts["logits"]
    runtime = (CUDA_CONTEXT_MB if device == "cuda" else CPU_RUNTIME_MB) * MB
    loading, file_cache, notes = _loading_bytes(d, method, device, runtime, p)
    # The peak is either at the start of backward (every kept activation, the allocator's slack
    # from the forward pass, and the lm_head's gradient if it trains) or at its end, where on a CPU
    # all weight gradients coexist with the activation memory the allocator still holds (the plain
    # sum gradients + activations). See the constants above.
    slack = activation_slack(device, method, gradient_checkpointing) * acts["layers_uncheckpointed"]
    head_gradient = d.vocab_size * d.hidden_size * w if method == "full" else p["gradients"]
    peak = max(activations + slack + head_gradient, p["gradients"] + activations)
    overhead = runtime + peak - p["gradients"] - activations  # the breakdown still sums to the total
    return Estimate(
        model=d.name, method=method, seq_len=seq_len, batch_size=batch_size,
        gradient_checkpointing=gradient_checkpointing, device=device, dtype=dtype,
        parameters=p["total"], trainable=p["trainable"], weights_mb=p["weights"] / MB,
        gradients_mb=p["gradients"] / MB, optimizer_mb=p["optimizer"] / MB, activations_mb=activations / MB,
        overhead_mb=overhead / MB, loading_mb=loading / MB, file_cache_mb=file_cache / MB, notes=notes)


def _parameter_bytes(d: models.Preset, method: str, w: int, lora_r: int, targets) -> dict:
    """Parameter counts (total, trainable, quantized) and the bytes of weights, gradients and AdamW."""
    counts = parameter_count(d)
    total = counts["total"]
    quantized = counts["attention"] + counts["mlp"] - (d.num_layers * (q_dim(d) + 2 * kv_dim(d)) if d.qkv_bias else 0)
    if method == "full":
        trainable = total
        weights = total * w
        gradients, optimizer = total * w, 2 * total * w
    else:
        trainable = lora_parameters(d, lora_r, targets)
        frozen = quantized * NF4_BYTES_PER_PARAM + (total - quantized) * w if method == "qlora" else total * w
        weights = frozen + trainable * 4
        gradients, optimizer = trainable * 4, trainable * 8
    return {"total": total, "trainable": trainable, "quantized": quantized, "weights": weights,
            "gradients": gradients, "optimizer": optimizer}


def _loading_bytes(d: models.Preset, method: str, device: str, runtime: float, p: dict):
    """(peak while loading, reclaimable file cache, notes): QLoRA on a CPU reads the full checkpoint."""
    loading, file_cache, notes = runtime + p["weights"], 0.0, []
    if method == "qlora" and device != "cuda":
        file_cache = p["quantized"] * checkpoint_bytes(d)  # the projections' full-precision pages, read once
        loading = runtime + p["total"] * checkpoint_bytes(d) + p["weights"]
        notes.append("CPU: up to the checkpoint's size in file cache may show in RSS until the kernel reclaims it")
    return loading, file_cache, notes


def activation_slack(device: str = "cpu", method: str = "lora", gradient_checkpointing: bool = False) -> float:
    """Temporaries and allocator slack, as a share of the (non-checkpointed) layer activations."""
    if device.startswith("cuda") or device == "gpu":
        return CUDA_SLACK
    return CPU_SLACK[(method, bool(gradient_checkpointing))]


# --------------------------------------------------------------------------- does it fit


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

    device = models.pick_device(device)
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return free / MB
    return psutil.virtual_memory().available / MB  # MPS shares the machine's RAM


# --------------------------------------------------------------------------- GPUs the tables plan for

# GPU memory as nvidia-smi reports it (MiB). The T4's 16 GB shows as ~15 GB usable.
GPUS = {"T4 15 GB": 15 * 1024, "24 GB": 24 * 1024, "40 GB": 40 * 1024, "80 GB": 80 * 1024}
# The T4 (free Colab) has no bf16: fp16 there. The 24-80 GB cards people rent (A10G, RTX 3090/4090,
# A100, H100) are Ampere or newer: bf16.
GPU_DTYPES = {"T4 15 GB": "float16"}
