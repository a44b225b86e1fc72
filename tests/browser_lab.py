"""A private JupyterLab and a headless Chromium, driven the way a learner clicks (tests/test_browser.py).

JupyterLab runs on 127.0.0.1 with a random token, its own config/data/runtime/settings/workspace
folders (only the venv's kernelspec and lab extensions are shared) and without COURSE_HEADLESS, so
the notebooks' widgets are the real ones. Chromium is Debian's /usr/bin/chromium driven by
Playwright's Python package, which never downloads a browser as long as `playwright install` is
not run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Quiet on a closed network: no first-run wizard, no background fetches, no updates, no sync.
# Playwright adds a fresh --user-data-dir itself (launch_persistent_context's folder).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Variables that would make the lab's kernels behave like papermill's or like the test process.
DROPPED_ENV = ("COURSE_HEADLESS", "COURSE_RUN_DIR", "MPLBACKEND", "JPY_SESSION_NAME")
# User settings: no "get notified about Jupyter news" pop-up over the screenshots, no update check,
# and every cell attached to the page so a test can find it without scrolling it into existence.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_notebook(name: str, folder: Path, run_dir: Path, **parameters) -> tuple[Path, int]:
    """Copy notebooks/NAME.ipynb into FOLDER with SMALL_RUN and RUN_DIR injected, as papermill would.

    Returns the copy and the index of its interactive cell (the one calling ui.panel or a
    *_panel builder), so the test can run everything above it.
    """
    import papermill

    target = folder / f"{name}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(target), prepare_only=True,
                               parameters={"SMALL_RUN": True, "RUN_DIR": str(run_dir), **parameters},
                               kernel_name="python3", progress_bar=False)
    cells = json.loads(target.read_text())["cells"]
    interactive = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
                   and ("ui.panel(" in "".join(c["source"]) or "_panel(" in "".join(c["source"]))]
    if len(interactive) != 1:
        raise AssertionError(f"{name}: expected one interactive cell, found cells {interactive}")
    return target, interactive[0]


class Lab:
    """One JupyterLab server serving ROOT_DIR; ``stop()`` leaves no process behind."""

    def __init__(self, root_dir: Path, home: Path):
        self.root_dir, self.token, self.port = root_dir, secrets.token_hex(16), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "jupyterlab.log"
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
            env[var] = str(home / sub)
            (home / sub).mkdir(parents=True, exist_ok=True)
        for relative, values in SETTINGS.items():
            path = home / "settings" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        # The kernels import this checkout's course_lib, whichever copy the venv has installed.
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={root_dir}", "--ServerApp.terminals_enabled=False",
                   "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI machines and containers often run as root
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, env=env, cwd=root_dir, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self._wait_until_up()

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"token {self.token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def _wait_until_up(self, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.api("GET", "/api/status").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)  # polling a server that is starting: there is no event to wait on
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def notebook_url(self, relative: str) -> str:
        # ?reset: start from the default layout, never from a workspace a previous run saved
        return f"{self.url}/lab/tree/{relative}?reset&token={self.token}"

    def shutdown_kernels(self):
        for session in self.api("GET", "/api/sessions").json():
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self):
        """Ask the server to shut down (it stops its kernels), and end its process group if it does not."""
        if self.process.poll() is None:
            try:
                self.shutdown_kernels()
                self.api("POST", "/api/shutdown")
                self.process.wait(timeout=60)
            except (httpx.HTTPError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)


# ----------------------------------------------------------------------------- in the page

# JavaScript run in the page: JupyterLab's own application object (exposed by expose_app_in_browser).
_PANEL = "const app = window.jupyterapp; const panel = app.shell.currentWidget;"
_FIRST_ERROR = """
    for (let i = 0; i < panel.content.model.cells.length; i++) {
        const cell = panel.content.model.cells.get(i);
        if (cell.type !== 'code') continue;
        for (const out of cell.outputs.toJSON())
            if (out.output_type === 'error')
                return `cell ${i} failed: ${out.ename}: ${out.evalue}`;
    }
"""
_KERNEL_READY = _PANEL + """
    return !!(panel && panel.context && panel.context.isReady && panel.sessionContext.session
              && panel.sessionContext.session.kernel
              && panel.sessionContext.session.kernel.status === 'idle');
"""
_RUN_ABOVE = _PANEL + """
    panel.content.activeCellIndex = index;
    app.commands.execute('notebook:run-all-above');
"""
_ABOVE_DONE = _PANEL + _FIRST_ERROR + """
    const cells = panel.content.model.cells;
    for (let i = 0; i < index; i++) {
        const cell = cells.get(i);
        if (cell.type === 'code' && cell.executionCount === null) return false;
    }
    return panel.sessionContext.session.kernel.status === 'idle' ? 'done' : false;
"""
_RUN_ACTIVE = _PANEL + "panel.content.activeCellIndex = index; app.commands.execute('notebook:run-cell');"


def _js(body: str) -> str:
    return f"(index) => {{ {body} }}"


def open_notebook(page, lab: Lab, relative: str, timeout_ms: int):
    """Open a notebook in JupyterLab and wait until its kernel is idle."""
    page.goto(lab.notebook_url(relative))
    page.wait_for_function(_js(_KERNEL_READY), arg=0, timeout=timeout_ms, polling=500)


def wait_for_kernel_sync(page, timeout_ms: int = 30_000):
    """Wait until the widgets' last moves have reached the kernel, as a learner's pause would.

    ipywidgets throttles each control's updates: while the kernel handles one, the newest value is
    held back and sent when the kernel reports idle. A button's click goes out at once. Playwright
    clicks a millisecond after its last key press, so without this pause the kernel could run with
    a slider's previous value (seen once in CI: 3 steps trained while the slider showed 4).
    """
    page.wait_for_timeout(500)  # the held-back value leaves when the previous one is acknowledged
    page.wait_for_function(_js(_KERNEL_READY), arg=0, timeout=timeout_ms, polling=100)


def run_up_to(page, index: int, timeout_ms: int):
    """Run every cell above cell INDEX ("Run All Above Selected Cell"), then cell INDEX itself.

    Fails with the first error output if a cell above fails.
    """
    page.evaluate(_js(_RUN_ABOVE), index)
    status = page.wait_for_function(_js(_ABOVE_DONE), arg=index, timeout=timeout_ms, polling=1000).json_value()
    if status != "done":
        raise AssertionError(status)
    page.evaluate(_js(_RUN_ACTIVE), index)


def first_error(page) -> str | None:
    return page.evaluate(_js(_PANEL + _FIRST_ERROR + "return null;"), 0)


def screenshot(page, locator, path: Path):
    """The cell as the learner sees it (the element, however tall), and the whole window beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    box = locator.bounding_box()
    if box and box["height"] > size["height"] - 200:  # the notebook scrolls inside the page: grow the window
        page.set_viewport_size({"width": size["width"], "height": min(int(box["height"]) + 300, 6000)})
    locator.scroll_into_view_if_needed()
    locator.screenshot(path=str(path))
    page.screenshot(path=str(path.with_name(path.stem + "-window.png")))
    page.set_viewport_size(size)
