"""The planner's chart (course_lib.memory.plot)."""

from __future__ import annotations

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
