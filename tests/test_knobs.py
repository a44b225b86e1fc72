"""Prose that cannot go stale: knob values, header times, self-checks, and words a learner has.

- A notebook's markdown may state a knob's value (``LEARNING_RATE = 4e-3``, "learning rate 4e-3")
  only if its own code uses that value; an instruction to change it ("Set ``LEARNING_RATE = 1.0``")
  is not a statement.
- The header's "**Time**: about N minutes on the reference machine" agrees with the reference figures.
- Every "Try it" has a check (``ui.verdict``) and no notebook stops Run All with a bare ``assert``.
- Notebook 02 writes out ``LoraConfig`` and ``TrainingArguments``; course_lib builds the same ones.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from course_lib import knobs, reference, train
from course_lib.ops.runner import discover

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = discover(ROOT / "notebooks")
NUMBER = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
# A sentence that asks the learner to change something, or asks a question, states no fact about the code.
INSTRUCTION = re.compile(r"\b(set|try|change|make|raise|lower|rerun|predict|e\.g\.|for example|instead|such as)\b|\?", re.I)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell) -> str:
    return "".join(cell["source"])


def knob_values(path: Path) -> dict:
    """NAME -> value for each ``NAME = ...`` line of the parameters cell (knobs.X resolved)."""
    cell = next(c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {}
    for line in _src(cell).splitlines():
        match = re.match(r"([A-Z_][A-Z0-9_]*)\s*=\s*(.+?)\s*(#.*)?$", line)
        if not match:
            continue
        name, expr = match.group(1), match.group(2)
        if expr.startswith("knobs."):
            values[name] = getattr(knobs, expr.split(".", 1)[1])
        else:
            try:
                values[name] = ast.literal_eval(expr)
            except (ValueError, SyntaxError):
                pass
    return values


def code_numbers(path: Path) -> set[float]:
    """Every number the notebook's code uses: literals in code cells and the knobs it reads."""
    found = set()
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            found |= {float(n) for n in re.findall(NUMBER, _src(cell))}
    found |= {float(v) for v in knob_values(path).values() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return found


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?:])\s+|\n\s*[-\d]+[.)]?\s+|\n\n", text)


def stated_values(path: Path):
    """(sentence, NAME or "learning rate", value) for each value the markdown states as a fact."""
    for cell in _cells(path):
        if cell["cell_type"] != "markdown":
            continue
        for sentence in sentences(_src(cell)):
            if INSTRUCTION.search(sentence):
                continue
            for name, value in re.findall(r"`?([A-Z_][A-Z0-9_]{2,})\s*=\s*" + NUMBER, sentence):
                yield sentence, name, float(value)
            for value in re.findall(r"learning rate (?:of )?`?" + NUMBER, sentence):
                yield sentence, "learning rate", float(value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_states_only_knob_values_the_code_uses(path):
    values, used = knob_values(path), code_numbers(path)
    wrong = []
    for sentence, name, value in stated_values(path):
        if name in values and isinstance(values[name], (int, float)) and float(values[name]) != value:
            wrong.append(f"{name} = {value:g} stated, the code uses {values[name]!r}: {sentence.strip()[:120]}")
        elif name == "learning rate" and value not in used:
            wrong.append(f"learning rate {value:g} stated, the code never uses it: {sentence.strip()[:120]}")
    assert not wrong, f"{path.name}: markdown states values its code does not use:\n" + "\n".join(wrong)


def test_the_check_finds_a_stale_value(tmp_path):
    """The test above can fail: a markdown value that differs from the parameters cell is caught."""
    nb = {"cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ["LEARNING_RATE = knobs.LEARNING_RATE\n"]},
        {"cell_type": "markdown", "metadata": {}, "source": ["We train with `LEARNING_RATE = 2e-3`, a learning rate 2e-3."]},
        {"cell_type": "markdown", "metadata": {}, "source": ["Set `LEARNING_RATE = 1.0` and rerun."]},
    ]}
    path = tmp_path / "stale.ipynb"
    path.write_text(json.dumps(nb))
    stated = [(name, value) for _, name, value in stated_values(path)]
    assert stated == [("LEARNING_RATE", 2e-3), ("learning rate", 2e-3)]
    assert 2e-3 not in code_numbers(path) and knobs.LEARNING_RATE in code_numbers(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_header_time_agrees_with_the_reference_figures(path):
    header = _src(_cells(path)[0])
    match = reference.TIME_LINE.search(header)
    assert match, f"{path.name}: the header needs '**Time**: about N minutes on the reference machine'"
    secs = reference.seconds(path.stem)
    if secs is not None:  # a new notebook has no recorded run until `make course RECORD=1`
        assert match.group(1) == reference.time_phrase(secs), (
            f"{path.name}: header says {match.group(1)!r}, the reference run took {secs:.0f} s "
            f"({reference.time_phrase(secs)}); `make course RECORD=1` rewrites it")


def test_over_budget_names_each_part_of_the_budget_a_run_exceeded():
    table = {"notebooks": {"00_environment": {"seconds": 60.0}, "02_lora_qlora": {"seconds": 301.0},
                           "A1_pretraining": {"seconds": 200.0}}}
    assert reference.over_budget(table) == ["02_lora_qlora took 301 s, over 300 s"]
    table["notebooks"]["06_preference"] = {"seconds": 290.0}  # after the main path: counts in "everything" only
    assert reference.over_budget(table) == ["02_lora_qlora took 301 s, over 300 s"]
    table["notebooks"]["02b_inside_lora"] = {"seconds": 900.0 - 361.0 + 1}
    assert reference.over_budget(table)[-1] == "the main path took 901 s, over 900 s"
    assert reference.over_budget({"notebooks": {"00_environment": {"seconds": 10.0}}}) == []


def test_the_caption_gives_the_matrix_speed_the_run_was_measured_at():
    table = {"recorded": "2026-12-04", "machine": {"cpu": "AMD EPYC", "cores": 2, "load_before": 1.2},
             "notebooks": {"00_environment": {"seconds": 90.0, "figures": {"matmul_gflops": {"float32": 121.1}}}}}
    assert "AMD EPYC, 2 cores, load average 1.2 before, fp32 matrix products at 121 GFLOP/s" in reference.caption(table)
    del table["notebooks"]["00_environment"]["figures"]
    assert "GFLOP/s" not in reference.caption(table)  # an older recording without the figure


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_try_it_has_a_check_and_nothing_stops_run_all(path):
    cells = _cells(path)
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "Try it" in _src(c))
    end = next((i for i, c in enumerate(cells) if i > start and "## Summary" in _src(c)), len(cells))
    checks = [c for c in cells[start:end] if c["cell_type"] == "code" and "ui.verdict(" in _src(c)]
    assert checks, f"{path.name}: its Try it exercises need a check cell calling ui.verdict"
    bare = [_src(c)[:80] for c in cells if c["cell_type"] == "code" and re.search(r"^\s*assert\b", _src(c), re.M)]
    assert not bare, f"{path.name}: a bare assert stops Run All; use ui.verdict: {bare}"


