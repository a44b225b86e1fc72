"""The interactive panel of notebook 03: pick metrics, a learning rate and steps, press Train."""

from __future__ import annotations

from course_lib import knobs, ui
from course_lib.monitor.figures import DEFAULT_PLOTS, PLOTS
from course_lib.monitor.runs import LAB_DEFAULTS, run


def monitor_panel(run_dir=None, *, learning_rate: float = knobs.LEARNING_RATE, max_steps: int = 10,
                  plots=DEFAULT_PLOTS, **settings):
    """Pick the metrics to plot, a learning rate and a number of steps, press Train: a monitored
    run draws live. SETTINGS are ``run``'s (model, method, batch_size...).

    Headless (papermill) it trains once with the given values and returns the Run.
    """
    import ipywidgets as widgets

    controls = {
        "plots": widgets.SelectMultiple(options=PLOTS, value=tuple(plots), description="plot", rows=len(PLOTS)),
        # 20 stops a decade: quarter decades would snap a rate such as 4e-3 to 3.2e-3
        "learning_rate": widgets.FloatLogSlider(value=learning_rate, base=10, min=-6, max=0, step=0.05,
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
