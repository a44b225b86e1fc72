"""The notebook runner behind `make course`: report shape, figures, failures reported not raised."""

from __future__ import annotations

import json

import nbformat
import pytest

from course_lib.ops import runner


def _notebook(path, body: str):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('RUN_DIR = "runs"\nSMALL_RUN = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_run_notebook_reports_figures_and_failures(tmp_path):
    good = _notebook(tmp_path / "01_good.ipynb", "from course_lib import report\n"
                     "nb = report.start('01_good', RUN_DIR)\nnb.record(small=SMALL_RUN, count=3)")
    bad = _notebook(tmp_path / "02_bad.ipynb", "raise ValueError('train.jsonl line 3: no output field')")
    run_dir = tmp_path / "runs"
    ok = runner.run_notebook(good, run_dir, small=True)
    assert ok["status"] == "ok" and ok["figures"] == {"small": True, "count": 3}
    assert (run_dir / "notebooks" / "01_good.ipynb").exists() and ok["seconds"] > 0
    failed = runner.run_notebook(bad, run_dir)
    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: train.jsonl line 3: no output field"


@pytest.mark.slow
def test_a_cell_past_its_time_limit_fails_the_notebook_with_a_clear_error(tmp_path):
    """The guard against a hang (appendix A6's GRPO small run uses it): stopped, reported, not waited for."""
    slow = _notebook(tmp_path / "04_slow.ipynb", "import time\ntime.sleep(60)")
    entry = runner.run_notebook(slow, tmp_path / "runs", cell_timeout=3)
    assert entry["status"] == "failed" and "timed out" in entry["error"], entry
    assert entry["seconds"] < 50


def test_stale_figures_are_not_reported(tmp_path):
    from course_lib.report import NotebookRun

    NotebookRun("03_x", tmp_path).record(old=1)
    missing = _notebook(tmp_path / "03_x.ipynb", "1/0")
    entry = runner.run_notebook(missing, tmp_path)
    assert entry["status"] == "failed" and entry["figures"] == {}


def test_record_merges_and_converts_numbers(tmp_path):
    import numpy as np

    from course_lib.report import NotebookRun

    nb = NotebookRun("x", tmp_path)
    nb.record(a=np.float32(0.5), b=[np.int64(2)])
    merged = nb.record(c=float("nan"), a=0.75)
    assert merged == {"a": 0.75, "b": [2], "c": None}
    assert json.loads(nb.figures_file.read_text()) == merged


def test_discover_orders_main_path_before_appendices(tmp_path):
    for name in ["A1_pretraining", "02_lora_qlora", "00_environment", "_template"]:
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in runner.discover(tmp_path)] == ["00_environment", "02_lora_qlora", "A1_pretraining"]


def test_a_recording_starts_without_answers_cached_by_an_earlier_run(tmp_path):
    assert runner._set_aside_answer_cache(tmp_path) is None  # nothing cached: nothing to do
    cache = tmp_path / "eval"
    cache.mkdir()
    (cache / "persona-0123.json").write_text('{"answers": []}')
    kept = runner._set_aside_answer_cache(tmp_path)
    assert not cache.exists() and (kept / "persona-0123.json").exists()  # renamed, never deleted
