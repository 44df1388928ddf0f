"""Patch index on the CPU: build time, query time, memory and recall@10, exact against approximate kinds.

    nice -n 10 python bench/bench_index.py [--sizes 100000,1000000] [--dim 384] [--kinds exact,ivf,hnsw]

Vectors are random but structured like patch embeddings rather than uniform noise (on which every neighbour is
about as far as any other and recall says little): a Gaussian mixture of N/500 clusters, each a 16-dim Gaussian in
its own random subspace around its centre, plus isotropic noise, L2-normalised. Centres come in groups of 20 that lie
near each other, so neighbouring clusters overlap and an inverted list does not simply hold one cluster. Queries
are new draws from the same mixture, not stored vectors. Recall@10 is measured against an exhaustive float32 matmul
over the stored vectors. The index is `ssl_core.search.vectors.make_vector_index` as `PatchIndex` builds it (fp16 storage;
approximate kinds tuned to recall 0.95 on a sample of stored vectors, which is part of the build time).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import record  # noqa: E402

from ssl_core.render.tables import markdown_table  # noqa: E402
from ssl_core.search.vectors import HNSW_M, exact_search_torch, ivf_list_count, make_vector_index, recall_at_k  # noqa: E402

SUBSPACE = 16  # each cluster's own dimensions
GROUP = 20  # clusters per group: centres of a group lie near each other, so neighbouring clusters overlap
CENTRE_SPREAD = 0.6  # spread of the centres around their group's (a group's centres are 1 apart per coordinate)
NOISE = 0.8  # isotropic noise per coordinate (cluster directions have 1)


class Mixture:
    """The clustered distribution described in the module docstring (fixed by its seed)."""

    def __init__(self, n_clusters: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        groups = rng.standard_normal((max(1, n_clusters // GROUP), dim))
        self.centres = (groups[np.arange(n_clusters) % len(groups)] + CENTRE_SPREAD * rng.standard_normal((n_clusters, dim))
                        ).astype(np.float32)
        self.bases = (rng.standard_normal((n_clusters, SUBSPACE, dim)) / np.sqrt(SUBSPACE)).astype(np.float32)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        """n unit vectors [n, dim] float16, drawn in chunks (1M x 768 never exists in float32)."""
        rng = np.random.default_rng(seed)
        dim = self.centres.shape[1]
        out = np.empty((n, dim), np.float16)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            k = rng.integers(0, len(self.centres), m)
            z = rng.standard_normal((m, SUBSPACE)).astype(np.float32)
            x = self.centres[k] + np.einsum("ms,msd->md", z, self.bases[k]) + NOISE * rng.standard_normal((m, dim), np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def index_mb(index) -> float:
    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path) / 2**20


def measure(database: np.ndarray, queries: np.ndarray, truth: np.ndarray, kind: str, single: int, batch: int) -> list:
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    built = make_vector_index(database, kind)
    build_s = time.perf_counter() - start
    grown = rss_mb() - before
    q32 = queries.astype(np.float32)
    built.search(q32[:1], 10)  # warm-up
    one = []
    for i in range(single):
        start = time.perf_counter()
        built.search(q32[i:i + 1], 10)
        one.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    built.search(q32[:batch], 10)
    batch_ms = (time.perf_counter() - start) * 1000 / batch
    _, found = built.search(q32, 10)
    setting = {"exact": "—", "ivf": f"nprobe {built.search_param} of {ivf_list_count(len(database))} lists",
               "hnsw": f"M {HNSW_M}, efSearch {built.search_param}"}[built.kind]
    row = [f"{len(database):,}", kind, setting, f"{build_s:.1f}", f"{statistics.median(one):.2f}",
           f"{np.percentile(one, 95):.2f}", f"{batch_ms:.2f}", f"{index_mb(built.index):.0f}", f"{grown:.0f}",
           f"{recall_at_k(found, truth):.3f}"]
    print(" | ".join(row), flush=True)
    del built
    return row


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=384, help="384 (ViT-S) or 768 (ViT-B)")
    parser.add_argument("--kinds", default="exact,ivf,hnsw")
    parser.add_argument("--queries", type=int, default=500, help="queries for recall")
    parser.add_argument("--single", type=int, default=100, help="one-at-a-time queries timed")
    parser.add_argument("--batch", type=int, default=144, help="queries in one batch (a 12x12 image's patches)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="FAISS and torch threads (default: every core)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # torch resets OpenMP's thread count (FAISS's too) to its own at each op
    faiss.omp_set_num_threads(args.threads)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        mixture = Mixture(max(1, size // 500), args.dim)
        database = mixture.sample(size, seed=1)
        queries = mixture.sample(args.queries, seed=2)
        _, truth = exact_search_torch(torch.from_numpy(database), torch.from_numpy(queries.astype(np.float32)), 10)
        for kind in args.kinds.split(","):
            rows.append(measure(database, queries, truth.numpy(), kind, args.single, args.batch))
        del database
    headers = ["vectors", "kind", "search setting", "build s", "1 query ms (median)", "1 query ms (p95)",
               f"ms per query, batch of {args.batch}", "index MB", "RSS growth MB", "recall@10"]
    table = markdown_table(headers, rows)
    notes = (f"d = {args.dim}; FAISS {faiss.__version__} ({args.threads} threads), numpy "
             f"{np.__version__}. Data: a Gaussian mixture of N/500 clusters (centres in groups of {GROUP} that lie near "
             f"each other), each a {SUBSPACE}-dim Gaussian in its own random subspace plus isotropic noise, L2-normalised, "
             "so neighbouring clusters overlap; queries are new draws from the mixture, not stored vectors. Recall@10 against an exhaustive float32 search over the stored vectors (fp16: "
             "exact's recall below 1 comes from ties broken differently). Build time includes tuning nprobe/efSearch "
             "to recall 0.95 (+0.01 margin) on 200 stored vectors used as queries. RSS growth: resident memory added by "
             "building the index (freed memory is reused, so it can read below the index size).")
    record("Patch index: build, query, memory and recall (CPU)", table, notes, print_only=args.no_record)


if __name__ == "__main__":
    main()
