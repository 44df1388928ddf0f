"""What machine this is, in words: for model cards and benchmark records."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: torch.device | None = None) -> str:
    """The GPU in use (and the CPU), or the CPU with its cores and torch threads."""
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)} (CPU: {cpu_name()})"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def machine_summary(**versions: str) -> str:
    """Hardware, Python/torch/timm versions (and any others given) and today's date, on one line."""
    import datetime

    import timm

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"timm {timm.__version__}",
             *(f"{name} {version}" for name, version in versions.items())]
    return f"{hardware()}; {', '.join(parts)}; {datetime.date.today().isoformat()}"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and ``taskset`` narrow; `os.cpu_count`
    counts the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shared_memory_free() -> int | None:
    """Free bytes in ``/dev/shm``, through which DataLoader workers hand batches over (a container's default is
    64 MB); None where there is none."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX`` does (which, when set, wins). A server's many worker
    threads otherwise each keep an arena of freed memory and its resident size creeps up with the requests it
    serves (`bench/bench_load.py`). Returns whether the cap was set (glibc only)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, arenas) == 1  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False
