"""The Optuna search: the pruning callback, and a short search on the tiny model."""

from __future__ import annotations

import math

import pytest

from course_lib import monitor
from course_lib.monitor.optuna_search import _PruneOnLoss


def test_pruning_callback_stops_a_trial():
    import optuna
    from transformers import TrainerControl, TrainerState

    class Trial:
        reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) >= 2

    callback, state = _PruneOnLoss(Trial()), TrainerState()
    state.global_step = 1
    callback.on_log(None, state, TrainerControl(), logs={"loss": 3.0})
    state.global_step = 2
    with pytest.raises(optuna.TrialPruned):
        callback.on_log(None, state, TrainerControl(), logs={"loss": 3.5})
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        callback.on_log(None, state, TrainerControl(), logs={"loss": float("nan")})


@pytest.mark.slow
def test_search_runs_its_trials_and_reports_the_best(monitor_lab, tiny_model_dir):
    study = monitor.search(str(tiny_model_dir), monitor_lab, n_trials=4, steps=3, seed=0)
    assert len(study.trials) == 4
    best = study.best_trial
    assert 1e-4 <= best.params["learning_rate"] <= 3e-2 and best.params["lora_r"] in (4, 8, 16, 32)
    done = monitor.complete_trials(study)
    assert math.isfinite(best.value) and best.value == min(t.value for t in done)
    assert not list((monitor_lab / "monitor" / "train" / "optuna").glob("trial-*"))  # scratch folders removed
    table = monitor.trials_table(study)
    assert len(table) == 4 and {"learning_rate", "lora_r", "lora_alpha", "state", "val_loss"} <= set(table.columns)
    assert table["val_loss"].notna().sum() == len(done)  # a pruned trial has no validation loss
    monitor.search_figure(study)
