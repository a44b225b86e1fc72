"""What a learner sees: interactive panels that also run headless, and small tables.

One place for the three things every stage shows through: ``panel`` (controls and a Run button),
``Table`` (rows as HTML in Jupyter, aligned text elsewhere) and ``show``, plus the two checks they
rest on (``headless``: papermill is running us; ``in_jupyter``: a front end can display HTML);
``verdict`` for the self-checks after each "Try it", and ``quiet_progress`` for runs that show one
progress line of their own.

In JupyterLab a panel shows its controls and a Run button (or re-runs live as a slider moves).
Under papermill (``make course``, CI) nobody can click, so the panel runs once with the
controls' current values: the notebook's parameters. Same code, same result, no hanging cell.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from contextlib import contextmanager


def headless() -> bool:
    """True when no front end can show widgets (set by course_lib.ops.runner for papermill runs)."""
    return os.environ.get("COURSE_HEADLESS") == "1"


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a terminal or a plain script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def panel(run: Callable, controls: dict, button: str | None = "Run", live: bool = False,
          run_now: bool = False):
    """Show CONTROLS (name -> ipywidget) and call ``run(**values)`` on click (or on change if live).

    Headless, ``run`` is called once with the current values and its return value is returned.
    """
    values = {name: widget.value for name, widget in controls.items()}
    if headless():
        return run(**values)
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    trigger = widgets.Button(description=button, button_style="primary") if button else None
    # Stable CSS classes, so a browser test (tests/test_browser.py) finds each part by name.
    out.add_class("course-output")
    if trigger is not None:
        trigger.add_class("course-run-button")
    for name, widget in controls.items():
        widget.add_class(f"course-control-{name}")

    def refresh(_=None):
        if trigger is not None:
            trigger.disabled = True
        with out:
            out.clear_output(wait=True)
            try:
                run(**{name: widget.value for name, widget in controls.items()})
            finally:
                if trigger is not None:
                    trigger.disabled = False

    if trigger is not None:
        trigger.on_click(refresh)
    if live:
        for widget in controls.values():
            widget.observe(refresh, names="value")
    box = widgets.VBox([*controls.values(), *([trigger] if trigger else []), out])
    box.add_class("course-panel")
    display(box)
    if live or run_now:
        refresh()
    return None


def training_controls(learning_rate: float, lora_r: int, lora_alpha: int, lora_dropout: float, epochs: int,
                      batch_size: int, method: str, steps: int) -> dict:
    """Sliders for a training run, starting at the notebook's parameters."""
    import ipywidgets as w

    style = {"description_width": "110px"}
    return {
        # A fine grid (20 stops a decade): with quarter decades the browser showed 4e-3 snapped to 3e-3.
        "learning_rate": w.FloatLogSlider(value=learning_rate, base=10, min=-5, max=0, step=0.05,
                                          description="learning rate", style=style, readout_format=".1e"),
        "lora_r": w.IntSlider(value=lora_r, min=1, max=64, description="LoRA rank r", style=style),
        "lora_alpha": w.IntSlider(value=lora_alpha, min=1, max=128, description="LoRA alpha", style=style),
        "lora_dropout": w.FloatSlider(value=lora_dropout, min=0.0, max=0.5, step=0.05, description="dropout",
                                      style=style),
        "epochs": w.IntSlider(value=epochs, min=1, max=5, description="epochs", style=style),
        "batch_size": w.IntSlider(value=batch_size, min=1, max=16, description="batch size", style=style),
        "method": w.Dropdown(options=["lora", "qlora", "full", "prompt_tuning"], value=method,
                             description="method", style=style),
        "steps": w.IntSlider(value=steps, min=1, max=40, description="steps / epoch", style=style),
    }


class Table:
    """Rows of dicts shown as an HTML table in Jupyter and as aligned text anywhere else."""

    def __init__(self, rows: list[dict], columns: list[str] | None = None, title: str = "", colors: dict | None = None):
        self.rows = [dict(r) for r in rows]
        self.columns = columns or list(dict.fromkeys(k for r in self.rows for k in r))
        self.title = title
        self.colors = colors or {}  # column -> {value: css color}

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>" for c in self.columns)
        body = []
        for row in self.rows:
            cells = []
            for column in self.columns:
                value = str(row.get(column, ""))
                color = self.colors.get(column, {}).get(value)
                style = f" style='color:{color};font-weight:bold;text-align:left'" if color else " style='text-align:left'"
                cells.append(f"<td{style}>{html.escape(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        caption = f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def __str__(self) -> str:
        widths = {c: max(len(str(c)), *(len(str(r.get(c, ""))) for r in self.rows)) if self.rows else len(str(c))
                  for c in self.columns}
        lines = [self.title] if self.title else []
        lines.append("  ".join(str(c).ljust(widths[c]) for c in self.columns))
        lines.append("  ".join("-" * widths[c] for c in self.columns))
        lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in self.columns) for r in self.rows]
        return "\n".join(line.rstrip() for line in lines)

    __repr__ = __str__


def show(table) -> None:
    """Display TABLE (anything with an HTML form) in Jupyter, or print it as text."""
    if in_jupyter():
        from IPython.display import display

        display(table)
    else:
        print(table)


def verdict(passed: bool, success: str, hint: str) -> bool:
    """Print a self-check's verdict: a tick and SUCCESS, or "not yet" and a HINT; never raises.

    A "Try it" check must be able to say "not yet" without stopping Run All (a bare ``assert``
    would), so it prints and returns whether it passed.
    """
    print(f"✓ {success}" if passed else f"✗ not yet: {hint}")
    return bool(passed)


@contextmanager
def quiet_progress(quiet: bool = True):
    """Hide the libraries' own progress bars (loading weights, tokenizing, filtering) while inside.

    A panel or a sweep shows one progress line of its own; five library bars above its result
    teach nothing. QUIET=False leaves them alone (the main training run shows them).
    """
    import datasets
    from transformers.utils import logging as hf_logging

    if not quiet:
        yield
        return
    was = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            datasets.enable_progress_bars()
        if was[1]:
            hf_logging.enable_progress_bar()
