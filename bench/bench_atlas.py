"""A map of a million synthetic patches in Embedding Atlas: the time and memory of each step, measured here.

    nice -n 10 python bench/bench_atlas.py --points 1000000 --dim 384 --method umap [--serve] [--print-only]

The gallery (`synthetic_index`, built once under ``--dir`` and reused): ``--points`` unit vectors of ``--dim``
dimensions from the clustered mixture of bench/bench_scale.py (one cluster per 2,000 vectors) in a saved exact
index, over synthetic JPEG images of 14x14 patches (224x224 pixels, a ViT-B/16 grid), each a smooth colour field
of its own (`synthetic_image`), so that thumbnails are read, cut and encoded as for real images. Steps, in one
process, through the code the app and ``patchlens umap --index DIR --engine atlas`` run: loading the index, the
layout (`ssl_core.analyses.maps.layout_patches`: fit on a seeded sample of ``--fit-limit``, then every point
placed block by block), the table with its thumbnails (`ssl_core.render.atlas.atlas_table`), and with ``--serve``
Embedding Atlas's server start (`app.atlas.serve_atlas`: DuckDB copies the table). Resident memory is sampled every
0.1 s through each step.

`synthetic_index` is also the gallery of tests/test_browser_atlas.py.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # bench/, the repo
from bench_index import Mixture  # noqa: E402
from bench_scale import PER_CLUSTER, MemorySampler, sample  # noqa: E402
from machine import record  # noqa: E402

from app.views.atlas import atlas_of_index  # noqa: E402
from ssl_core.render.tables import markdown_table  # noqa: E402
from ssl_core.search.patch_index import PatchIndex  # noqa: E402

GRID = (14, 14)  # patches of one synthetic image
PATCH = 16  # pixels of a patch of a synthetic image


def synthetic_index(folder: Path, points: int, dim: int, seed: int = 0) -> Path:
    """A saved exact index of ``points`` synthetic patch vectors [points, dim] (the clustered mixture of
    bench/bench_scale.py) over ``points / 196`` synthetic JPEG images of 14x14 patches in ``folder/images``; built
    once, reused when ``folder/index`` exists. Returns the index folder."""
    from PIL import Image

    from ssl_core.search.patch_index import PatchIndex
    from ssl_core.search.records import IndexedImage, IndexManifest

    target = folder / "index"
    if target.exists():
        return target
    per_image = GRID[0] * GRID[1]
    images = -(-points // per_image)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    indexed = []
    for i in range(images):
        path = folder / "images" / f"synthetic-{i:07d}.jpg"
        Image.fromarray(synthetic_image(i)).save(path, quality=85)
        indexed.append(IndexedImage(str(path), f"synthetic-{seed}-{i}", GRID, i * per_image))
    mixture = Mixture(max(1, points // PER_CLUSTER), dim, seed)
    vectors = sample(mixture, images * per_image, seed)  # [N, D] float16 unit rows
    manifest = IndexManifest(model="synthetic", model_key="synthetic@bench", fingerprint="bench", weights="none",
                             image_size=GRID[0] * PATCH, patch_size=PATCH, layer=None, dim=dim, kind_requested="exact")
    index = PatchIndex(manifest, None, "cpu")
    index.append_embedded(indexed, [vectors])
    index.save(target)
    return target


def synthetic_image(image_id: int) -> np.ndarray:
    """Synthetic image ``image_id`` [224, 224, 3] uint8: a smooth colour field of its own."""
    rng = np.random.default_rng(image_id)
    h, w = GRID[0] * PATCH, GRID[1] * PATCH
    v, u = np.mgrid[0:1:h * 1j, 0:1:w * 1j]
    a, b, c = rng.uniform(0, 2 * np.pi, 3)
    field = np.stack([np.sin(6 * u + a) * np.cos(4 * v + b), np.cos(5 * v + c), np.sin(3 * (u + v) + a + b)], -1)
    return ((field + 1) * 127.5).astype(np.uint8)


class Steps:
    """Seconds and peak memory of each stage the map goes through (told by its ``stage`` callback)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.sampler: MemorySampler | None = None

    def stage(self, text: str) -> None:
        name = text.split(" ")[0] + " " + text.split(" ")[1]  # "fitting PCA", "placing 1,000,000", "cutting ..."
        if self.rows and self.rows[-1]["step"] == name:
            return
        self.end()
        self.sampler = MemorySampler().__enter__()
        self.rows.append({"step": name, "detail": text, "start": time.perf_counter()})

    def end(self) -> None:
        if self.rows and self.sampler is not None:
            self.sampler.__exit__()
            self.rows[-1]["seconds"] = time.perf_counter() - self.rows[-1].pop("start")
            self.rows[-1]["peak"] = self.sampler.peak
            self.sampler = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--method", default="umap", choices=["umap", "pca"])
    parser.add_argument("--fit-limit", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=16, help="thumbnail pixels (0: none)")
    parser.add_argument("--dir", default="/tmp/patchlens-atlas-bench")
    parser.add_argument("--serve", action="store_true", help="also start Embedding Atlas's server on the table")
    parser.add_argument("--print-only", action="store_true", help="print, do not append to docs/benchmarks.md")
    args = parser.parse_args()
    folder = synthetic_index(Path(args.dir) / f"{args.points}-{args.dim}", args.points, args.dim)
    steps = Steps()
    if args.method == "umap":  # numba's compilation, once per process (the app does it at start, in the background)
        from ssl_core.analyses.maps import UMAP_WARM_UP

        steps.stage("compiling UMAP (numba, once per process: the app's warm-up)")
        UMAP_WARM_UP.start(args.dim).join()
    steps.stage("loading the index")
    index = PatchIndex.load(folder, device="cpu")
    atlas = atlas_of_index(index, args.method, fit_limit=args.fit_limit, side=args.side, stage=steps.stage)
    if args.serve:
        from app.atlas import serve_atlas

        steps.stage(f"starting Embedding Atlas's server on the {atlas.table.num_rows:,} rows")
        server = serve_atlas(atlas.table)
        steps.end()
        server.stop()
    steps.end()
    rows = [[r["detail"], f"{r['seconds']:.1f}", f"{r['peak']['VmRSS']:,.0f}", f"{r['peak']['RssAnon']:,.0f}"]
            for r in steps.rows]
    table = markdown_table(["step", "seconds", "peak resident MB (all)", "peak MB (own, without mapped files)"], rows)
    notes = (f"The machine was shared with other jobs while this ran (2 cores): times are upper bounds. "
             f"{atlas.describe()}. Vectors: {len(index):,} x {args.dim} float16 in an exact index "
             f"({len(index) * args.dim * 2 / 2**20:,.0f} MB); peak resident memory of the whole run "
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB.")
    record(f"Embedding Atlas map of {args.points:,} synthetic patches ({args.method})", table, notes,
           print_only=args.print_only)


if __name__ == "__main__":
    main()
