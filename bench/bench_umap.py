"""Patch maps on the CPU: UMAP and PCA time, memory and neighbourhood preservation for 10k and 50k patches.

    nice -n 10 python bench/bench_umap.py [--sizes 10000,50000] [--with-100k] [--dim 384]

Data: the clustered mixture of `bench_index.py` (new draws, unit vectors). `ssl_core.analyses.maps.map_patches` with its
defaults: above 20,000 patches UMAP is fitted on a seeded sample of 20,000 and the rest are placed by ``transform``.
The numba compilation of the first UMAP in a process is timed apart (a warm-up: fit 4,500 points, transform 500). Quality: sklearn's
trustworthiness (10 neighbours, cosine) of the 2-D map on a random subset of 2,000 points (1 = every map neighbour
is a true neighbour).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import Mixture, rss_mb  # noqa: E402
from machine import record  # noqa: E402

from ssl_core.analyses.maps import DEFAULT_FIT_LIMIT, map_patches  # noqa: E402
from ssl_core.render.tables import markdown_table  # noqa: E402


def trustworthiness_on_subset(vectors: np.ndarray, coords: np.ndarray, n: int = 2000, seed: int = 0) -> float:
    from sklearn.manifold import trustworthiness

    ids = np.random.default_rng(seed).choice(len(vectors), min(n, len(vectors)), replace=False)
    return float(trustworthiness(vectors[ids].astype(np.float32), coords[ids], n_neighbors=10, metric="cosine"))


def main() -> None:
    import umap

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--with-100k", action="store_true", help="add 100,000 patches")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--methods", default="umap,pca")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")] + ([100_000] if args.with_100k else [])
    mixture = Mixture(200, args.dim)
    start = time.perf_counter()
    map_patches(mixture.sample(5000, seed=9), "umap", fit_limit=4500)  # compiles fit, NN-descent and transform
    compile_s = time.perf_counter() - start
    rows = []
    for size in sizes:
        vectors = mixture.sample(size, seed=3)
        for method in args.methods.split(","):
            gc.collect()
            before = rss_mb()
            start = time.perf_counter()
            patch_map = map_patches(vectors, method, seed=0)
            seconds = time.perf_counter() - start
            row = [f"{size:,}", method, f"{patch_map.fitted_on:,}", f"{seconds:.1f}", f"{rss_mb() - before:.0f}",
                   f"{trustworthiness_on_subset(vectors, patch_map.coords):.3f}"]
            print(" | ".join(row), flush=True)
            rows.append(row)
    table = markdown_table(["patches", "method", "fitted on", "seconds", "RSS growth MB", "trustworthiness@10"], rows)
    notes = (f"d = {args.dim}; umap-learn {umap.__version__} (seeded, so one thread), fit limit {DEFAULT_FIT_LIMIT:,} "
             f"(larger sets: fit on a seeded sample, `transform` the rest). Warm-up UMAP (fit 4,500 + transform 500 points, "
             f"with numba compilation): {compile_s:.1f} s, not included above. Data: the clustered mixture of "
             "bench_index.py (200 clusters). Trustworthiness on a random subset of 2,000 points, cosine, 10 neighbours.")
    record("Patch maps: UMAP and PCA (CPU)", table, notes, print_only=args.no_record)


if __name__ == "__main__":
    main()
