"""Machine description and result recording shared by the benchmarks in bench/."""
from __future__ import annotations

import datetime
import platform
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    import os

    import timm
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()} ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}), {device}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}; "
            f"{datetime.date.today().isoformat()}")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, command: str, table: str, notes: str = "") -> None:
    """Print a result and append it to docs/benchmarks.md with the machine it came from."""
    block = f"\n### {title}\n\nMachine: {describe_machine()}  \nCommand: `{command}`\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    print(block)
    DOC.parent.mkdir(exist_ok=True)
    if not DOC.exists():
        DOC.write_text("# Benchmarks\n\nEvery figure here was measured by a script in `bench/` on the machine named "
                       "with it; ratios compare runs made side by side in one process.\n")
    with DOC.open("a") as f:
        f.write(block)
