"""The planner's chart: one stacked bar per estimate (weights, gradients, AdamW, activations,
overhead) against the memory available, and ``show_plan``, the interactive planner's view."""

from __future__ import annotations

from course_lib import models
from course_lib.memory.plan import GPU_DTYPES, GPUS, METHODS, Estimate, available_memory_mb, estimate, fits

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


def show_plan(model: str = "smollm2-135m", method: str = "lora", seq_len: int = 256, batch_size: int = 4,
              gradient_checkpointing: bool = False, memory_for: str = "this machine") -> Estimate:
    """The interactive planner's view: the three methods at these settings, the chosen one's verdict."""
    import matplotlib.pyplot as plt

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
