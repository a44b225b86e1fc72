"""Which number format trains fastest on this CPU: measured once per machine, never assumed.

On a GPU the answer is known (bf16 where the GPU has it, else fp16 with loss scaling). On a CPU it
depends on the chip and on PyTorch's kernels: bf16 matrix products run several times faster than
fp32 on CPUs with AMX units and slower on many without, and a training step is more than matrix
products. So ``precision_speed.measure`` times a few real LoRA training steps and a short
generation in three formats (after a one-second ``probe`` that rules out a format whose core kernel
is already slower than fp32's) and ``choose`` picks the fastest whose loss agrees with fp32:

- ``fp32``: weights and math in fp32 (exact; the safe answer);
- ``bf16``: fp32 weights, the math under bf16 autocast (``TrainingArguments(bf16=True)``): autocast
  converts every frozen weight to bf16 again at each forward, which can eat the matmul's gain;
- ``bf16-weights``: the frozen base weights stored in bf16, the LoRA matrices and their optimizer
  in fp32, the math under autocast (what QLoRA does with its compute dtype): no conversions.

The choice is kept in the course cache (``precision.json``, one entry per CPU model and PyTorch
version) and serves training (``train.precision_flags``), evaluation and the server (loading
in bf16 when ``bf16-weights`` won, through ``models.pick_dtype``). ``COURSE_PRECISION=fp32`` (or
``bf16``, ``bf16-weights``) in the environment overrides it everywhere.
"""

from __future__ import annotations

import json
import os
import time

from course_lib import cpu, paths, ui

FORMATS = ("fp32", "bf16", "bf16-weights")
ENV = "COURSE_PRECISION"
LOSS_TOLERANCE = 0.02  # a format's first-step loss may differ from fp32's by this share at most
MIN_SPEEDUP = 1.1  # ... and must train at least this much faster than fp32 (below that is timing noise)


def machine_key() -> str:
    """What the measurement depends on: the CPU, its bf16 units and the PyTorch build (its kernels).

    The flags are part of the key because a model name can hide two chips: a cloud VM reported as
    "AMD EPYC" ran on hosts with and without ``avx512_bf16``, and bf16 won on one, lost on the other.
    """
    import torch

    units = sorted(flag for flag in cpu.cpu_flags() if "bf16" in flag or flag.startswith("amx"))
    return f"{cpu.cpu_name()} [{' '.join(units) or 'no bf16 units'}] | torch {torch.__version__}"


def _cache_file():
    return paths.cache_dir() / "precision.json"


def _every_machine() -> dict:
    """The cache file's entries, one per machine; none when it is missing or unreadable."""
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def remembered() -> dict | None:
    """This machine's last measurement and choice, or None if it was never measured."""
    return _every_machine().get(machine_key())


def remember(measured: dict, choice: str) -> None:
    """Keep MEASURED and CHOICE for this machine (written whole, then renamed: never half a file)."""
    cache = _cache_file()
    known = _every_machine()
    known[machine_key()] = {"choice": choice, "measured": measured, "when": time.strftime("%Y-%m-%d %H:%M")}
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(known, indent=1))
    partial.replace(cache)


def pinned() -> str | None:
    """The format forced by ``COURSE_PRECISION``, if set (a clear error when it names none)."""
    value = os.environ.get(ENV, "").strip()
    if value and value not in FORMATS:
        raise ValueError(f"{ENV}={value!r}: use one of {', '.join(FORMATS)} (or unset it to measure)")
    return value or None


def choose(measured: dict, tolerance: float = LOSS_TOLERANCE, min_speedup: float = MIN_SPEEDUP) -> str:
    """The fastest format whose loss agrees with fp32's within TOLERANCE and that beats fp32's
    training speed by MIN_SPEEDUP; fp32 when none does (or when fp32 was not measured).

    Formats that train within MIN_SPEEDUP of the fastest are a tie (timing noise, on a shared
    machine): among them the one that generates fastest wins, since evaluation and the server use
    the choice too. Without the tie-break, bf16 and bf16-weights swapped places between runs.
    """
    base = measured.get("fp32")
    if not base:
        return "fp32"
    fast = {name: m for name, m in measured.items()
            if name != "fp32" and not m.get("skipped")
            and abs(m["loss"] - base["loss"]) <= tolerance * abs(base["loss"])
            and m["train_tokens_per_s"] >= base["train_tokens_per_s"] * min_speedup}
    if not fast:
        return "fp32"
    fastest = max(m["train_tokens_per_s"] for m in fast.values())
    tied = {name: m for name, m in fast.items() if m["train_tokens_per_s"] * min_speedup >= fastest}
    return max(tied, key=lambda name: (tied[name]["generate_tokens_per_s"], tied[name]["train_tokens_per_s"]))


def cpu_choice() -> str | None:
    """The CPU format: pinned by the environment, else remembered; None if never measured here
    (``precision_speed.measure_and_remember`` measures; training does it, loading never does)."""
    forced = pinned()
    if forced:
        return forced
    known = remembered()
    return known["choice"] if known else None


def describe(measured: dict, choice: str) -> str:
    """One sentence: the chosen format's speed against fp32's."""
    base = measured["fp32"]["train_tokens_per_s"]
    speeds = ", ".join(f"{name} {m['probe_speedup']:.2f}x (one layer only: slower, not timed further)"
                       if m.get("skipped") else f"{name} {m['train_tokens_per_s'] / base:.2f}x"
                       for name, m in measured.items())
    return f"training speed relative to fp32: {speeds}; chosen: {choice}"


HOW = {"fp32": "fp32 weights, fp32 math", "bf16": "fp32 weights, bf16 autocast",
       "bf16-weights": "bf16 frozen weights, fp32 adapter, bf16 autocast"}


def table(measured: dict, choice: str):
    """MEASURED as a table: one row per format, speeds relative to fp32, the chosen one marked."""
    base = measured["fp32"]
    rows = []
    for name, m in measured.items():
        timed = not m.get("skipped")
        rows.append({
            "format": name, "weights and math": HOW.get(name, ""),
            "one layer vs fp32": f"{m['probe_speedup']:.2f}x",
            "training vs fp32": f"{m['train_tokens_per_s'] / base['train_tokens_per_s']:.2f}x" if timed else "not timed",
            "generation vs fp32": (f"{m['generate_tokens_per_s'] / base['generate_tokens_per_s']:.2f}x"
                                   if timed else "not timed"),
            "first-step loss": f"{m['loss']:.4f}" if timed else "",
            "chosen": "yes" if name == choice else ""})
    return ui.Table(rows, title=f"Number formats on this CPU (fp32: {base['train_tokens_per_s']:.0f} training "
                                f"tokens/s, {base['generate_tokens_per_s']:.1f} generated tokens/s)")
