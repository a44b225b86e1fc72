"""The monitor's callback: records, alerts (each fires on a run built for it, none on a healthy run),
early stopping, the rules on synthetic curves, layer groups.

Runs use the tiny random model (fixture ``tiny_model_dir``) with full fine-tuning where it must
learn fast (LoRA on random weights barely moves). Faults are injected by small callbacks, the way
a real failure would show up: a NaN weight, a corrupted update, gradients scaled up or down.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from course_lib import monitor, runs


def _run(name, monitor_lab, tiny_model_dir, **kw):
    settings = dict(model=str(tiny_model_dir), method="full", learning_rate=3e-3, max_steps=12, max_examples=48,
                    tensorboard=False, quiet=True, seed=0)
    return monitor.run(name, monitor_lab, **{**settings, **kw})


# --------------------------------------------------------------------------- faults to inject


class AtStep(TrainerCallback):
    """Call FN(model) at the start of optimizer step STEP (1-based), once."""

    def __init__(self, step, fn):
        self.step, self.fn = step, fn

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                self.fn(model)


class ScaleGradients(TrainerCallback):
    """Multiply every gradient by FACTOR as backpropagation produces it (before the norm is measured)."""

    def __init__(self, factor):
        self.factor = factor

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for param in model.parameters():
            if param.requires_grad:
                param.register_hook(lambda grad: grad * self.factor)


def _embedding(model):
    return model.get_input_embeddings().weight


# --------------------------------------------------------------------------- records and a healthy run


@pytest.mark.slow
def test_a_healthy_run_records_every_step_and_raises_no_alert(monitor_lab, tiny_model_dir):
    run = _run("healthy", monitor_lab, tiny_model_dir, eval_every=4, tensorboard=True)
    steps = [r for r in run.monitor.records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for r in steps:
        assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "memory_mb", "grad_norm_groups"} <= r.keys()
        assert r["tokens_per_s"] > 0 and r["memory_mb"] > 0 and r["learning_rate"] > 0
        # tiny model: 2 blocks cut into groups of one, plus the (tied) embedding / output layer
        assert set(r["grad_norm_groups"]) == {"layers 0-0", "layers 1-1", "embeddings & head"}
        together = math.sqrt(sum(n**2 for n in r["grad_norm_groups"].values()))
        assert together == pytest.approx(r["grad_norm"], rel=1e-3)  # groups rebuilt before clipping
    evals = {r["step"]: r["val_loss"] for r in run.monitor.records if "val_loss" in r}
    assert sorted(evals) == [0, 4, 8, 12]  # step 0 is the baseline
    assert evals[12] < evals[0] - 0.5 and steps[-1]["loss"] < steps[0]["loss"]
    assert run.alerts == [] and not run.monitor.early_stopped
    assert run.monitor.figure_path.exists() and not (monitor_lab / "monitor" / "healthy.alerts.log").exists()
    table = run.monitor.table()
    assert "grad layers 0-0" in table.columns and len(table) == 13


# --------------------------------------------------------------------------- each alert on a run built for it


@pytest.mark.slow
def test_nan_loss_alert_fires_and_stops_the_run(monitor_lab, tiny_model_dir):
    poison = AtStep(4, lambda m: _embedding(m).fill_(float("nan")))
    run = _run("nan", monitor_lab, tiny_model_dir, callbacks=[poison])
    assert run.alerts[0] == "nan_loss" and run.monitor.alerts[0].step == 4
    assert run.result.steps == 4  # stopped at once instead of training 8 more NaN steps
    assert "Lower the learning rate" in run.monitor.alerts[0].message
    assert "nan_loss" in (monitor_lab / "monitor" / "nan.alerts.log").read_text()


@pytest.mark.slow
def test_loss_spike_alert(monitor_lab, tiny_model_dir):
    corrupt = AtStep(8, lambda m: _embedding(m).mul_(30.0))  # a wild update: logits 30x too confident
    run = _run("spike", monitor_lab, tiny_model_dir, callbacks=[corrupt])
    spike = next(a for a in run.monitor.alerts if a.kind == "loss_spike")
    assert spike.step == 8 and "nan_loss" not in run.alerts


@pytest.mark.slow
def test_exploding_gradients_alert(monitor_lab, tiny_model_dir):
    run = _run("exploding", monitor_lab, tiny_model_dir, max_steps=4, callbacks=[ScaleGradients(1e4)])
    assert "exploding_gradients" in run.alerts and run.monitor.alerts[0].step == 1
    assert "vanishing_gradients" not in run.alerts


@pytest.mark.slow
def test_vanishing_gradients_alert_needs_several_small_steps(monitor_lab, tiny_model_dir):
    run = _run("vanishing", monitor_lab, tiny_model_dir, max_steps=4, callbacks=[ScaleGradients(1e-6)])
    alert = next(a for a in run.monitor.alerts if a.kind == "vanishing_gradients")
    assert alert.step == monitor.Rules().vanishing_steps  # not at step 1: one small norm is harmless
    assert "exploding_gradients" not in run.alerts


@pytest.mark.slow
def test_no_progress_alert_on_a_learning_rate_far_too_low(monitor_lab, tiny_model_dir):
    run = _run("flat", monitor_lab, tiny_model_dir, learning_rate=1e-9, max_steps=8, eval_every=4)
    assert run.alerts == ["no_progress"]
    assert run.monitor.alerts[0].step == 8


@pytest.mark.slow
def test_overfitting_is_caught_and_early_stopping_stops(monitor_lab, tiny_model_dir):
    # 4 examples seen over and over: the tiny model first learns what all answers share (validation
    # loss falls), then memorizes these four (validation loss rises while training loss keeps falling).
    run = _run("overfit", monitor_lab, tiny_model_dir, max_examples=4, batch_size=4, max_steps=200, eval_every=5,
               learning_rate=3e-3)
    assert "overfitting" in run.alerts
    assert run.monitor.early_stopped and run.result.steps < 200
    best_step, best_val = run.monitor.best
    assert run.result.steps == best_step + monitor.Rules().patience * 5
    assert run.monitor.restored and run.val_loss == pytest.approx(best_val, abs=1e-4)
    saved, _ = runs.load(run.result.adapter_dir)  # what was saved is the best step's model
    weights = dict(saved.named_parameters())
    for name, best in run.monitor._best_weights.items():
        assert torch.equal(weights[name], best), name


def _feed(mon, points):
    """Drive a Monitor with synthetic (step, train loss, val loss) logs, as the Trainer would."""
    from transformers import TrainerControl, TrainerState

    state, control = TrainerState(), TrainerControl()
    mon._training, mon._started, mon._step_speed = True, 0.0, 1.0
    for step, loss, val in points:
        state.global_step = step
        if loss is not None:
            mon.on_log(None, state, control, logs={"loss": loss, "grad_norm": 1.0, "learning_rate": 1e-3})
        if val is not None:
            mon.on_log(None, state, control, logs={"eval_loss": val})
    return control


def test_rules_on_synthetic_curves():
    rising = [(0, None, 3.0), (1, 2.9, None), (2, 2.5, 2.6), (3, 2.2, None), (4, 1.8, 2.7), (5, 1.5, None),
              (6, 1.2, 2.9)]
    mon = monitor.Monitor("synthetic", quiet=True, tensorboard=False, live=False)
    control = _feed(mon, rising)
    assert mon.alert_kinds == ["overfitting"] and mon.early_stopped and control.should_training_stop
    assert mon.best == (2, 2.6) and mon.alerts[0].step == 6
    # Both losses rising is divergence, not overfitting: early stopping still stops, no overfitting alert.
    mon = monitor.Monitor("diverging", quiet=True, tensorboard=False, live=False)
    _feed(mon, [(0, None, 3.0), (1, 3.0, None), (2, 3.5, 3.4), (3, 4.0, None), (4, 4.5, 3.9)])
    assert "overfitting" not in mon.alert_kinds and mon.early_stopped
    # A healthy curve with noise: no alert at all.
    mon = monitor.Monitor("noisy", quiet=True, tensorboard=False, live=False)
    _feed(mon, [(0, None, 3.0), *[(s, 3.0 - 0.1 * s + 0.15 * (-1) ** s, None) for s in range(1, 10)], (10, 2.0, 2.2)])
    assert mon.alerts == [] and not mon.early_stopped


def test_layer_groups_follow_depth():
    lora_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert monitor.layer_group(lora_a, 30) == "layers 0-9"
    assert monitor.layer_group("model.layers.29.mlp.up_proj.weight", 30) == "layers 20-29"
    assert monitor.layer_group("model.embed_tokens.weight", 30) == "embeddings & head"
