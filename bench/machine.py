"""Machine description and result recording shared by the benchmarks in bench/."""
from __future__ import annotations

from pathlib import Path

from ssl_core.system import machine_summary

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def record(title: str, command: str, table: str, notes: str = "") -> None:
    """Print a result and append it to docs/benchmarks.md with the machine it came from."""
    block = f"\n### {title}\n\nMachine: {machine_summary()}  \nCommand: `{command}`\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    print(block)
    DOC.parent.mkdir(exist_ok=True)
    if not DOC.exists():
        DOC.write_text("# Benchmarks\n\nEvery figure here was measured by a script in `bench/` on the machine named "
                       "with it; ratios compare runs made side by side in one process.\n")
    with DOC.open("a") as f:
        f.write(block)
