"""Patch maps to pixels: nearest, bilinear and guided (joint bilateral) upsampling, side by side in one run.

    python bench/bench_upsample.py [--size 1024] [--grid 64] [--channels 1,3] [--repeats 5]

A random RGB image of size x size pixels guides a random map of grid x grid cells (1 channel: a similarity or
attention map; 3 channels: a PCA map). Times are medians over ``--repeats`` runs after one warm-up, on the
device `ssl_core.analyses.upsample.upsample_map` picks (the GPU when present).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import record  # noqa: E402

from ssl_core.analyses.upsample import MODES, upsample_map  # noqa: E402
from ssl_core.render.tables import markdown_table  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--channels", default="1,3")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--print-only", action="store_true", help="print, do not append to docs/benchmarks.md")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = (rng.random((args.size, args.size, 3)) * 255).astype(np.uint8)
    rows = []
    for channels in (int(c) for c in args.channels.split(",")):
        grid_map = rng.random((args.grid, args.grid, channels)).astype(np.float32)
        times = {mode: median_seconds(lambda: upsample_map(grid_map, image, mode), args.repeats) for mode in MODES}
        rows.append([str(channels), *(f"{times[m] * 1000:.0f}" for m in MODES),
                     f"{times['guided'] / times['bilinear']:.0f}x"])
    table = markdown_table(["channels", *(f"{m} ms" for m in MODES), "guided / bilinear"], rows)
    record(f"Upsampling a {args.grid}x{args.grid} map to {args.size}x{args.size} pixels", table,
           "Guided = joint bilateral upsampling over the 4 x 4 nearest cells (torch, float32). Median of "
           f"{args.repeats} runs after a warm-up.", print_only=args.print_only)


if __name__ == "__main__":
    main()
