"""Markdown tables for the reports PatchLens writes (the Lab's docs/lab.md, the benchmarks' docs/benchmarks.md)."""
from __future__ import annotations

from typing import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table: the header, its rule, one line per row (cells written with ``str``)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in cells) + " |" for cells in lines)
