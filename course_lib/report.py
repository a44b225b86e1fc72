"""Key figures: what a notebook measured, recorded once, read by the report, tests and benchmarks.

    nb = report.start("02_lora_qlora", RUN_DIR, seed=SEED)
    ...
    nb.record(persona_score_after=0.95, retention=1.0)

Each notebook's figures go to ``RUN_DIR/figures/<notebook>.json``; ``make course`` gathers them
into ``runs/course_report.json``, so what the learner saw is exactly what gets checked.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from course_lib import paths


def _plain(value):
    """numpy / torch scalars and arrays -> JSON-friendly Python values (NaN -> None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class NotebookRun:
    name: str
    run_dir: Path

    @property
    def figures_file(self) -> Path:
        return self.run_dir / "figures" / f"{self.name}.json"

    def figures(self) -> dict:
        return json.loads(self.figures_file.read_text()) if self.figures_file.exists() else {}

    def record(self, **figures) -> dict:
        """Add figures (merged with earlier ones from this notebook) and return them all."""
        merged = {**self.figures(), **{k: _plain(v) for k, v in figures.items()}}
        self.figures_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.figures_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
        tmp.replace(self.figures_file)
        return merged

    def path(self, *parts: str) -> Path:
        """A folder under the run directory (created), e.g. ``nb.path("data")``."""
        folder = self.run_dir.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def quiet_libraries() -> None:
    """Silence messages that look alarming but are harmless here, so real warnings stand out.

    (The loggers that speak on import, bitsandbytes' and torchao's, are quieted in course_lib/__init__.)
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", message=".*kernels-community.*")  # the logger is quieted in course_lib/__init__
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised via peft, harmless
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true.*")  # CPU: nothing to pin


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(name: str, run_dir=None, seed: int | None = 0, fresh: bool = False) -> NotebookRun:
    """Begin a notebook: resolve the run directory, seed every RNG, quiet harmless noise.

    ``fresh=True`` forgets figures from an earlier run of the same notebook.
    """
    quiet_libraries()
    if seed is not None:
        seed_everything(seed)
    run = NotebookRun(name, paths.run_dir(run_dir))
    if fresh and run.figures_file.exists():
        run.figures_file.unlink()
    print(f"{name}: artifacts go to {run.run_dir}")
    return run
