"""The monitor stage: see training as it happens, catch the classic failures, and tune.

    good = monitor.run("good", run_dir, learning_rate=knobs.LEARNING_RATE, max_steps=10)  # a monitored run
    print(good.advice())                                                      # its alerts, and what to do
    study = monitor.search(model, run_dir, n_trials=6)                        # Optuna on short runs

Where things are:
    callback.py       ``Monitor`` (the Trainer callback: records, alerts, early stopping), ``Rules``, ``ADVICE``
    figures.py        the run's figure, one panel per metric; ``side_by_side``; ``show`` (a figure as PNG)
    tensorboard.py    reading the event files back (``read_scalars``), the command that opens them
    runs.py           ``run`` (one monitored run), ``Run``, ``lab_dir``, generation metrics before/after
    optuna_search.py  ``search`` (learning rate, LoRA rank/alpha), ``trials_table``, ``search_figure``
    panel.py          ``monitor_panel``, the interactive panel of notebook 03

ROUGE-L and BLEU live in ``course_lib.evaluate`` with the other scores.
"""

from course_lib.monitor.callback import ADVICE, ALERT_KINDS, GRAD_BAND, Alert, Monitor, Rules, layer_group
from course_lib.monitor.figures import DEFAULT_PLOTS, LABELS, PLOTS, draw, show, side_by_side
from course_lib.monitor.optuna_search import complete_trials, search, search_figure, trials_table
from course_lib.monitor.panel import monitor_panel
from course_lib.monitor.runs import LAB_DEFAULTS, Run, generation_metrics, lab_dir, run
from course_lib.monitor.tensorboard import read_scalars, tensorboard_command

__all__ = [
    # callback.py
    "ADVICE", "ALERT_KINDS", "GRAD_BAND", "Alert", "Monitor", "Rules", "layer_group",
    # figures.py
    "DEFAULT_PLOTS", "LABELS", "PLOTS", "draw", "show", "side_by_side",
    # tensorboard.py
    "read_scalars", "tensorboard_command",
    # runs.py
    "LAB_DEFAULTS", "Run", "generation_metrics", "lab_dir", "run",
    # optuna_search.py
    "complete_trials", "search", "search_figure", "trials_table",
    # panel.py
    "monitor_panel",
]
