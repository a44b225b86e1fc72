"""The monitor's figures: one panel per metric of a run, and the diagnosis lab's runs side by side.

They draw on plain matplotlib Figures (not pyplot's) and read only a monitor's records, rules,
best step and alerts, so they need nothing from the callback module that records them.
"""

from __future__ import annotations

import io
import math

PLOTS = ("loss", "grad_norm", "learning_rate", "tokens_per_s", "memory_mb", "perplexity")
DEFAULT_PLOTS = ("loss", "grad_norm", "learning_rate")


def _series(records, key):
    pairs = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pairs], [p[1] if p[1] is not None and math.isfinite(p[1]) else float("nan") for p in pairs]


LABELS = {"learning_rate": "learning rate", "tokens_per_s": "tokens/s", "memory_mb": "memory (MB)"}


def _panel(ax, monitor, plot: str) -> None:
    """Draw PLOT (one of PLOTS) of MONITOR's records (a Monitor) on AX."""
    from matplotlib.ticker import MaxNLocator

    records, rules = monitor.records, monitor.rules
    if plot == "loss":
        ax.plot(*_series(records, "loss"), label="training loss")
        steps, vals = _series(records, "val_loss")
        if steps:
            ax.plot(steps, vals, "o-", label="validation loss")
        if monitor.best and monitor.early_stopped:
            ax.axvline(monitor.best[0], color="tab:green", ls="--", lw=1, label="best (restored)")
        for alert in monitor.alerts:
            ax.axvline(alert.step, color="tab:red", ls=":", lw=1)
            ax.annotate(alert.kind, (alert.step, 1), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=7, color="tab:red")
        ax.set(ylabel="loss")
        ax.legend(fontsize=7)
    elif plot == "grad_norm":
        ax.axhspan(rules.grad_low, rules.grad_high, color="tab:green", alpha=0.08, label="healthy band")
        ax.plot(*_series(records, "grad_norm"), color="black", label="global")
        groups = sorted({g for r in records for g in r.get("grad_norm_groups", {})})
        for group in groups:
            pairs = [(r["step"], r["grad_norm_groups"][group]) for r in records
                     if group in r.get("grad_norm_groups", {})]
            ax.plot(*zip(*pairs), lw=0.8, ls="--", label=group)
        ax.set(yscale="log", ylabel="gradient norm (before clipping)")
        ax.legend(fontsize=7)
    elif plot == "perplexity":
        ax.plot(*_series(records, "val_perplexity"), "o-", color="tab:orange")
        ax.set(ylabel="validation perplexity")
    else:
        ax.plot(*_series(records, plot), color="tab:green" if plot == "learning_rate" else "tab:purple")
        ax.set(ylabel=LABELS[plot])
    ax.set(xlabel="step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def show(fig, handle=None):
    """Display FIG in Jupyter as a PNG (or replace what HANDLE shows); returns the display handle.

    The course draws on plain matplotlib Figures, not pyplot's, so that Jupyter never shows a
    figure twice; they are turned into PNG here, which works whatever the matplotlib backend.
    """
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    image = Image(data=buffer.getvalue(), format="png")
    if handle is not None:
        handle.update(image)
        return handle
    return display(image, display_id=True)


def draw(monitor, plots=DEFAULT_PLOTS):
    """A matplotlib Figure (not attached to pyplot, so Jupyter shows it only where we display it)."""
    from matplotlib.figure import Figure

    plots = [p for p in plots if p in PLOTS] or list(DEFAULT_PLOTS)
    fig = Figure(figsize=(3.6 * len(plots), 3.0), layout="constrained")
    axes = fig.subplots(1, len(plots), squeeze=False)[0]
    for ax, plot in zip(axes, plots):
        _panel(ax, monitor, plot)
    alerts = ", ".join(monitor.alert_kinds) or "none"
    fig.suptitle(f"{monitor.name} · alerts: {alerts}", fontsize=10)
    return fig


def side_by_side(runs: list):
    """The diagnosis lab's runs in columns: loss on top, gradient norm with its band below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(runs), 5.6), layout="constrained")
    axes = fig.subplots(2, len(runs), squeeze=False)
    for column, run in enumerate(runs):
        _panel(axes[0][column], run.monitor, "loss")
        _panel(axes[1][column], run.monitor, "grad_norm")
        axes[0][column].set_title(f"{run.name} (lr {run.config['learning_rate']:g})", fontsize=10)
    return fig

