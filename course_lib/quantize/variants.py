"""The variants of the merged model: what notebook 04 builds with the real calls, and the same
calls as one builder each, in the registry ``build`` looks them up in (for the panel, the command
line, the benchmarks and the tests).

A variant ends as a ``Built`` (``wrap``): how to run it (a runner from course_lib.runtimes), its
bytes on disk and in memory, and notes for the table. ``wrap`` takes what you made: a model you
saved in a folder (PyTorch), an ``.onnx`` file (ONNX Runtime) or a ``.gguf`` file (llama.cpp). Each
builder is the notebook's cell for its variant: load, convert, save, ``wrap``. The export formats
live here too: the ONNX graph with its KV cache, and llama.cpp's converter (its command and the
install-time fetch that GGUF needs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import paths, runtimes
from course_lib.quantize.measure import _free, weight_bytes, weight_files_bytes
from course_lib.runtimes import (
    LLAMA_CPP_VERSION,
    LlamaCppRunner,
    NativeCrash,
    OnnxRunner,
    TorchRunner,
    llama_cpp_available,
)

# What notebook 04 measures by default (bf16 is one click away in its panel).
DEFAULT_VARIANTS = ("fp32", "int8_dynamic", "int8_weight_only", "bnb_int8", "nf4", "pruned", "onnx", "gguf")
RUNTIMES = {"onnx": "ONNX Runtime", "gguf": "llama.cpp"}
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # what llama.cpp's converter writes by itself
# What the table's notes column says of a variant, whoever built it (the notebook or a builder).
NOTES = {"int8_dynamic": "embedding stays fp32, output layer gets an int8 copy",
         "int8_weight_only": "embedding stays fp32, output layer gets an int8 copy", "bnb_int8": "embedding stays fp32",
         "nf4": "embedding stays fp32", "onnx": "tied embedding stored twice"}


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


@dataclass(frozen=True)
class Options:
    """The settings of ``build``; each builder reads the ones its variant has."""

    sparsity: float = 0.2
    gguf_type: str = "q8_0"
    double_quant: bool = True
    int8_skip: tuple = ()
    runnable: bool = True


def _load_fp32(model_dir, dtype="float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()


def fresh_folder(work_dir, variant: str) -> Path:
    """An empty WORK_DIR/VARIANT for a variant's files (an earlier build there is removed: it is derived)."""
    out = Path(work_dir) / variant
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- what you made, ready to measure


def wrap(variant: str, made, folder=None, runnable: bool = True) -> Built:
    """MADE, ready to measure as VARIANT: a model saved in FOLDER, or the path of an .onnx or .gguf file.

    Sizes are measured, not assumed: size on disk from the weight files in FOLDER (a file's own
    folder by default), memory from the model's tensors (the file itself for ONNX and GGUF, which
    the runtime maps into memory). ``runnable=False`` skips starting a runtime (a size check only).
    """
    if isinstance(made, (str, os.PathLike)):
        path = Path(made)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: build it first, then measure it.")
        if path.suffix == ".gguf":
            return _wrap_gguf(variant, path, runnable)
        if path.suffix != ".onnx":
            raise ValueError(f"{path}: a file to measure must be an .onnx or .gguf model")
        size = weight_files_bytes(folder or path.parent)
        return Built(variant, OnnxRunner(path) if runnable else None, size, size, path.parent,
                     notes=[NOTES["onnx"]] if variant == "onnx" else [])
    if folder is None:
        raise ValueError(f"{variant}: save the model first and pass its folder (size on disk is measured there).")
    notes, extra = [NOTES[variant]] if variant in NOTES else [], {}
    kept = _linear_kinds_in_fp32(made) if variant == "int8_dynamic" else []
    if kept:
        notes.append(f"{', '.join(kept)} kept fp32")
    if variant == "pruned":
        extra = decoder_sparsity(made)
        notes.append(f"{extra['measured']:.0%} of decoder weights zero, stored densely")
    return Built(variant, TorchRunner(made), weight_files_bytes(folder), weight_bytes(made), Path(folder),
                 notes=notes, extra=extra)


