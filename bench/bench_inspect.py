"""Latency of the Inspect view on one image and of a click, server side (handlers, no browser).

    python bench/bench_inspect.py [--model patchlens-mae vit_small_patch16_224] [--images 12] [--clicks 50]

A "view" is everything the Inspect tab shows for a new image (one forward pass with attention, PCA,
attention map, rendering); a "click" is a similarity map from cached features; "new k" re-clusters the
parts from cached features. Bundled models run with their weights (the default is the app's default model);
other models with random weights, which run at the speed of trained ones (no download).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import record  # noqa: E402

from app.views import inspect as handlers  # noqa: E402
from ssl_core import load_encoder  # noqa: E402
from ssl_core.features.cache import LRUCache  # noqa: E402
from ssl_core.models.registry import bundled_names, default_model_name  # noqa: E402
from ssl_core.render.tables import markdown_table  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(ms: list[float]) -> list[str]:
    return [f"{statistics.median(ms):.1f}", f"{np.percentile(ms, 95):.1f}", str(len(ms))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=[default_model_name(), "vit_small_patch16_224"], nargs="+")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name in args.model:
        cache = LRUCache(4 * 1024**3, lambda f: f.nbytes())
        encoder = load_encoder(name, cache=cache, pretrained=name in bundled_names())
        photos = [Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)) for _ in range(args.images + 1)]
        handlers.overview(encoder, photos[-1])  # warm-up (first call pays lazy initialisation)
        view = timed(lambda i: handlers.overview(encoder, photos[i]), args.images)
        pair = photos[:2]
        handlers.similarity_view(encoder, pair, ["a", "b"], 0, 0, 0, None)
        h, w = encoder.extract([pair[0]])[0].grid_hw
        click = timed(lambda i: handlers.similarity_view(encoder, pair, ["a", "b"], 0, i % h, (i * 7) % w, None), args.clicks)
        parts = timed(lambda i: handlers.parts_view(encoder, pair, ["a", "b"], None, k=2 + i % 8), args.clicks // 5)
        attention = timed(lambda i: handlers.attention_view(encoder, photos[i % 2], -1, None, i % 2 == 1, 0.6), args.clicks // 5)
        bag = timed(lambda i: handlers.bagssl_view(encoder, photos[i], [32, 64]), 3)
        label = f"{name} ({encoder.spec.image_size}px, grid {h}×{w})"
        for what, ms in [("view of a new image (forward + PCA + attention)", view), ("click: similarity, 2 images", click),
                         ("new k: parts of 2 images", parts), ("attention view (cached)", attention),
                         ("BagSSL (crops 32, 64 px)", bag)]:
            rows.append([label, what, *summary(ms)])
    table = markdown_table(["model", "step", "median ms", "p95 ms", "runs"], rows)
    record("Inspect view latency (server side, CPU)", table,
           "A 500×375 photo; features come from the in-memory cache after the first view, so clicks run no "
           "forward pass.",
           print_only=args.no_record)


if __name__ == "__main__":
    main()
