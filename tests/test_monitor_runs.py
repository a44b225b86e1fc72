"""Monitored runs end to end: notebook 03 records each run's alerts and the search."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_notebook_03_records_each_runs_alerts_and_the_search(executed):
    entry = executed("03_monitoring")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    for name in ("good", "lr_too_high", "lr_too_low", "overfit"):
        run = figures["runs"][name]
        assert isinstance(run["alerts"], list) and figures[f"{name}_alerts"] == run["alerts"]
        assert {"train_loss", "val_loss", "early_stopped"} <= run.keys()
    assert figures["runs"]["overfit"]["early_stopped"] is True
    assert figures["optuna_trials"] >= 2 and figures["optuna_best_val_loss"] is not None
    assert {"learning_rate", "lora_r", "lora_alpha"} <= figures["optuna_best_params"].keys()