def _linear_kinds_in_fp32(model) -> list[str]:
    """Kinds of Linear layer (q_proj, down_proj...) a dynamic-int8 model still runs in fp32."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m) is torch.nn.Linear})


def _wrap_gguf(variant: str, path: Path, runnable: bool) -> Built:
    """A GGUF file, run by llama.cpp if it is installed.

    llama.cpp runs in a child process: if it crashes while loading the file (a build for the wrong
    CPU), the variant is written, not run, and its notes say why and how to fix it.
    """
    contents = gguf_contents(path)
    types = contents.get("tensors") or {}
    kind = max(types, key=types.get).lower() if types else path.stem
    notes = [f"{kind}; +{contents['metadata_mb']:.1f} MB tokenizer and template"]
    runner, extra = None, {}
    missing = llama_cpp_available()
    if runnable and missing:
        notes.append("not run: llama-cpp-python is not installed")
    elif runnable:
        try:
            runner = LlamaCppRunner(path)
        except NativeCrash as crash:
            notes.append(f"not run: {crash}")
            extra["error"] = str(crash)
    size = path.stat().st_size
    return Built(variant, runner, size, size, path.parent, notes=notes, extra=extra)


# --------------------------------------------------------------------------- pruning


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


def decoder_sparsity(model) -> dict:
    """The share of exact zeros among the weights of the decoder's Linear layers (what pruning zeroes)."""
    import torch

    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"]
    zeros, total = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    return {"measured": zeros / total if total else 0.0, "pruned_weights": zeros, "prunable": total}


# --------------------------------------------------------------------------- ONNX: the graph with its KV cache


