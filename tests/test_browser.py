"""The course as a learner opens it: JupyterLab in a real (headless) Chromium, widgets clicked.

Each test opens a notebook (a copy with SMALL_RUN=True injected, as papermill does), runs every
cell above its interactive cell, moves sliders, clicks, and asserts on what the page shows.
Screenshots go to runs/ui/ for a person to look at. Debian's chromium is installed by .ci/run.
"""

from __future__ import annotations

import math
import re

import pytest
from browser_lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    Lab,
    first_error,
    open_notebook,
    prepare_notebook,
    run_up_to,
    screenshot,
    wait_for_kernel_sync,
)
from playwright.sync_api import expect

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (`apt-get install chromium`; .ci/run does it)"),
]

# Generous: the machine is shared, and the 02 notebook trains models above its panel.
RUN_MS = 20 * 60_000
SHOTS = ROOT / "runs" / "ui"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_root")
    server = Lab(root, tmp_path_factory.mktemp("lab_home"))
    yield server
    server.stop()
    assert server.process.poll() is not None, "JupyterLab is still running"


@pytest.fixture(scope="module")
def ui_run_dir(tmp_path_factory):
    """One run directory for the notebooks opened in the browser (01's dataset serves 02)."""
    return tmp_path_factory.mktemp("ui_run")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A persistent context on a fresh folder: that folder is Chromium's --user-data-dir.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture
def page(browser, lab):
    page = browser.new_page()
    yield page
    page.close()
    lab.shutdown_kernels()  # the next notebook starts with the CPU and memory free


def open_panel(page, lab, name, run_dir):
    """Open NAME in the lab, run it up to its interactive cell, and return (the cell, its panel)."""
    notebook, index = prepare_notebook(name, lab.root_dir, run_dir)
    open_notebook(page, lab, notebook.name, RUN_MS)
    run_up_to(page, index, RUN_MS)
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    panel = cell.locator(".course-panel")
    panel.wait_for(state="visible", timeout=RUN_MS)
    return cell, panel


def readout(control) -> str:
    return control.locator(".widget-readout").inner_text().strip()


def press_on_slider(control, key: str, times: int = 1):
    """Focus the slider's handle with a click and press KEY, as a learner moving it by keyboard."""
    handle = control.locator(".noUi-handle")
    handle.click()
    for _ in range(times):
        handle.press(key)


def type_in_readout(control, text: str):
    """Type a value into the slider's editable readout and confirm it with Enter."""
    field = control.locator(".widget-readout")
    field.click()
    field.press("Control+A")
    field.type(text)
    field.press("Enter")


def wait_for_output(page, output, text: str, timeout_ms: int = RUN_MS):
    """Wait until the panel's output shows TEXT (and, for a training run, its table and figure)."""
    output.get_by_text(text).first.wait_for(state="visible", timeout=timeout_ms)
    assert first_error(page) is None


def test_lora_panel_trains_with_the_chosen_rank_and_learning_rate(page, lab, ui_run_dir):
    from course_lib import memory

    cell, panel = open_panel(page, lab, "02_lora_qlora", ui_run_dir)
    rank, lr, steps = (panel.locator(f".course-control-{n}") for n in ("lora_r", "learning_rate", "steps"))
    assert readout(rank) == "16" and readout(lr) == "4.0e-3"  # the notebook's LORA_R and LEARNING_RATE
    press_on_slider(rank, "ArrowLeft", 12)
    press_on_slider(lr, "ArrowRight", 5)  # a quarter of a decade up: ~7e-3
    press_on_slider(steps, "ArrowRight", 3)  # 4 steps: the loss curve has a shape, not one point
    assert readout(rank) == "4" and readout(steps) == "4"
    assert readout(lr) != "4.0e-3", "the learning-rate slider did not move"
    chosen_lr = float(readout(lr))

    wait_for_kernel_sync(page)
    panel.locator(".course-run-button").click()
    output = panel.locator(".course-output")
    # Training shows its own progress table first; the before/after answers (a DataFrame) come last.
    wait_for_output(page, output, "persona score on 6 questions")
    answers = output.locator("table.dataframe").filter(has=page.locator("th", has_text="question"))
    answers.wait_for(state="visible", timeout=RUN_MS)
    text = output.inner_text()
    expected = memory.lora_parameters("smollm2-135m", r=4)
    assert "r 4, " in text and f"{expected:,} trainable parameters" in text, text[:2000]
    trained_lr = float(re.search(r"lr ([0-9.e+-]+):", text).group(1))
    assert abs(math.log10(trained_lr / chosen_lr)) < 0.01, (trained_lr, chosen_lr)  # readout: 2 digits
    assert re.search(r"persona score on 6 questions: [0-9.]+ before -> [0-9.]+ after \(4 steps", text), text[:2000]
    figure = output.locator("img").first
    assert figure.is_visible() and figure.evaluate("img => img.naturalWidth") > 300
    assert {"question", "before", "after"} <= {h.strip() for h in answers.locator("th").all_inner_texts()}
    assert answers.locator("tbody tr").count() == 6
    expect(panel.locator(".course-run-button")).to_be_enabled(timeout=60_000)  # ready for another run
    screenshot(page, cell, SHOTS / "02_lora_panel_trained.png")


def test_data_cleaning_panel_reruns_when_max_tokens_moves(page, lab, ui_run_dir):
    cell, panel = open_panel(page, lab, "01_data", ui_run_dir)
    output = panel.locator(".course-output")
    wait_for_output(page, output, "max tokens 512,")
    before = int(re.search(r"too long (\d+)", output.inner_text()).group(1))

    max_tokens = panel.locator(".course-control-max_tokens")
    type_in_readout(max_tokens, "64")  # the slider's minimum: many examples are longer
    assert readout(max_tokens) == "64"
    wait_for_output(page, output, "max tokens 64,")
    after = int(re.search(r"too long (\d+)", output.inner_text()).group(1))
    assert after > before, (before, after)
    assert output.locator("table").count() >= 1
    screenshot(page, cell, SHOTS / "01_data_cleaning_panel.png")


def needed_gb(text: str) -> float:
    return float(re.search(r"needs ~([0-9.]+) GB", text).group(1))


def test_memory_planner_follows_the_batch_size_slider(page, lab, ui_run_dir):
    cell, panel = open_panel(page, lab, "00_environment", ui_run_dir)
    output = panel.locator(".course-output")
    wait_for_output(page, output, "x batch 2 on this machine")
    needs_before = needed_gb(output.inner_text())

    batch = panel.locator(".course-control-batch_size")
    press_on_slider(batch, "ArrowRight", 6)
    assert readout(batch) == "8"
    wait_for_output(page, output, "x batch 8 on this machine")
    output.locator("img").first.wait_for(state="visible", timeout=RUN_MS)  # the plan's bar chart, after the text
    assert needed_gb(output.inner_text()) > needs_before, output.inner_text()  # activations grow with the batch
    screenshot(page, cell, SHOTS / "00_memory_planner.png")
