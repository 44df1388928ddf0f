"""Machine description and result recording shared by the benchmarks in bench/."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ssl_core.system import machine_summary

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def command_line() -> str:
    """The running benchmark's command as it was typed: its nice level (if raised), script and arguments."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if ROOT in script.parents else script
    niceness = os.nice(0)
    return (f"nice -n {niceness} " if niceness else "") + " ".join(["python", str(shown), *sys.argv[1:]])


def record(title: str, table: str, notes: str = "", print_only: bool = False) -> None:
    """Print a result and (unless ``print_only``) append it to docs/benchmarks.md with the machine and the
    command it came from."""
    if print_only:
        print(table + (f"\n\n{notes}" if notes else ""))
        return
    block = f"\n### {title}\n\nMachine: {machine_summary()}  \nCommand: `{command_line()}`\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    print(block)
    DOC.parent.mkdir(exist_ok=True)
    if not DOC.exists():
        DOC.write_text("# Benchmarks\n\nEvery figure here was measured by a script in `bench/` on the machine named "
                       "with it; ratios compare runs made side by side in one process.\n")
    with DOC.open("a") as f:
        f.write(block)
