"""How much memory this process holds: now, at its peak, and as the training monitor reports it.

Small and dependency-free on purpose (psutil and /proc only): the planner, the trainer and the
monitor all measure memory, and none of them should have to import the others to do it.
A process's peak only grows, which is why comparisons run each method in a fresh process
(``course_lib.compare``).
"""

from __future__ import annotations

import sys


def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Reset Linux's high-water mark of resident memory (VmHWM), so the peak starts from now."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> tuple[int, str]:
    """The process's peak resident memory in bytes and where it came from."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    import psutil

    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):  # Windows
        return info.peak_wset, "peak_wset"
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"  # bytes on macOS, KB on Linux


def memory_mb() -> float:
    """On a GPU, what PyTorch holds for tensors; on a CPU, the whole process's resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20