def test_verdict_says_not_yet_for_a_wrong_answer(capsys):
    from course_lib import ui

    assert ui.verdict(False, "done", "try again") is False
    assert ui.verdict(True, "done", "try again") is True
    assert capsys.readouterr().out.splitlines() == ["✗ not yet: try again", "✓ done"]


def test_train_defaults_are_the_shared_knobs():
    cfg = asdict(train.TrainConfig())
    for name in ("model", "target_modules", "lora_r", "lora_alpha", "lora_dropout", "learning_rate", "epochs",
                 "max_examples", "batch_size", "replay_share", "seed"):
        assert cfg[name] == getattr(knobs, name.upper()), name


def _cell_with(path: Path, text: str) -> str:
    return next(_src(c) for c in _cells(path) if c["cell_type"] == "code" and text in _src(c))


def test_notebook_02_builds_what_course_lib_builds(tmp_path):
    """The LoraConfig and TrainingArguments written out in notebook 02 equal course_lib's for the same knobs."""
    from course_lib import models

    path = ROOT / "notebooks" / "02_lora_qlora.ipynb"
    names = {n: getattr(knobs, n) for n in ("LORA_R", "LORA_ALPHA", "LORA_DROPOUT", "TARGET_MODULES", "LEARNING_RATE",
                                            "EPOCHS", "BATCH_SIZE", "SEED")}
    space = {**names, "GRAD_ACCUM": 1, "train": train, "models": models, "out_dir": tmp_path}
    lora_cell = _cell_with(path, "LoraConfig(")
    exec(lora_cell[lora_cell.index("lora_config = LoraConfig("):lora_cell.index("model = get_peft_model")],
         {**space, "LoraConfig": __import__("peft").LoraConfig}, space)
    ours = train.lora_config(knobs.LORA_R, knobs.LORA_ALPHA, knobs.LORA_DROPOUT, knobs.TARGET_MODULES)
    assert space["lora_config"].to_dict() == ours.to_dict()

    args_cell = _cell_with(path, "TrainingArguments(")
    exec(args_cell, space)
    course = train.training_arguments(train.TrainConfig(), tmp_path, "cpu")
    for field in ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                  "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "seed", "bf16", "fp16"):
        assert getattr(space["args"], field) == getattr(course, field), field


LEARNER_FILES = [*NOTEBOOKS, *(ROOT / "course_lib").rglob("*.py"), ROOT / "README.md", ROOT / "INSTRUCTORS.md",
                 ROOT / "CONTRIBUTING.md", ROOT / "notebooks" / "README.md"]


@pytest.mark.parametrize("path", LEARNER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_words_a_learner_has(path):
    """No private words ("the seeds"), and no pointer to notes or files outside the repository."""
    text = path.read_text()
    found = re.findall(r"the seeds|seeds'|closing note|\.\./shared|COURSE_DESIGN\.md|course's issues", text, re.I)
    assert not found, f"{path.relative_to(ROOT)}: {sorted(set(found))}"
