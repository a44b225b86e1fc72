"""Figure 6: the whole course's wall time, in total and per notebook (``course_lib.ops.runner``'s report)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import ROOT
from course_lib import reference


def from_report(report_path) -> dict:
    """course_seconds and per-notebook seconds from a runner report (``make course`` writes it)."""
    path = Path(report_path)
    if not path.exists():
        return {"course_seconds": None, "course_note": f"no {path}: run `make course` or pass --course"}
    report = json.loads(path.read_text())
    when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    failed = [nb["name"] for nb in report["notebooks"] if nb["status"] != "ok"]
    seconds = {nb["name"]: nb["seconds"] for nb in report["notebooks"]}
    return {"course_seconds": report["total_seconds"],
            "course_main_path_seconds": round(reference.main_path_seconds(seconds), 1),
            "course_small_run": report.get("small_run", False), "course_notebooks": seconds,
            "course_slowest_notebook_seconds": max((nb["seconds"] for nb in report["notebooks"]), default=None),
            "course_note": f"from {path} written {when}" + (f"; failed: {', '.join(failed)}" if failed else "")}


def run_course(run_dir) -> dict:
    """Run ``python -m course_lib.ops.runner`` (what `make course` runs after its install) now, and read its report."""
    report = Path(run_dir) / "course_report.json"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "course_lib.ops.runner", "--run-dir", str(run_dir)], cwd=ROOT, check=False)
    out = from_report(report)
    out["course_wall_seconds"] = time.perf_counter() - started
    return out
