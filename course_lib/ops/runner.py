"""Run the course: execute every notebook with papermill and gather what each one measured.

    python -m course_lib.ops.runner              # what `make course` runs: default parameters
    python -m course_lib.ops.runner --small      # the tests' small runs (proves the path, fast)
    python -m course_lib.ops.runner --only 02_lora_qlora
    python -m course_lib.ops.runner --record-reference   # `make course RECORD=1`: also writes
                                                         # course_lib/reference_figures.json

Executed copies go to ``runs/notebooks/``; ``runs/course_report.json`` holds per notebook its
status, seconds and the figures it recorded with ``report.start(...).record(...)``. The tests
call ``run_notebook`` too, so CI executes the notebooks exactly as a learner's ``make course`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from course_lib import paths, reference
from course_lib.report import NotebookRun


def discover(notebooks_dir: Path | None = None) -> list[Path]:
    """Numbered notebooks (the main path) in order, then the appendices (A1_..., A2_...)."""
    folder = notebooks_dir or paths.course_root() / "notebooks"
    found = [p for p in folder.glob("*.ipynb") if not p.name.startswith((".", "_"))]
    return sorted(found, key=lambda p: (not p.name[:2].isdigit(), p.name))


def _first_line(error: BaseException) -> str:
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(error).__name__}: {error}"
    return (text.strip().splitlines() or [type(error).__name__])[0][:300]


def run_notebook(notebook: Path, run_dir: Path, small: bool = False, parameters: dict | None = None,
                 log_output: bool = False, cell_timeout: float | None = None) -> dict:
    """Execute one notebook into ``run_dir/notebooks/`` and return its report entry.

    CELL_TIMEOUT (seconds) is a wall-clock guard: a cell that runs longer is stopped and the notebook
    reported as failed with papermill's "timed out" message, instead of hanging the whole run.
    """
    import papermill

    notebook, run_dir = Path(notebook), Path(run_dir)
    record = NotebookRun(notebook.stem, run_dir)
    if record.figures_file.exists():
        record.figures_file.unlink()  # figures must come from this execution, not an older one
    out = run_dir / "notebooks" / notebook.name
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {"RUN_DIR": str(run_dir), "SMALL_RUN": small, **(parameters or {})}
    os.environ["COURSE_RUN_DIR"] = str(run_dir)  # inherited by the kernel
    os.environ["COURSE_HEADLESS"] = "1"  # widgets run once with the parameters (course_lib.ui)
    started = time.perf_counter()
    entry = {"name": notebook.stem, "status": "ok"}
    try:
        papermill.execute_notebook(
            str(notebook), str(out), parameters=params, cwd=str(notebook.parent),
            kernel_name="python3", progress_bar=False, log_output=log_output, execution_timeout=cell_timeout,
        )
    except Exception as error:  # a failed notebook is reported, and the course goes on
        entry.update(status="failed", error=_first_line(error))
    entry["seconds"] = round(time.perf_counter() - started, 1)
    entry["figures"] = record.figures()
    entry["executed"] = str(out)
    return entry


def _summary(report: dict) -> str:
    lines = [f"{'notebook':<28} {'status':<7} {'seconds':>8}  key figures"]
    for nb in report["notebooks"]:
        figures = ", ".join(f"{k}={v}" for k, v in nb["figures"].items() if isinstance(v, (int, float)))
        detail = nb.get("error") or (figures[:90] + ("..." if len(figures) > 90 else ""))
        lines.append(f"{nb['name']:<28} {nb['status']:<7} {nb['seconds']:>8.1f}  {detail}")
    failed = sum(nb["status"] != "ok" for nb in report["notebooks"])
    lines.append(f"total {report['total_seconds']:.1f} s, {len(report['notebooks']) - failed} ok, {failed} failed")
    return "\n".join(lines)


def run_course(run_dir=None, small: bool = False, only: list[str] | None = None,
               report_path: Path | None = None) -> dict:
    from tqdm.auto import tqdm

    run_dir = paths.run_dir(run_dir)
    notebooks = [p for p in discover() if not only or p.stem in only or p.name in only]
    if only and len(notebooks) != len(only):
        names = ", ".join(p.stem for p in discover())
        raise SystemExit(f"--only {only}: unknown notebook name (known: {names})")
    report_path = Path(report_path or run_dir / "course_report.json")
    report = {"notebooks": [], "total_seconds": 0.0, "small_run": small}
    bar = tqdm(notebooks, desc="course", unit="notebook", file=sys.stdout)
    for notebook in bar:
        bar.set_postfix_str(notebook.stem)
        entry = run_notebook(notebook, run_dir, small=small)
        report["notebooks"].append(entry)
        report["total_seconds"] = round(sum(nb["seconds"] for nb in report["notebooks"]), 1)
        report_path.write_text(json.dumps(report, indent=2))  # written as we go: partial runs count
        bar.write(f"  {entry['name']}: {entry['status']} in {entry['seconds']:.0f} s"
                  + (f" ({entry['error']})" if entry.get("error") else ""))
    bar.close()
    print("\n" + _summary(report))
    print(f"\nreport: {report_path}\nexecuted notebooks: {run_dir / 'notebooks'}")
    return report


def _set_aside_answer_cache(run_dir: Path) -> Path | None:
    """Rename RUN_DIR/eval (``evaluate.remembered``'s answers) with its time, so that nothing is reused.

    Within one run, notebooks 05 and 06 still reuse the answers notebook 02 gives, as a learner's do.
    """
    cache = run_dir / "eval"
    if not cache.exists():
        return None
    kept = paths.keep_aside(cache)
    print(f"Recording a first run: the answers cached in {cache} were kept aside as {kept.name}.")
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.ops.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default=None, help="where artifacts go (default: runs/)")
    parser.add_argument("--small", action="store_true", help="the tests' small-run parameters")
    parser.add_argument("--only", nargs="+", help="notebook names to run, e.g. 02_lora_qlora")
    parser.add_argument("--record-reference", action="store_true",
                        help="after a full default run with every notebook ok, write the reference figures "
                             "(course_lib/reference_figures.json) and the headers' time lines")
    args = parser.parse_args(argv)
    if args.record_reference and (args.small or args.only):
        parser.error("--record-reference needs a full run with default parameters (no --small, no --only)")
    if args.record_reference:  # the recorded times are a first run's: no answers from an earlier run
        _set_aside_answer_cache(paths.run_dir(args.run_dir))
    load_before = os.getloadavg()[0]
    report = run_course(args.run_dir, small=args.small, only=args.only)
    ok = all(nb["status"] == "ok" for nb in report["notebooks"])
    if args.record_reference:
        if not ok:
            print("Not recording reference figures: a notebook failed.")
            return 1
        reference.record(report, load_before, notebooks_dir=paths.course_root() / "notebooks")
        print(f"reference figures: {reference.FILE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
