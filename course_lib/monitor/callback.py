"""The monitor's watcher: one Trainer callback that records a run, draws it and judges it.

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

What the alerts fire on is set by ``Rules``; ``figures`` draws what the monitor recorded.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from course_lib import procmem, ui, versions
from course_lib.monitor.figures import DEFAULT_PLOTS, draw, show

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # a library logs; the application decides where it goes

GRAD_BAND = (0.1, 10.0)

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
    "no_progress": "The loss is flat: the model is not learning. Raise the learning rate 3-10x (LoRA on a small "
                   "model wants far higher rates than 7B recipes; notebook 02's is a good start), check that "
                   "labels are not all -100, and that the adapter is trainable.",
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
