"""The planner's charts: ``plot``, one stacked bar per estimate (weights, gradients, AdamW,
activations, overhead) against the memory available; ``plot_growth``, how the four kinds of tensors
grow with the tokens of a step, per method; and ``show_plan``, the interactive planner's view."""

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


def plot_growth(model, tokens=None, device: str = "cpu", dtype: str | None = None, mark: int | None = None):
    """Where training memory goes: one panel per method, the four kinds of tensors (weights,
    gradients, AdamW states, activations) stacked against the tokens of one step (batch x sequence).

    Activations depend on the tokens of a step, not on how they split into batch and sequence (on
    the sdpa attention path the planner assumes), so the x axis is tokens at batch 1. MARK draws a
    line at a notebook's own tokens per step. The runtime's overhead is left out: ``plot`` shows it.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    tokens = list(tokens or [2**k for k in range(6, 12)])  # 64 to 2048
    parts = [p for p in Estimate.PARTS if p != "overhead"]
    fig, axes = plt.subplots(1, len(METHODS), figsize=(11, 3.3), sharey=True)
    for ax, method in zip(axes, METHODS):
        plans = [estimate(model, method, n, 1, device=device, dtype=dtype) for n in tokens]
        ax.stackplot(tokens, *[[e.breakdown()[p] / 1024 for e in plans] for p in parts],
                     colors=[COLORS[p] for p in parts], labels=[LABELS.get(p, p) for p in parts])
        if mark:
            ax.axvline(mark, color="black", linestyle="--", linewidth=1, label="this notebook's runs")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set(title=method, xlabel="tokens per step (batch x sequence)", xlim=(tokens[0], tokens[-1]))
    axes[0].set_ylabel("GB (2^30 bytes)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    fig.suptitle(f"{plans[0].model} on {plans[0].device} ({plans[0].dtype}): the tensors of one training step")
    fig.tight_layout()
    return fig


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


def plot_recommend(rows: list[dict], title: str = "Best method that fits (planner estimates)"):
    """``tables.recommend``'s rows as a grid: one row per model, one column per memory size, each
    cell colored by the method that fits (lighter with gradient checkpointing) and labelled with it."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    columns = [c for c in rows[0] if c not in ("model", "parameters")]
    base = {"full": COLORS["optimizer"], "lora": COLORS["weights"], "qlora": COLORS["activations"]}
    fig, ax = plt.subplots(figsize=(1.9 * len(columns) + 2.5, 0.42 * len(rows) + 1.4))
    for y, row in enumerate(rows):
        for x, column in enumerate(columns):
            choice = row[column]
            method = choice.split(" (")[0]
            color = to_rgba(base.get(method.split(" + ")[0], "#eeeeee"), 0.45 if "ckpt" in method else 0.9)
            ax.add_patch(plt.Rectangle((x, y), 1, 1, facecolor=color, edgecolor="white"))
            ax.text(x + 0.5, y + 0.5, choice.replace(" (", "\n("), ha="center", va="center", fontsize=7)
    ax.set(xlim=(0, len(columns)), ylim=(len(rows), 0), title=title)
    ax.set_xticks([x + 0.5 for x in range(len(columns))], columns, fontsize=8)
    ax.set_yticks([y + 0.5 for y in range(len(rows))], [f"{r['model']} ({r.get('parameters', '')})" for r in rows],
                  fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    return fig
