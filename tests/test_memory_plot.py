"""The planner's chart (course_lib.memory.plot)."""

from __future__ import annotations

import pytest

from course_lib import memory

DEFAULT = "smollm2-135m"


def test_chart_has_a_bar_per_estimate(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    estimates = [memory.estimate(DEFAULT, m, 256, 2) for m in memory.METHODS]
    fig = memory.plot(estimates, available_mb=8000, measured={"lora": 1700})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "lora", "qlora"]
    fig.savefig(tmp_path / "plan.png")


def test_growth_chart_stacks_the_four_tensors_per_method(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    fig = memory.plot_growth(DEFAULT, tokens=[64, 512, 4096], mark=512)
    assert [ax.get_title() for ax in fig.axes] == list(memory.METHODS)
    for ax, method in zip(fig.axes, memory.METHODS):
        # the top of the stack at the last step is the four tensors' sum (overhead left out), in GB
        top = max(y for c in ax.collections for y in c.get_paths()[0].vertices[:, 1])
        parts = memory.estimate(DEFAULT, method, 4096, 1).breakdown()
        assert top * 1024 == pytest.approx(sum(parts.values()) - parts["overhead"], rel=1e-6)
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert labels[:4] == ["weights", "gradients", "optimizer (AdamW)", "activations"]
    fig.savefig(tmp_path / "growth.png")


def test_recommendation_grid_has_a_labelled_cell_per_model_and_memory(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rows = memory.recommend(["smollm2-135m", "llama-2-13b"], this_machine_mb=24 * 1024)
    fig = memory.plot_recommend(rows)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 5  # 2 models x (4 GPUs + this machine)
    texts = [t.get_text() for t in ax.texts]
    assert texts[0].startswith("full\n(") and any(t.startswith("qlora + ckpt") for t in texts)
    fig.savefig(tmp_path / "recommend.png")
