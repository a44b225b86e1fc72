"""The memory planner: how much memory a training run needs, before you start it, and a check
against what a real run takes.

- ``plan.py``: the arithmetic from a model's sizes (a ``models.Preset``): parameter counts,
  ``estimate`` (weights, gradients, AdamW, activations, overhead), ``fits``; no torch at import.
- ``measure.py``: the real peak of a few training steps, each in a fresh process; ``compare``.
- ``tables.py``: memory claims common in fine-tuning tutorials, checked; the best method per GPU;
  planner-vs-measurement rows.
- ``plot.py``: the stacked-bar chart, how each part grows with the tokens of a step, ``show_plan``.

    python -m course_lib.memory estimate --model smollm2-135m --method lora --seq-len 256 --batch-size 4
    python -m course_lib.memory measure --model smollm2-135m --method lora --seq-len 256 --batch-size 4 --steps 3
"""

from course_lib.memory.measure import compare, measure_here, measure_peak, release_checkpoint_file
from course_lib.memory.plan import (
    CPU_RUNTIME_MB,
    CPU_SLACK,
    CUDA_CONTEXT_MB,
    CUDA_SLACK,
    DTYPE_BYTES,
    GB,
    GPU_DTYPES,
    GPUS,
    HEADROOM,
    MB,
    METHODS,
    NF4_BYTES_PER_PARAM,
    PROJECTIONS,
    Estimate,
    Fit,
    activation_bytes,
    activation_slack,
    available_memory_mb,
    checkpoint_bytes,
    dims_of,
    estimate,
    fits,
    linear_shapes,
    lora_parameters,
    lora_targets,
    parameter_count,
    preset_from_config,
)
from course_lib.memory.plot import COLORS, LABELS, plot, plot_growth, plot_recommend, show_plan
from course_lib.memory.tables import claims, compare_table, figures, recommend, verdict

__all__ = [
    "CPU_RUNTIME_MB", "CPU_SLACK", "CUDA_CONTEXT_MB", "CUDA_SLACK", "DTYPE_BYTES", "GB", "GPU_DTYPES", "GPUS",
    "HEADROOM", "MB", "METHODS", "NF4_BYTES_PER_PARAM", "PROJECTIONS", "COLORS", "LABELS",
    "Estimate", "Fit", "activation_bytes", "activation_slack", "available_memory_mb", "checkpoint_bytes",
    "claims", "compare", "compare_table", "dims_of", "estimate", "figures", "fits", "linear_shapes",
    "lora_parameters", "lora_targets", "measure_here", "measure_peak", "parameter_count", "plot", "plot_growth", "plot_recommend",
    "preset_from_config", "recommend", "release_checkpoint_file", "show_plan", "verdict",
]
