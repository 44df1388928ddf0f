"""Embedding throughput: PatchLens's pipeline from JPEG files against what a user would write, in one run.

    python bench/bench_embed.py [--models vit_small_patch16_224 vit_base_patch16_224] [--images 64]

Three ways to embed the same JPEG files (448x448, written to a temporary folder: square, so that every path
computes the same 14x14 grid at 224 px — timm's centre crop and PatchLens's aspect-keeping resize agree), timed
side by side:

* plain loop: PIL decode + resize, timm ``forward_features`` in fp32, one batch at a time (what a user writes);
* ceiling: timm ``forward_features`` alone on batches already on the device (bf16 on a GPU, fp32 on a CPU);
* PatchLens: `ssl_core.features.pipeline.embed_files` (worker decoding, bucketing, pinned copies, autocast; --compile
  and --decode jpeg optional).

Random weights run at the speed of trained ones. Throughput in images/s; MFU on a GPU counts the model's
forward FLOPs (35.2 GFLOPs per ViT-B/16 image at 224) against --peak-tflops.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import record  # noqa: E402

from ssl_core import load_encoder  # noqa: E402
from ssl_core.features.pipeline import PipelineConfig, embed_files  # noqa: E402
from ssl_core.render.tables import markdown_table  # noqa: E402

GFLOPS_PER_IMAGE = {"vit_small_patch16_224": 9.2, "vit_base_patch16_224": 35.2}  # forward, 224 px


def write_jpegs(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    base = rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)
    for i in range(count):
        pixels = np.roll(base, i * 7, axis=1) // 2 + rng.integers(0, 128, (1, 448, 3), dtype=np.uint8)
        path = folder / f"photo_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def plain_loop(model, paths, batch_size, device) -> float:
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]]).to(device)
            model.forward_features(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def ceiling(model, batch_size, device, repeats, size: int = 224) -> float:
    x = torch.randn(batch_size, 3, size, size, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        model.forward_features(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model.forward_features(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - start)


def pipeline(encoder, paths, batch_size, workers, decode, compile_) -> float:
    config = PipelineConfig(batch_size=batch_size, workers=workers, decode=decode, compile=compile_)
    start = time.perf_counter()
    count = sum(len(b.items) for b in embed_files(encoder, paths, config))
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    assert count == len(paths)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--decode", default="pil", choices=["pil", "jpeg"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        for name in args.models:
            encoder = load_encoder(name, pretrained=False, device=str(device), cache=None)
            plain_model = timm.create_model(name, pretrained=False).eval().to(device)
            pipeline(encoder, paths[: args.batch_size], args.batch_size, args.workers, args.decode, args.compile)  # warm-up
            plain = plain_loop(plain_model, paths, args.batch_size, device)
            top = ceiling(plain_model, args.batch_size, device, max(2, args.images // args.batch_size))
            ours = pipeline(encoder, paths, args.batch_size, args.workers, args.decode, args.compile)
            gflops = GFLOPS_PER_IMAGE.get(name)
            mfu = (f"{ours * gflops / 1000 / args.peak_tflops:.1%}" if device.type == "cuda" and gflops else "n/a (CPU)")
            rows.append([name, f"{plain:.1f}", f"{top:.1f}", f"{ours:.1f}", f"{ours / plain:.2f}×", f"{ours / top:.0%}", mfu])
    table = markdown_table(["model (224 px)", "plain loop img/s", "timm forward ceiling img/s", "PatchLens pipeline img/s",
                            "pipeline / plain", "pipeline / ceiling", "MFU"], rows)
    notes = (f"{args.images} JPEG files of 448×448, batch {args.batch_size}, decode={args.decode}, "
             f"compile={args.compile}, workers={PipelineConfig(workers=args.workers).num_workers()}.")
    record("Embedding throughput", table, notes, print_only=args.no_record)


if __name__ == "__main__":
    main()
