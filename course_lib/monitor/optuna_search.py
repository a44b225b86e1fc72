"""Hyperparameter search with Optuna: learning rate, LoRA rank and alpha on short runs.

Each trial is a short training run; a pruning callback stops the hopeless ones early, so the
search can afford to try rates that diverge. ``trials_table`` and ``search_figure`` show the result.
(Named ``optuna_search`` rather than ``search`` so that the module never hides the ``search``
function that ``course_lib.monitor`` re-exports.)
"""

from __future__ import annotations

import shutil

from transformers import TrainerCallback

from course_lib import train
from course_lib.monitor.callback import _finite
from course_lib.monitor.runs import LAB_DEFAULTS, lab_dir


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

    datasets.disable_progress_bars()  # a "tokenizing: 100%" bar per trial would bury the trial lines
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
