"""The monitor's TensorBoard files: what a run writes reads back the same as its records."""

from __future__ import annotations

import pytest

from course_lib import monitor


def _run(name, monitor_lab, tiny_model_dir, **kw):
    settings = dict(model=str(tiny_model_dir), method="full", learning_rate=3e-3, max_steps=12, max_examples=48,
                    tensorboard=False, quiet=True, seed=0)
    return monitor.run(name, monitor_lab, **{**settings, **kw})


@pytest.mark.slow
def test_tensorboard_event_files_read_back(monitor_lab, tiny_model_dir):
    run = _run("tb", monitor_lab, tiny_model_dir, max_steps=4, eval_every=2, tensorboard=True)
    scalars = monitor.read_scalars(run.monitor.tensorboard_dir)
    losses = {step: value for step, value in scalars["train/loss"]}
    assert sorted(losses) == [1, 2, 3, 4]
    for r in run.monitor.records:
        if "loss" in r:
            assert losses[r["step"]] == pytest.approx(r["loss"], rel=1e-5)
    assert [s for s, _ in scalars["eval/loss"]] == [0, 2, 4]
    assert {"train/grad_norm", "train/learning_rate", "train/tokens_per_s", "eval/perplexity"} <= scalars.keys()
    assert any(tag.startswith("grad_norm/layers") for tag in scalars)
    assert "tensorboard --logdir" in monitor.tensorboard_command(run.monitor.tensorboard_dir)
