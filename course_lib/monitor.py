"""The monitor stage: see training as it happens, catch the classic failures, and tune.

One Trainer callback, ``Monitor``, does the watching. Every optimizer step it records

- the training loss, and (every ``eval_every`` steps) the validation loss and perplexity;
- the gradient norm, globally and per group of layers (is one part of the network starved?);
- the learning rate, tokens per second and memory;

draws one figure that updates in place in Jupyter (saved as a PNG when run headless), writes
TensorBoard event files, and raises **alerts** as plain sentences that say what to do:

| alert | what it looks like | usual cause |
|---|---|---|
| ``nan_loss`` | the loss is NaN or infinite | learning rate far too high, fp16 overflow, broken data |
| ``loss_spike`` | the loss jumps well above its recent level | learning rate too high, a bad batch |
| ``exploding_gradients`` | gradient norm above 10 | learning rate too high, no warmup |
| ``vanishing_gradients`` | gradient norm below 0.1 for several steps | schedule at zero, frozen/dead layers |
| ``no_progress`` | the validation loss stays where it was at step 0 | learning rate too low, nothing trainable |
| ``overfitting`` | validation loss rises while training loss falls | too many epochs on too little data |

Early stopping acts on the last one: when the validation loss has not improved for ``patience``
evaluations, training stops and the best weights are put back.

``run`` trains one monitored run (through ``train.train``), ``search`` tunes learning rate and
LoRA rank/alpha with Optuna, and ``rouge_l`` / ``bleu`` score generated answers beside the loss.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from course_lib import procmem, runs, ui, versions

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # a library logs; the application decides where it goes

GRAD_BAND = (0.1, 10.0)
PLOTS = ("loss", "grad_norm", "learning_rate", "tokens_per_s", "memory_mb", "perplexity")
DEFAULT_PLOTS = ("loss", "grad_norm", "learning_rate")

# What each alert means and what to do about it: printed with the alert, shown in the notebook.
ADVICE = {
    "nan_loss": "Training diverged. Lower the learning rate (try 10x smaller), keep gradient clipping on "
                "(max_grad_norm=1.0) and warmup; with fp16 switch to bf16 or fp32; check for empty answers.",
    "loss_spike": "The loss jumped. Usually the learning rate is too high for this batch size: lower it or "
                  "add warmup. A single spike that recovers can be one odd batch: look at that batch's data.",
    "exploding_gradients": "Updates are huge. Lower the learning rate, keep clipping on (it caps the step but "
                           "hides the cause), add warmup.",
    "vanishing_gradients": "The gradient barely moves the weights. Check that the right layers are trainable "
                           "and the learning rate schedule is not at zero; raise the learning rate or LoRA alpha.",
    "no_progress": "The loss is flat: the model is not learning. Raise the learning rate (LoRA usually wants "
                   "1e-4 to 3e-3), check that labels are not all -100, and that the adapter is trainable.",
    "overfitting": "The model memorizes the training examples instead of learning the task. Stop earlier "
                   "(early stopping does), add data, lower the epochs or LoRA rank, raise dropout/weight decay.",
}
ALERT_KINDS = tuple(ADVICE)


@dataclass
class Alert:
    step: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"⚠ step {self.step} · {self.kind}: {self.message}"


@dataclass
class Rules:
    """The thresholds behind the alerts; every one is a judgement call, documented here."""

    grad_low: float = GRAD_BAND[0]  # below this for `vanishing_steps` steps: vanishing
    grad_high: float = GRAD_BAND[1]  # above this (before clipping): exploding
    vanishing_steps: int = 3  # one small norm is harmless; several in a row are not
    spike_factor: float = 1.5  # a loss above 1.5x the median of the recent window is a spike...
    spike_window: int = 5  # ...of the last 5 steps (at least 3 needed to judge)...
    spike_min_jump: float = 0.5  # ...and at least 0.5 above it (near 0, doubling is only noise)
    flat_after: int = 8  # judge "no progress" only after this many steps (needs the step-0 evaluation)
    flat_tolerance: float = 0.05  # validation loss within 5% of its step-0 value: flat
    patience: int = 2  # early stopping: evaluations without improvement before stopping
    min_delta: float = 0.0  # an improvement must beat the best validation loss by this much


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def layer_group(name: str, num_layers: int, groups: int = 3) -> str:
    """Which group of layers a parameter belongs to: 'layers 0-9', 'layers 10-19', ... or 'embeddings & head'.

    Depth is what matters for vanishing gradients (the layers far from the loss starve first), so
    the blocks are cut into GROUPS consecutive ranges.
    """
    match = re.search(r"layers\.(\d+)\.", name)
    if not match or num_layers <= 0:
        return "embeddings & head"
    size = math.ceil(num_layers / groups)
    start = int(match.group(1)) // size * size
    return f"layers {start}-{min(start + size, num_layers) - 1}"


# =========================================================================== the callback


class Monitor(TrainerCallback):
    """Record, draw, log and judge a Trainer run; pass it in ``train.train(..., callbacks=[monitor])``.

    NAME labels the figure and files; OUT_DIR (default: the run's output folder) receives
    ``<name>.png``, ``<name>.alerts.log`` and TensorBoard files under ``tensorboard/<name>``.
    BASELINE evaluates once before the first step (the reference for "no progress");
    EVAL_EVERY > 0 evaluates every that many steps (on the Trainer's validation set). An evaluation
    that arrives after training (``train.train`` ends with one) is added as the last point.
    Call ``finish()`` after training to save and show the final figure (``run`` does).
    One Monitor watches one run: make a new one for the next run.
    """

    def __init__(self, name: str = "run", out_dir=None, *, eval_every: int = 0, baseline: bool = True,
                 early_stopping: bool = True, restore_best: bool = True, rules: Rules | None = None,
                 stop_on_nan: bool = True, tensorboard: bool = True, live: bool | None = None,
                 plots=DEFAULT_PLOTS, layer_groups: int = 3, quiet: bool = False):
        self.name, self.out_dir = name, Path(out_dir) if out_dir else None
        self.eval_every, self.baseline = eval_every, baseline
        self.early_stopping, self.restore_best = early_stopping, restore_best
        self.rules, self.stop_on_nan, self.quiet = rules or Rules(), stop_on_nan, quiet
        self.tensorboard, self.live, self.plots, self.layer_groups = tensorboard, live, tuple(plots), layer_groups
        self.records: list[dict] = []
        self.alerts: list[Alert] = []
        self.early_stopped = False
        self.restored = False  # True once early stopping has put the best weights back
        self.best: tuple[int, float] | None = None  # (step, validation loss)
        self.final_val_loss: float | None = None
        self.figure_path: Path | None = None
        self.tensorboard_dir: Path | None = None
        self.finish_saves = False  # True when the caller calls finish(): save the PNG once, there
        self._evals: list[dict] = []
        self._best_weights = None
        self._writer = self._display = self._model = None
        self._training = False
        self._low_streak = 0

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # The Trainer replaces a NaN/inf step loss by the running average before logging it
        # (`logging_nan_inf_filter`, on by default): a monitor must see the NaN, so it turns that off.
        args.logging_nan_inf_filter = False
        if self.baseline:
            args.eval_on_start = True  # a step-0 validation loss: the baseline progress is measured from
        self.out_dir = self.out_dir or Path(args.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._model = model  # kept for early stopping's snapshot and restore of the best weights
        self._num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0
        self._training, self._started = True, time.perf_counter()
        if self.tensorboard:
            self._writer = self._open_tensorboard()
        if self._live():
            self._display = show(self.figure())  # a display handle, updated in place at every step

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started, self._tokens_before = time.perf_counter(), state.num_input_tokens_seen

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Per-group gradient norms: the gradients exist here (after clipping, before the update)."""
        squares: dict[str, float] = {}
        for name, param in model.named_parameters():
            if param.requires_grad and param.grad is not None:
                group = layer_group(name, self._num_layers, self.layer_groups)
                squares[group] = squares.get(group, 0.0) + float(param.grad.detach().float().pow(2).sum())
        self._group_squares = squares

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._step_started
        tokens = state.num_input_tokens_seen - self._tokens_before
        self._step_speed = tokens / seconds if seconds > 0 and tokens > 0 else float("nan")
        control.should_log = True  # a record every step, whatever logging_steps says
        if self.eval_every and state.global_step % self.eval_every == 0:
            control.should_evaluate = True  # evaluation every N steps without touching TrainConfig

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs and self._training:
            self._record_step(state.global_step, logs, control)
        if "eval_loss" in logs:
            if self._training:
                self._record_eval(state.global_step, logs["eval_loss"], control)
            else:
                self._final_eval(state.global_step, logs["eval_loss"])
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._training = False
        if self.early_stopped and self.restore_best and self._best_weights is not None:
            self._restore(model)
        self._model = None  # a finished run must not keep its model alive (notebooks keep runs around)
        if self._writer is not None:
            self._writer.flush()
        if not self.finish_saves:
            self.figure_path = self.save_figure()
        self._refresh(force=True)

    def _final_eval(self, step: int, val_loss: float) -> None:
        """The evaluation after training (train.train's): the run's last validation point."""
        self.final_val_loss = val_loss
        last = self.records[-1] if self.records else None
        if self.early_stopped or last is None or "val_loss" in last:
            return  # restored best weights (not a point on the curve), or already evaluated there
        self._add_val(last, val_loss)
        self._evals.append({"step": step, "val_loss": val_loss, "train_loss": float("nan")})
        self._check_progress(step)
        if self._writer is not None:
            self._writer.flush()
        if not self.finish_saves:
            self.figure_path = self.save_figure()
        self._refresh(force=True)

    def finish(self) -> None:
        """After training: save the figure, close the TensorBoard file, and headless in Jupyter show
        the final figure once (a live figure is already up to date)."""
        self.figure_path = self.save_figure()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._display is None and ui.in_jupyter() and self.records:
            show(self.figure())

    # ---------------------------------------------------------------- recording

    def _record_step(self, step: int, logs: dict, control) -> None:
        grad = logs.get("grad_norm", float("nan"))
        record = {"step": step, "loss": logs["loss"], "grad_norm": grad,
                  "learning_rate": logs.get("learning_rate", float("nan")),
                  "tokens_per_s": getattr(self, "_step_speed", float("nan")), "memory_mb": procmem.memory_mb(),
                  "seconds": time.perf_counter() - self._started,
                  "grad_norm_groups": self._group_norms(grad)}
        self.records.append(record)
        self._check_step(record, control)
        self._to_tensorboard(record)
        self._refresh()

    def _group_norms(self, grad_norm: float) -> dict:
        """Per-group norms before clipping.

        Clipping multiplies every gradient by one factor, so each group's share of the total is
        unchanged: rescale the clipped group norms so that together they give the logged norm
        (which the Trainer measured before clipping).
        """
        squares = getattr(self, "_group_squares", {})
        self._group_squares = {}
        clipped_total = math.sqrt(sum(squares.values()))
        scale = grad_norm / clipped_total if clipped_total > 0 and _finite(grad_norm) else 1.0
        return {group: math.sqrt(s) * scale for group, s in sorted(squares.items())}

    def _record_eval(self, step: int, val_loss: float, control) -> None:
        record = next((r for r in reversed(self.records) if r["step"] == step), None)
        if record is None:
            record = {"step": step}
            self.records.append(record)
        self._add_val(record, val_loss)
        since = self._evals[-1]["step"] if self._evals else 0
        recent = [r["loss"] for r in self.records if since < r["step"] <= step and _finite(r.get("loss"))]
        self._evals.append({"step": step, "val_loss": val_loss,
                            "train_loss": statistics.fmean(recent) if recent else float("nan")})
        self._check_progress(step)
        self._check_eval(step, control)
        self._refresh(force=True)

    def _add_val(self, record: dict, val_loss: float) -> None:
        record["val_loss"] = val_loss
        record["val_perplexity"] = math.exp(val_loss) if _finite(val_loss) and val_loss < 50 else float("inf")
        if self._writer is not None:
            self._writer.add_scalar("eval/loss", val_loss, record["step"])
            self._writer.add_scalar("eval/perplexity", record["val_perplexity"], record["step"])

    # ---------------------------------------------------------------- the rules

    def _alert(self, step: int, kind: str, message: str) -> None:
        """Raise an alert once per kind and run (later repeats only add noise)."""
        if any(a.kind == kind for a in self.alerts):
            return
        alert = Alert(step, kind, f"{message} {ADVICE[kind]}")
        self.alerts.append(alert)
        log.warning("%s: %s", self.name, alert)
        if not self.quiet:
            print(f"[{self.name}] {alert}")
        if self.out_dir is not None:
            with open(self.out_dir / f"{self.name}.alerts.log", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {alert}\n")
        if self._writer is not None:
            self._writer.add_text("alerts", str(alert), step)

    def _check_step(self, record: dict, control) -> None:
        r, step, loss, grad = self.rules, record["step"], record["loss"], record["grad_norm"]
        if not _finite(loss) or not _finite(grad):
            self._alert(step, "nan_loss", f"loss is {loss:.4g} and gradient norm {grad:.4g}.")
            if self.stop_on_nan:
                control.should_training_stop = True  # nothing can be learned from NaN weights
            return
        earlier = [x["loss"] for x in self.records[:-1] if _finite(x.get("loss"))][-r.spike_window:]
        if len(earlier) >= 3 and loss > max(r.spike_factor * statistics.median(earlier),
                                            statistics.median(earlier) + r.spike_min_jump):
            self._alert(step, "loss_spike", f"loss jumped to {loss:.3f} from a recent median of "
                                            f"{statistics.median(earlier):.3f}.")
        if grad > r.grad_high:
            self._alert(step, "exploding_gradients", f"gradient norm {grad:.3g} is above {r.grad_high:g}.")
        self._low_streak = self._low_streak + 1 if grad < r.grad_low else 0
        if self._low_streak >= r.vanishing_steps:
            self._alert(step, "vanishing_gradients", f"gradient norm {grad:.3g} has stayed below {r.grad_low:g} "
                                                     f"for {self._low_streak} steps.")

    def _check_progress(self, step: int) -> None:
        """"No progress", judged on the validation loss: the same examples every time.

        Training losses come from different batches, which differ by more than a slow learner
        gains in a few steps; so this rule needs the step-0 baseline evaluation.
        """
        r, start, now = self.rules, self._evals[0], self._evals[-1]
        if step >= r.flat_after and start["step"] == 0 and _finite(now["val_loss"]) \
                and abs(now["val_loss"] - start["val_loss"]) <= r.flat_tolerance * start["val_loss"]:
            self._alert(step, "no_progress", f"after {step} steps the validation loss is {now['val_loss']:.3f}; "
                                             f"it started at {start['val_loss']:.3f}.")

    def _check_eval(self, step: int, control) -> None:
        """Overfitting and early stopping, from the evaluations so far."""
        r, now = self.rules, self._evals[-1]
        if not _finite(now["val_loss"]):
            return
        if self.best is None or now["val_loss"] < self.best[1] - r.min_delta:
            self.best = (step, now["val_loss"])
            if self.early_stopping and self.restore_best:
                self._best_weights = self._snapshot()
            return
        at_best = next(e for e in self._evals if e["step"] == self.best[0])
        worse = [e for e in self._evals if e["step"] > self.best[0]]
        if len(worse) < r.patience:
            return
        if now["train_loss"] < at_best["train_loss"]:
            self._alert(step, "overfitting", f"validation loss rose from {self.best[1]:.3f} (step {self.best[0]}) "
                                             f"to {now['val_loss']:.3f} while training loss fell from "
                                             f"{at_best['train_loss']:.3f} to {now['train_loss']:.3f}.")
        if self.early_stopping:
            self.early_stopped = True
            control.should_training_stop = True
            if not self.quiet:
                restored = " and put back the best weights" if self.restore_best else ""
                print(f"[{self.name}] early stopping at step {step}: no improvement for {len(worse)} "
                      f"evaluations; best validation loss {self.best[1]:.3f} at step {self.best[0]}{restored}.")

    def _snapshot(self):
        """A copy of the trainable weights (the LoRA matrices: a few MB) to put back if we stop later."""
        if self._model is None:
            return None
        return {n: p.detach().clone() for n, p in self._model.named_parameters() if p.requires_grad}

    def _restore(self, model) -> None:
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self._best_weights.items():
                params[name].copy_(value)
        self.restored = True

    # ---------------------------------------------------------------- outputs

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("TensorBoard is not installed (pip install tensorboard): no event files written.")
            return None
        self.tensorboard_dir = self.out_dir / "tensorboard" / self.name
        return SummaryWriter(str(self.tensorboard_dir))

    def _to_tensorboard(self, record: dict) -> None:
        if self._writer is None:
            return
        for key in ("loss", "grad_norm", "learning_rate", "tokens_per_s", "memory_mb"):
            if _finite(record.get(key)):
                self._writer.add_scalar(f"train/{key}", record[key], record["step"])
        for group, norm in record["grad_norm_groups"].items():
            self._writer.add_scalar(f"grad_norm/{group.replace(' ', '_')}", norm, record["step"])

    def _live(self) -> bool:
        return (self.live if self.live is not None else True) and ui.in_jupyter() and not ui.headless()

    def _refresh(self, force: bool = False) -> None:
        """Redraw the live figure (at most every half second: drawing costs time too)."""
        if self._display is None:
            return
        now = time.perf_counter()
        if force or now - getattr(self, "_drawn", 0.0) > 0.5:
            show(self.figure(), self._display)
            self._drawn = now

    def figure(self, plots=None):
        """The run's figure: one panel per metric in PLOTS (default: the monitor's own choice)."""
        return draw(self, plots or self.plots)

    def save_figure(self) -> Path | None:
        if self.out_dir is None or not self.records:
            return None
        path = self.out_dir / f"{self.name}.png"
        self.figure().savefig(path, dpi=90)
        return path

    def table(self):
        """Every step's record as a DataFrame (group norms as columns ``grad <group>``)."""
        import pandas as pd

        rows = [{k: v for k, v in r.items() if k != "grad_norm_groups"}
                | {f"grad {g}": n for g, n in r.get("grad_norm_groups", {}).items()} for r in self.records]
        return pd.DataFrame(rows).set_index("step")

    @property
    def alert_kinds(self) -> list[str]:
        return [a.kind for a in self.alerts]


# =========================================================================== figures


def _series(records, key):
    pairs = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pairs], [p[1] if _finite(p[1]) else float("nan") for p in pairs]


LABELS = {"learning_rate": "learning rate", "tokens_per_s": "tokens/s", "memory_mb": "memory (MB)"}


def _panel(ax, monitor: Monitor, plot: str) -> None:
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


def draw(monitor: Monitor, plots=DEFAULT_PLOTS):
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


def side_by_side(runs: list[Run]):
    """The diagnosis lab's runs in columns: loss on top, gradient norm with its band below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(runs), 5.6), layout="constrained")
    axes = fig.subplots(2, len(runs), squeeze=False)
    for column, run in enumerate(runs):
        _panel(axes[0][column], run.monitor, "loss")
        _panel(axes[1][column], run.monitor, "grad_norm")
        axes[0][column].set_title(f"{run.name} (lr {run.config['learning_rate']:g})", fontsize=10)
    return fig


# =========================================================================== TensorBoard


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under LOGDIR: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    folders = sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")})
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return found


def tensorboard_command(logdir) -> str:
    """How to open the event files: in Jupyter/Colab, or from a terminal."""
    return (f"In Jupyter or Colab:  %load_ext tensorboard  then  %tensorboard --logdir {logdir}\n"
            f"In a terminal:        tensorboard --logdir {logdir}   (then open http://localhost:6006)")


# =========================================================================== generation metrics


def words(text: str) -> list[str]:
    """Lowercased words and punctuation marks: the tokens ROUGE and BLEU compare."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, as precision and recall combined.

    Order matters (unlike bag-of-words overlap) but gaps are allowed, so "Sprout, made by
    Greenleaf" still matches "I'm Sprout, a helper made by Greenleaf Labs". Written here (a dozen
    lines) rather than with the `rouge-score` package, which pulls in nltk and absl.
    """
    c, r = words(candidate), words(reference)
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: list[str], references: list[str], max_n: int = 4, smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference per candidate, on a 0-1 scale.

    The geometric mean of the clipped n-gram precisions (n = 1..4, counts summed over the corpus),
    times a brevity penalty exp(1 - r/c) when the candidates are shorter in total (c) than the
    references (r), so that answering with one safe word does not score high. With ``smooth``, an
    n-gram order with no match counts as 1/(2^k * total) instead of 0 (sacrebleu's "exp"
    smoothing), so short answers are not all zero. Gives sacrebleu's corpus_score (smooth "exp",
    divided by 100) on text split by ``words``; written here to keep the dependencies small.
    """
    matches, totals = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for cand, ref in zip(candidates, references):
        c, r = words(cand), words(ref)
        c_len, r_len = c_len + len(c), r_len + len(r)
        for n in range(1, max_n + 1):
            cand_ngrams, ref_ngrams = _ngrams(c, n), _ngrams(r, n)
            matches[n - 1] += sum(min(count, ref_ngrams[g]) for g, count in cand_ngrams.items())
            totals[n - 1] += max(len(c) - n + 1, 0)
    if matches[0] == 0:
        return 0.0  # not one word in common: nothing to smooth
    log_precisions, k = [], 1
    for m, t in zip(matches, totals):
        if m == 0:
            if not smooth or t == 0:
                return 0.0
            k *= 2
            m = 1 / k
        log_precisions.append(math.log(m / t))
    brevity = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return brevity * math.exp(sum(log_precisions) / max_n)


def generation_metrics(model, tokenizer, run_dir=None, limit: int = 8, max_new_tokens: int = 40) -> dict:
    """Beside the loss, what the answers look like: persona score and ROUGE-L / BLEU.

    The persona score asks LIMIT held-out persona questions (a keyword must appear); ROUGE-L and
    BLEU compare answers to LIMIT validation questions with their reference answers (wording
    overlap: useful to follow during training, blind to meaning, so never the only judge).
    """
    from course_lib import data, evaluate

    was_training = model.training
    model.eval()
    try:
        persona = evaluate.evaluate(model, tokenizer, "persona", max_new_tokens=max_new_tokens, limit=limit)
        rows = data.load_split(data.ensure_dataset(run_dir))["validation"].select(range(limit))
        questions = [m["messages"][0]["content"] for m in rows]
        references = [next(t["content"] for t in m["messages"] if t["role"] == "assistant") for m in rows]
        answers = evaluate.generate(model, tokenizer, questions, max_new_tokens, progress=False)
    finally:
        model.train(was_training)
    return {"persona_score": persona.score,
            "rouge_l": round(statistics.fmean(rouge_l(a, r) for a, r in zip(answers, references)), 4),
            "bleu": round(bleu(answers, references), 4),
            "examples": [{"question": q, "answer": a, "reference": r}
                         for q, a, r in list(zip(questions, answers, references))[:3]]}


# =========================================================================== monitored runs


def lab_dir(run_dir=None) -> Path:
    """RUN_DIR/monitor, where monitored runs keep their figures, alert logs, summaries and
    TensorBoard files; the cleaned dataset (RUN_DIR/data) is made first if it is missing."""
    from course_lib import data, paths

    run_dir = paths.run_dir(run_dir)
    data.ensure_dataset(run_dir)
    lab = run_dir / "monitor"
    lab.mkdir(parents=True, exist_ok=True)
    return lab


@dataclass
class Run:
    """One monitored run: its monitor (records, alerts), the training result and settings."""

    name: str
    monitor: Monitor
    result: object
    config: dict
    generation: dict = field(default_factory=dict)

    @property
    def alerts(self) -> list[str]:
        return self.monitor.alert_kinds

    @property
    def train_loss(self) -> float:
        """The final training loss: the mean of the last 3 steps (one batch of 4 is noisy)."""
        losses = [r["loss"] for r in self.monitor.records if "loss" in r][-3:]
        return statistics.fmean(losses) if losses and all(map(_finite, losses)) else float("nan")

    @property
    def val_loss(self) -> float:
        """The final model's validation loss. After early stopping put the best weights back, that
        is the best evaluation's (the weights are the same); train.train reports the last one."""
        if self.monitor.restored:
            return round(self.monitor.best[1], 4)
        return self.result.val_loss

    def summary(self) -> dict:
        return {"alerts": self.alerts, "train_loss": round(self.train_loss, 4), "val_loss": self.val_loss,
                "early_stopped": self.monitor.early_stopped, "steps": self.result.steps,
                "best_step": self.monitor.best[0] if self.monitor.best and self.monitor.eval_every else None,
                "learning_rate": self.config["learning_rate"], **self.generation}

    def advice(self) -> str:
        if not self.alerts:
            return f"{self.name}: no alerts. Healthy: the loss falls and the gradient norm stays in the band."
        return "\n".join(f"{self.name} · {a.kind} (step {a.step}): {ADVICE[a.kind]}" for a in self.monitor.alerts)


# Short lab runs: batches of 4, no warmup (on 10 steps it would spend a whole step at lr 0; real
# runs keep notebook 02's 5%), no checkpoints (scratch runs), a log line every step.
LAB_DEFAULTS = dict(method="lora", batch_size=4, warmup=0.0, logging_steps=1, save_every="no")


def run(name: str, run_dir=None, *, eval_every: int = 0, baseline: bool = True, early_stopping: bool = True,
        rules: Rules | None = None, val_examples: int = 16, generation_limit: int = 0, live: bool | None = None,
        plots=DEFAULT_PLOTS, tensorboard: bool = True, quiet: bool = False, callbacks=(), **train_settings) -> Run:
    """Train one short monitored run (``train.train`` with a ``Monitor``) and return it.

    TRAIN_SETTINGS are TrainConfig fields (model, learning_rate, max_steps, max_examples...).
    VAL_EXAMPLES: evaluating every few steps on the whole validation split would cost more than
    the training on a CPU, so the monitor evaluates on its first VAL_EXAMPLES examples (a fixed
    sample: noisier, but the same examples every time). Runs are scratch: RUN_DIR/monitor/train/NAME
    is replaced each time. GENERATION_LIMIT > 0 adds persona score, ROUGE-L and BLEU at the end.
    """
    from course_lib import train

    lab = lab_dir(run_dir)
    out = lab / "train" / name
    shutil.rmtree(out, ignore_errors=True)
    settings = {**LAB_DEFAULTS, "max_val_examples": val_examples, **train_settings, "output_dir": str(out)}
    monitor = Monitor(name, lab, eval_every=eval_every, baseline=baseline, early_stopping=early_stopping,
                      rules=rules, live=live, plots=plots, tensorboard=tensorboard, quiet=quiet)
    monitor.finish_saves = True
    try:
        result = train.train(run_dir=run_dir, callbacks=[monitor, *callbacks], **settings)
    finally:
        monitor.finish()
    finished = Run(name, monitor, result, result.config)
    if generation_limit:
        finished.generation = _generation_before_after(result.adapter_dir, run_dir, generation_limit)
    (lab / f"{name}.summary.json").write_text(json.dumps(finished.summary(), indent=2, default=str))
    return finished


def _generation_before_after(adapter_dir, run_dir, limit: int) -> dict:
    """Generation metrics of the trained model and, for an adapter, of the base model (adapter off)."""

    model, tokenizer = runs.load(adapter_dir)
    after = generation_metrics(model, tokenizer, run_dir, limit=limit, max_new_tokens=32)
    out = {k: after[k] for k in ("persona_score", "rouge_l", "bleu")}
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            before = generation_metrics(model, tokenizer, run_dir, limit=limit, max_new_tokens=32)
        out |= {f"{k}_before": before[k] for k in ("persona_score", "rouge_l", "bleu")}
    return out


# =========================================================================== hyperparameter search


class _PruneOnLoss(TrainerCallback):
    """Report each step's training loss to Optuna and stop a trial the pruner gives up on.

    Every trial sees the same batches in the same order (same seed), so step k's loss is
    comparable across trials; MedianPruner stops a trial whose loss is worse than the median of
    earlier trials at the same step.
    """

    def __init__(self, trial):
        self.trial = trial

    def on_log(self, args, state, control, logs=None, **kwargs):
        import optuna

        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not _finite(loss):
            raise optuna.TrialPruned(f"diverged at step {state.global_step}")
        self.trial.report(loss, state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {state.global_step} (loss {loss:.3f})")


def search(model: str = "smollm2-135m", run_dir=None, n_trials: int = 6, steps: int = 5, batch_size: int = 4,
           seed: int = 0, lr_range=(1e-4, 1e-1), ranks=(4, 8, 16, 32), alphas=(8, 16, 32, 64),
           val_examples: int = 16, timeout: float | None = None):
    """Tune learning rate, LoRA rank and alpha with Optuna on short runs; returns the study.

    Objective: the validation loss after STEPS steps. TPE proposes values (at random for the first
    3 trials, then near the best so far); MedianPruner stops a trial whose training loss is worse
    than the median of earlier trials at the same step (once 2 trials are complete, from step 2), so
    a bad setting costs a few steps. The range reaches rates that diverge on purpose: pruning
    makes exploring them cheap, and the figure shows where the cliff is.
    """
    import optuna

    from course_lib import train

    lab = lab_dir(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        settings = dict(learning_rate=trial.suggest_float("learning_rate", *lr_range, log=True),
                        lora_r=trial.suggest_categorical("lora_r", list(ranks)),
                        lora_alpha=trial.suggest_categorical("lora_alpha", list(alphas)))
        out = lab / "train" / "optuna" / f"trial-{trial.number}"
        try:
            result = train.train(run_dir=run_dir, callbacks=[_PruneOnLoss(trial)], model=model, max_steps=steps,
                                 seed=seed, **{**LAB_DEFAULTS, "batch_size": batch_size}, output_dir=str(out),
                                 max_val_examples=val_examples, **settings)
        finally:
            shutil.rmtree(out, ignore_errors=True)  # trials are scratch
        if not _finite(result.val_loss):
            raise optuna.TrialPruned("validation loss is not finite")
        return result.val_loss

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
    study = optuna.create_study(direction="minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    import datasets

    datasets.disable_progress_bars()  # six trials of "tokenizing: 100%" would bury the trial lines
    try:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=False, callbacks=[_say])
    finally:
        datasets.enable_progress_bars()
    return study


def complete_trials(study) -> list:
    """Trials that ran to the end. (Optuna stores a pruned trial's last training loss as its value:
    never compare that with a validation loss.)"""
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def _say(study, trial) -> None:
    params = ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    if trial in complete_trials(study):
        outcome = f"validation loss {trial.value:.3f}"
    else:
        steps = trial.intermediate_values
        outcome = f"{trial.state.name.lower()} at step {max(steps, default=0)}" + (
            f" (training loss {steps[max(steps)]:.3f})" if steps else "")
    print(f"trial {trial.number}: {params} -> {outcome}")


def trials_table(study):
    """One row per trial: parameters, state (complete / pruned), validation loss, steps trained."""
    import pandas as pd

    done = complete_trials(study)
    rows = [{"trial": t.number, **t.params, "state": t.state.name.lower(),
             "val_loss": t.value if t in done else None, "steps": max(t.intermediate_values, default=0)}
            for t in study.trials]
    return pd.DataFrame(rows).set_index("trial")


def search_figure(study):
    """Left: training loss per step of every trial (pruned ones dashed). Right: val loss vs learning rate."""
    import optuna
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), layout="constrained")
    curves, scatter = fig.subplots(1, 2)
    for t in study.trials:
        if t.intermediate_values:
            steps, losses = zip(*sorted(t.intermediate_values.items()))
            pruned = t.state == optuna.trial.TrialState.PRUNED
            curves.plot(steps, losses, ls="--" if pruned else "-", marker="x" if pruned else ".",
                        label=f"#{t.number}" + (" pruned" if pruned else ""))
    curves.set(xlabel="step", ylabel="training loss", title="trials (pruned: dashed)")
    curves.legend(fontsize=7)
    done = complete_trials(study)
    if done:
        points = scatter.scatter([t.params["learning_rate"] for t in done], [t.value for t in done],
                                 c=[t.params["lora_r"] for t in done], cmap="viridis", s=60)
        fig.colorbar(points, ax=scatter, label="LoRA rank")
        for t in done:
            scatter.annotate(f"#{t.number} α={t.params['lora_alpha']}", (t.params["learning_rate"], t.value),
                             fontsize=7, xytext=(4, 4), textcoords="offset points")
    scatter.set(xscale="log", xlabel="learning rate", ylabel="validation loss", title="complete trials")
    return fig


# =========================================================================== interactive panel


def monitor_panel(run_dir=None, *, learning_rate: float = 2e-3, max_steps: int = 10, plots=DEFAULT_PLOTS,
                  **settings):
    """Pick the metrics to plot, a learning rate and a number of steps, press Train: a monitored
    run draws live. SETTINGS are ``run``'s (model, method, batch_size...).

    Headless (papermill) it trains once with the given values and returns the Run.
    """
    import ipywidgets as widgets


    controls = {
        "plots": widgets.SelectMultiple(options=PLOTS, value=tuple(plots), description="plot", rows=len(PLOTS)),
        "learning_rate": widgets.FloatLogSlider(value=learning_rate, base=10, min=-6, max=0, step=0.25,
                                                description="learning rate", readout_format=".1e"),
        "max_steps": widgets.IntSlider(value=max_steps, min=2, max=60, description="steps"),
    }

    def go(plots, learning_rate, max_steps):
        batch = settings.get("batch_size", LAB_DEFAULTS["batch_size"])
        finished = run("panel", run_dir, **{**settings, "learning_rate": learning_rate, "max_steps": max_steps,
                                            "max_examples": max_steps * batch, "plots": plots, "tensorboard": False})
        print(finished.advice())
        return finished

    return ui.panel(go, controls, button="Train")