def with_kv_cache(model):
    """MODEL as a module ``torch.onnx.export`` can trace with its KV cache as inputs and outputs.

    Text generation feeds each layer's keys and values back in, token after token; the graph must
    take them (``past.<layer>.key``...) and return the new ones (``present...``), or ONNX Runtime would
    recompute the whole text for every token. The returned module carries what the export call
    needs: ``example`` (inputs to trace), ``input_names``, ``output_names`` and ``dynamic_axes`` (the
    lengths that vary from call to call).
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
    graph = WithCache(model.eval())
    graph.input_names = ["input_ids"] + [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    graph.output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    graph.dynamic_axes = {"input_ids": {1: "sequence"}, "logits": {1: "sequence"},
                          **{n: {2: "past_sequence"} for n in graph.input_names[1:]},
                          **{n: {2: "total_sequence"} for n in graph.output_names[1:]}}
    # Example shapes matter for a tracer: 3 earlier tokens and a 4-token input take the general branch.
    graph.example = (torch.zeros(1, 4, dtype=torch.long),
                     *[torch.zeros(1, kv_heads, 3, head_dim) for _ in graph.input_names[1:]])
    return graph


def export_onnx(model, path) -> Path:
    """Notebook 04's export cell: ``torch.onnx.export`` of MODEL with its KV cache, to PATH.

    The TorchScript-based exporter (``dynamo=False``, opset 17): fast here, and it traces the
    general path (a prompt after earlier tokens) that covers every later call; the parity check
    against PyTorch is what proves it. ``quiet`` hides the tracer's notes about Python branches it froze.
    """
    import torch

    graph = with_kv_cache(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), runtimes.quiet():
        torch.onnx.export(graph, graph.example, path, input_names=graph.input_names, output_names=graph.output_names,
                          dynamic_axes=graph.dynamic_axes, opset_version=17, dynamo=False)
    return path


# --------------------------------------------------------------------------- GGUF: llama.cpp's converter


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


def gguf_command(model_dir, out_file, outtype: str = "q8_0") -> list[str]:
    """The command that converts a model folder to GGUF: llama.cpp's ``convert_hf_to_gguf.py``, run as a script.

    The same list works in a terminal (``shlex.join`` prints it); OUTTYPE is one of ``GGUF_TYPES``,
    the types the converter writes by itself (smaller ones, Q4_K and friends, need llama.cpp's
    compiled ``llama-quantize``).
    """
    if outtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type must be one of {GGUF_TYPES}, not {outtype!r}")
    return [sys.executable, str(converter_dir() / "convert_hf_to_gguf.py"), str(model_dir),
            "--outfile", str(out_file), "--outtype", outtype]


def convert_gguf(model_dir, out_file, outtype: str = "q8_0") -> Path:
    """Run ``gguf_command`` (a child process; ~10-30 s for a 135M model), with its last lines if it fails."""
    command = gguf_command(model_dir, out_file, outtype)
    missing = converter_available()
    if missing:
        raise FileNotFoundError(missing)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True)
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
    fields = reader.fields
    vocabulary = len(fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in fields else 0
    eos = fields["tokenizer.ggml.eos_token_id"].contents() if "tokenizer.ggml.eos_token_id" in fields else None
    return {"tensors": dict(types), "tensor_mb": tensor_bytes / 1e6, "metadata_mb": (size - tensor_bytes) / 1e6,
            "chat_template": "tokenizer.chat_template" in fields,
            "chat_template_text": fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else "",
            "eos_token": fields["tokenizer.ggml.tokens"].contents(eos) if eos is not None and eos < vocabulary else None,
            "vocabulary": vocabulary}


# --------------------------------------------------------------------------- one builder per variant
# Each is notebook 04's cell for its variant, taking (the merged model's folder, the variant's own
# empty folder, Options). The PyTorch and ONNX builders run under runtimes.quiet(), which silences
# the conversion libraries' routine warnings.


@runtimes.quiet()
def build_fp32(model_dir: Path, out: Path, options: Options) -> Built:
    """The baseline: the merged model as saved (nothing new is written)."""
    return wrap("fp32", _load_fp32(model_dir), model_dir)


@runtimes.quiet()
def build_bf16(model_dir: Path, out: Path, options: Options) -> Built:
    """Every weight in bfloat16: fp32's exponent range, a 7-bit mantissa."""
    model = _load_fp32(model_dir, "bfloat16")
    model.save_pretrained(out)
    return wrap("bf16", model, out)


