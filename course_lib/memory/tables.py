"""The planner's tables: memory claims common in fine-tuning tutorials, checked; the best method
per GPU; and the planner-vs-measurement rows of ``measure.compare`` as a table, report figures and
one sentence.

Every figure here is an estimate from ``plan`` except the measured peaks in ``compare``'s rows.
"""

from __future__ import annotations

from course_lib import models
from course_lib.memory.plan import GPU_DTYPES, GPUS, HEADROOM, METHODS, available_memory_mb, estimate, fits
from course_lib.ui import Table

# --------------------------------------------------------------------------- planning tables


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB"


def claims(seq_len: int = 512, batch_size: int = 1, gradient_checkpointing: bool = True) -> list[dict]:
    """Memory claims common in fine-tuning tutorials, checked by the planner for a GPU in bf16
    (estimates, not measurements). They echo the QLoRA paper's headline (Dettmers et al. 2023: a 65B
    model fine-tuned on one 48 GB GPU), scaled down to the models people try first."""
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


# --------------------------------------------------------------------------- planner vs measurement


def compare_table(rows: list[dict]):
    """``compare``'s rows as a table: method, estimate, measured, ratio, seconds."""
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
