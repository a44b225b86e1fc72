"""Shared fixtures: an offline world, a tiny model, and notebooks executed once per session.

Every test runs with HF_HUB_OFFLINE=1: nothing the learner relies on may need the network.
Notebook runs go through course_lib.ops.runner.run_notebook, the same path `make course` takes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The notebooks' thresholds were set on fp32 runs, so the tests train in fp32 on every machine;
# what precision="auto" measures and picks is tested on its own (tests/test_precision.py).
os.environ["COURSE_PRECISION"] = "fp32"

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight Llama with the default tokenizer (~3.4M parameters), built at test time."""
    from course_lib.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def default_tokenizer():
    from course_lib.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def monitor_lab(tmp_path_factory) -> Path:
    """One run directory for the monitor's tests (tests/test_monitor_*.py): its dataset is built once."""
    return tmp_path_factory.mktemp("monitor_lab")


@pytest.fixture(scope="session")
def course_run_dir(tmp_path_factory) -> Path:
    """One run directory for every notebook of the session, so later stages find earlier artifacts."""
    return tmp_path_factory.mktemp("course_run")


# Wall-clock guards for the small runs: a hang fails its test instead of eating CI's time. A6's GRPO
# small run needs well under a minute a cell; GRPO on a CPU is known to hang in some setups (trl#3739).
CELL_TIME_LIMIT = 1200
CELL_TIME_LIMITS = {"A6_grpo": 300}


@pytest.fixture(scope="session")
def executed(course_run_dir):
    """executed("02_lora_qlora") -> the runner's report entry for that notebook's small run.

    Each notebook runs at most once per session, whichever tests ask for it.
    """
    from course_lib.ops.runner import discover, run_notebook

    cache: dict[str, dict] = {}
    notebooks = {p.stem: p for p in discover(ROOT / "notebooks")}

    def run(name: str) -> dict:
        if name not in cache:
            cache[name] = run_notebook(notebooks[name], course_run_dir, small=True, log_output=False,
                                       cell_timeout=CELL_TIME_LIMITS.get(name, CELL_TIME_LIMIT))
        return cache[name]

    run.notebooks = notebooks
    return run


# --------------------------------------------------------------------------- the quantize stage's merge
# Shared by tests/test_quantize_*.py: one random adapter on the tiny model, merged once per session.


def _save_random_adapter(base_dir: Path, out: Path, method: str = "lora") -> Path:
    """A LoRA adapter with random (non-zero) B, saved like course_lib.train saves one: no training needed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # random B: the merge must matter
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (out / "course_train.json").write_text(json.dumps({"model": str(base_dir), "method": method}))
    return out


@pytest.fixture(scope="session")
def qrun(tmp_path_factory):
    return tmp_path_factory.mktemp("quantize_run")


@pytest.fixture(scope="session")
def adapter(tiny_model_dir, qrun):
    return _save_random_adapter(tiny_model_dir, qrun / "train" / "lora" / "final")


@pytest.fixture(scope="session")
def tokenizer(adapter):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(adapter)


@pytest.fixture(scope="session")
def data(tokenizer, qrun):
    from course_lib import quantize

    return quantize.eval_data(tokenizer, qrun, ppl_examples=4, persona_questions=3, max_new_tokens=6, latency_tokens=4)


@pytest.fixture(scope="session")
def merged(adapter, qrun, data):
    from course_lib import quantize

    return quantize.merge(adapter, qrun / "quantize" / "merged", data)