@runtimes.quiet()
def build_int8_dynamic(model_dir: Path, out: Path, options: Options) -> Built:
    """PyTorch dynamic INT8; Linear layers named in ``options.int8_skip`` stay fp32."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    # Every nn.Linear gets int8 weights (one scale per tensor); activations are quantized on
    # the fly, per batch. The embedding is not a Linear: it stays fp32 (and the output layer,
    # which shared it, gets its own int8 copy). Given names instead of the type, only those layers.
    model = _load_fp32(model_dir)
    layers = {torch.nn.Linear}
    if options.int8_skip:
        layers = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                  and not any(part in name for part in options.int8_skip)}
    model = quantize_dynamic(model, layers, dtype=torch.qint8)
    torch.save(model.state_dict(), out / "model.pt")  # save_pretrained cannot write these packed layers
    return wrap("int8_dynamic", model, out)


@runtimes.quiet()
def build_int8_weight_only(model_dir: Path, out: Path, options: Options) -> Built:
    """torchao weight-only INT8: int8 weights with one scale per output row, activations stay fp32."""
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    # Only the weights are rounded, each row of a matrix with its own scale; the activations, where
    # this model's outliers live, are never quantized. quantize_ converts every nn.Linear in place:
    # the embedding is not one and stays fp32, the output layer that shared it gets its own int8 copy.
    model = _load_fp32(model_dir)
    quantize_(model, Int8WeightOnlyConfig())
    torch.save(model.state_dict(), out / "model.pt")  # torchao's int8 tensors are saved with torch.save
    return wrap("int8_weight_only", model, out)


def _bitsandbytes(variant: str, model_dir: Path, out: Path, quant) -> Built:
    """Load MODEL_DIR quantized by bitsandbytes with QUANT (a BitsAndBytesConfig) and save it."""
    import torch
    from transformers import AutoModelForCausalLM

    # bitsandbytes quantizes the Linear layers of the decoder; it keeps the embedding and the
    # output layer (tied to it) in full precision: they are sensitive and one matrix.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=quant,
                                                 device_map={"": "cpu"})
    model.save_pretrained(out)
    return wrap(variant, model, out)


@runtimes.quiet()
def build_bnb_int8(model_dir: Path, out: Path, options: Options) -> Built:
    """bitsandbytes LLM.int8: int8 weights with an fp32 scale per output row."""
    from transformers import BitsAndBytesConfig

    return _bitsandbytes("bnb_int8", model_dir, out, BitsAndBytesConfig(load_in_8bit=True))


@runtimes.quiet()
def build_nf4(model_dir: Path, out: Path, options: Options) -> Built:
    """bitsandbytes NF4 (4-bit), with double quantization unless ``options.double_quant`` is False."""
    import torch
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=options.double_quant, bnb_4bit_compute_dtype=torch.float32)
    return _bitsandbytes("nf4", model_dir, out, quant)


@runtimes.quiet()
def build_pruned(model_dir: Path, out: Path, options: Options) -> Built:
    """Magnitude pruning to ``options.sparsity``, saved as a dense fp32 model."""
    model = _load_fp32(model_dir)
    prune_magnitude(model, options.sparsity)
    model.save_pretrained(out)
    return wrap("pruned", model, out)


@runtimes.quiet()
def build_onnx(model_dir: Path, out: Path, options: Options) -> Built:
    """An ONNX graph with the KV cache, run by ONNX Runtime."""
    model = _load_fp32(model_dir)
    path = export_onnx(model, out / "model.onnx")
    _free(model)
    return wrap("onnx", path, runnable=options.runnable)


def build_gguf(model_dir: Path, out: Path, options: Options) -> Built:
    """A GGUF file of type ``options.gguf_type`` from llama.cpp's converter, run by llama.cpp if installed."""
    path = convert_gguf(model_dir, out / f"model-{options.gguf_type}.gguf", options.gguf_type)
    return wrap("gguf", path, runnable=options.runnable)


# The registry: variant name -> its builder, in the order the table lists them.
BUILDERS = {
    "fp32": build_fp32, "bf16": build_bf16, "int8_dynamic": build_int8_dynamic,
    "int8_weight_only": build_int8_weight_only, "bnb_int8": build_bnb_int8, "nf4": build_nf4,
    "pruned": build_pruned, "onnx": build_onnx, "gguf": build_gguf,
}
VARIANTS = tuple(BUILDERS)  # ("fp32", "bf16", "int8_dynamic", "int8_weight_only", "bnb_int8", "nf4", ...)


def build(variant: str, model_dir, work_dir, sparsity: float = 0.2, gguf_type: str = "q8_0",
          double_quant: bool = True, int8_skip: tuple = (), runnable: bool = True) -> Built:
    """Make VARIANT of the merged model in MODEL_DIR, saving its files under WORK_DIR/VARIANT.

    ``int8_skip``: Linear layers whose name contains one of these stay fp32 in ``int8_dynamic``
    (e.g. ``("down_proj",)``); ``runnable=False`` only writes the files (for a size check).
    """
    builder = BUILDERS.get(variant)
    if builder is None:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    out = fresh_folder(work_dir, variant)
    return builder(Path(model_dir), out, Options(sparsity, gguf_type, double_quant, int8_skip, runnable))


def measure_size(variant: str, model_dir, work_dir, **options) -> float:
    """Build VARIANT's files only and return their size on disk in MB (for predict-then-measure)."""
    built = build(variant, model_dir, work_dir, runnable=False, **options)
    _free(built.runner)
    return built.disk_bytes / 1e6
