"""The reference figures: what one full ``make course`` run measured, for prose that never goes stale.

A notebook's prose may quote a figure from a run only through this table (or a cell that computes
it). ``make course RECORD=1`` runs every notebook with default parameters and writes the table to
``course_lib/reference_figures.json`` with the date, the machine (lscpu's model name, cores) and
its load, and rewrites each notebook's "**Time**: about N minutes" header line from it
(``tests/test_knobs.py`` checks that they agree). A notebook shows its part with::

    reference.show("02_lora_qlora", ["persona_score_after", "retention"])
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

from course_lib import ui

FILE = Path(__file__).with_name("reference_figures.json")
# The header line a notebook's first cell carries; NUMBER is rewritten by ``record``.
TIME_LINE = re.compile(r"\*\*Time\*\*: (about \d+ minutes?|under a minute) on the reference machine")


def load(path: Path | None = None) -> dict:
    """The recorded table ({"recorded", "machine", "notebooks": {name: {"seconds", "figures"}}})."""
    path = Path(path or FILE)
    if not path.exists():
        return {"recorded": None, "machine": {}, "notebooks": {}}
    return json.loads(path.read_text())


def figure(notebook: str, key: str, default=None, table: dict | None = None):
    """One recorded figure; KEY may go down nested dicts with dots ("methods.lora.peak_memory_mb")."""
    value = (table or load())["notebooks"].get(notebook, {}).get("figures", {})
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def seconds(notebook: str, table: dict | None = None) -> float | None:
    return (table or load())["notebooks"].get(notebook, {}).get("seconds")


def time_phrase(secs: float | None) -> str:
    """How a header says a run time: "under a minute" or "about N minutes"."""
    if secs is None or secs < 60:
        return "under a minute"
    minutes = round(secs / 60)
    return f"about {minutes} minute{'s' if minutes != 1 else ''}"


def caption(table: dict | None = None) -> str:
    """The run's date and machine, with the fp32 matrix-product speed notebook 00 measured during it: a
    shared or virtual machine's speed changes by the hour, and every time in the run moves with it."""
    table = table or load()
    machine = table.get("machine", {})
    speed = figure("00_environment", "matmul_gflops.float32", None, table)
    measured = f", fp32 matrix products at {speed:.0f} GFLOP/s (notebook 00)" if speed else ""
    return (f"Reference run of {table.get('recorded') or 'no date'}: {machine.get('cpu', '?')}, "
            f"{machine.get('cores', '?')} cores, load average {machine.get('load_before', '?')} before{measured}, "
            f"default parameters")


def show(notebook: str, keys: list[str] | None = None, labels: dict | None = None) -> None:
    """Show a table of NOTEBOOK's recorded figures (KEYS of them, LABELS for their names), with the run's machine."""
    table = load()
    figures = table["notebooks"].get(notebook, {}).get("figures", {})
    keys = keys or [k for k, v in figures.items() if isinstance(v, (int, float, str, bool))]
    rows = [{"figure": (labels or {}).get(k, k), "reference run": figure(notebook, k, "not recorded", table)}
            for k in keys]
    secs = seconds(notebook, table)
    rows.append({"figure": "notebook run time (s)", "reference run": "not recorded" if secs is None else secs})
    ui.show(ui.Table(rows, title=caption(table)))


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        import subprocess

        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), cpu)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def record(report: dict, load_before: float, path: Path | None = None, notebooks_dir: Path | None = None) -> dict:
    """Write the table from a full default-parameter run's REPORT and update the headers' time lines."""
    import torch

    table = {
        "recorded": time.strftime("%Y-%m-%d"),
        "machine": {**_machine(), "torch": torch.__version__, "load_before": round(load_before, 2),
                    "load_after": round(os.getloadavg()[0], 2)},
        "total_seconds": report["total_seconds"],
        "notebooks": {nb["name"]: {"seconds": nb["seconds"], "figures": nb["figures"]}
                      for nb in report["notebooks"] if nb["status"] == "ok"},
    }
    Path(path or FILE).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    if notebooks_dir:
        for name, entry in table["notebooks"].items():
            update_time_line(Path(notebooks_dir) / f"{name}.ipynb", entry["seconds"])
    return table


def update_time_line(notebook: Path, secs: float) -> bool:
    """Rewrite the header's "**Time**: about N minutes on the reference machine" with SECS; False if absent."""
    nb = json.loads(notebook.read_text())
    header = nb["cells"][0]
    text = "".join(header["source"])
    new = TIME_LINE.sub(f"**Time**: {time_phrase(secs)} on the reference machine", text, count=1)
    if new == text:
        return bool(TIME_LINE.search(text))
    header["source"] = new.splitlines(keepends=True)
    notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


# The course's time budget on a 2-core CPU with default parameters (CONTRIBUTING.md, "Time budget").
BUDGET_SECONDS = {"notebook": 5 * 60, "main path": 15 * 60, "everything": 50 * 60}


def on_main_path(name: str) -> bool:
    """Notebooks 00 to 05: environment to deployment. 06 and the appendices (A1...) come after it."""
    return not name.startswith("A") and name[:2] < "06"


def main_path_seconds(seconds: dict[str, float]) -> float:
    """The main path's time, from SECONDS per notebook name."""
    return sum(secs for name, secs in seconds.items() if on_main_path(name))


def over_budget(table: dict | None = None) -> list[str]:
    """What the recorded run spent beyond BUDGET_SECONDS, one sentence each (empty: within budget).

    The main path is notebooks 00 to 05 (``on_main_path``).
    """
    runs = {name: entry["seconds"] for name, entry in (table or load())["notebooks"].items()}
    main_path = main_path_seconds(runs)
    over = [f"{name} took {secs:.0f} s, over {BUDGET_SECONDS['notebook']} s"
            for name, secs in sorted(runs.items()) if secs > BUDGET_SECONDS["notebook"]]
    if main_path > BUDGET_SECONDS["main path"]:
        over.append(f"the main path took {main_path:.0f} s, over {BUDGET_SECONDS['main path']} s")
    everything = sum(runs.values())
    if everything > BUDGET_SECONDS["everything"]:
        over.append(f"everything took {everything:.0f} s, over {BUDGET_SECONDS['everything']} s")
    return over


def main() -> int:
    """``python -m course_lib.reference``: every notebook's recorded run time, and the run's machine."""
    table = load()
    print(caption(table))
    for name, entry in sorted(table["notebooks"].items()):
        print(f"  {name:<24} {entry['seconds']:>7.1f} s   ({time_phrase(entry['seconds'])})")
    if table.get("total_seconds"):
        print(f"  {'total':<24} {table['total_seconds']:>7.1f} s")
    over = over_budget(table)
    budget = ", ".join(f"{part} <= {secs // 60} min" for part, secs in BUDGET_SECONDS.items())
    print(f"time budget ({budget}): " + ("; ".join(over) if over else "kept"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
