"""Reading back what the monitor wrote for TensorBoard, and how to open it.

The ``Monitor`` writes the event files while it trains; this module reads them (to check them or
plot them elsewhere) and prints the command that opens the TensorBoard viewer on them.
"""

from __future__ import annotations

from pathlib import Path


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under LOGDIR: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    folders = sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")})
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return found


def tensorboard_command(logdir) -> str:
    """How to open the event files: in Jupyter/Colab, or from a terminal."""
    return (f"In Jupyter or Colab:  %load_ext tensorboard  then  %tensorboard --logdir {logdir}\n"
            f"In a terminal:        tensorboard --logdir {logdir}   (then open http://localhost:6006)")
