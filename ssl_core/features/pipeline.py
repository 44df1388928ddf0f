"""Batch embedding of image files for galleries: the accelerator stays busy, not Python.

    for batch in embed_files(encoder, paths, PipelineConfig(batch_size=256)):
        index.add(batch.items)          # results stream out: a gallery never sits in memory whole

The stages:

1. **Read, decode, resize** in DataLoader worker processes. ``decode="pil"`` goes through `load_image`
   (every format, EXIF rotation, CMYK, 16-bit, decompression-bomb limit) and resizes with the encoder's
   `ResizePolicy`. ``decode="jpeg"`` has the workers read JPEG bytes only; they are decoded in batches by
   ``torchvision.io.decode_jpeg`` on the encoder's device (nvJPEG on a GPU) and resized there; files that
   are not JPEG still take the PIL path.
2. **Bucket by size**: images wait until a batch of their processed size (hence one patch grid) is full,
   so batches stay full and nothing is padded.
3. **Copy**: uint8 batches (4x smaller than float) are pinned and copied non-blocking, then normalised on
   the device.
4. **Forward** through `Encoder.forward_patch_tokens`: timm's fused attention, bf16 autocast on a GPU,
   ``torch.compile`` optionally; a batch that runs out of GPU memory is split and retried.
5. **Stream**: each batch's tokens come back as float16 on the CPU, batch by batch.

Unreadable files are listed with their reason and skipped; the rest are embedded.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ssl_core.data.images import DEFAULT_MAX_PIXELS, ResizePolicy, load_image
from ssl_core.errors import ImageLoadError
from ssl_core.features.encoder import Encoder, split_on_oom
from ssl_core.progress import ProgressFn

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jfif")


@dataclass
class PipelineConfig:
    batch_size: int = 64
    workers: int | None = None  # decoding processes; None: one per spare CPU core, at most 8
    layer: int | None = None  # block whose patch tokens are kept; None: the final, normed output
    decode: str = "pil"  # "pil" | "jpeg" (batched torchvision decode on the encoder's device)
    compile: bool = False  # torch.compile the forward (pays off on long GPU runs)
    out_dtype: torch.dtype = torch.float16
    max_pixels: int = DEFAULT_MAX_PIXELS

    def num_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass
class EmbeddedImage:
    path: str
    grid_hw: tuple[int, int]
    tokens: torch.Tensor  # [h*w, D] out_dtype, on the CPU, row-major patches


@dataclass
class EmbeddedBatch:
    items: list[EmbeddedImage] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "path: reason"


class _Reader(Dataset):
    """One file -> ("pixels", path, uint8 [3, H, W]) | ("jpeg", path, uint8 bytes) | ("error", path, reason)."""

    def __init__(self, paths: Sequence[str], policy: ResizePolicy, decode: str, max_pixels: int):
        self.paths, self.policy, self.decode, self.max_pixels = list(paths), policy, decode, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            if self.decode == "jpeg" and path.lower().endswith(JPEG_SUFFIXES):
                data = Path(path).read_bytes()
                if data[:3] == b"\xff\xd8\xff":
                    return "jpeg", path, torch.frombuffer(bytearray(data), dtype=torch.uint8)
            image = self.policy.apply(load_image(path, self.max_pixels))
            return "pixels", path, torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        except ImageLoadError as err:
            return "error", path, str(err)
        except OSError as err:
            return "error", path, f"{path}: cannot read ({err.strerror or err})"


def _identity(item):
    return item


def decode_jpegs(encoded: list[torch.Tensor], paths: list[str], policy: ResizePolicy, device: torch.device,
                 ) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """Decode JPEG bytes in one batch on ``device`` and resize each to the policy: ([(path, [3, H, W] uint8)], failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except RuntimeError:  # one bad file fails the batch: decode one by one to find it
        images = []
        for data in encoded:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                images.append(None)
    done, failed = [], []
    for path, image in zip(paths, images):
        if image is None:
            failed.append(f"{path}: corrupt JPEG data")
            continue
        width, height = policy.target_size(image.shape[2], image.shape[1])
        resized = F.interpolate(image[None].float(), size=(height, width), mode="bicubic", antialias=True,
                                align_corners=False)
        done.append((path, resized[0].round().clamp(0, 255).to(torch.uint8)))
    return done, failed


def embed_files(encoder: Encoder, paths: Sequence[str | os.PathLike], config: PipelineConfig | None = None,
                progress: ProgressFn | None = None) -> Iterator[EmbeddedBatch]:
    """Embed image files batch by batch (see the module docstring); yields as batches finish."""
    config = config or PipelineConfig()
    paths = [str(p) for p in paths]
    device = encoder.device
    workers = config.num_workers()
    loader = DataLoader(_Reader(paths, encoder.policy, config.decode, config.max_pixels), batch_size=None,
                        num_workers=workers, collate_fn=_identity, prefetch_factor=4 if workers else None,
                        persistent_workers=False)
    forward_features = _compiled_forward(encoder) if config.compile and config.layer is None else None
    buckets: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = defaultdict(list)
    pending_jpegs: list[tuple[str, torch.Tensor]] = []
    done = 0

    def run(bucket: list[tuple[str, torch.Tensor]], failed: list[str]) -> EmbeddedBatch:
        nonlocal done
        pixels = torch.stack([t for _, t in bucket])  # [B, 3, H, W] uint8
        if pixels.device.type == "cpu" and device.type == "cuda":
            pixels = pixels.pin_memory()
        x = encoder.normalize(pixels.to(device, non_blocking=True))

        def forward(part: torch.Tensor) -> torch.Tensor:
            return encoder.forward_patch_tokens(part, config.layer, forward_features).to("cpu", config.out_dtype)

        tokens = split_on_oom(forward, x, lambda a, b: torch.cat([a, b]))  # [B, h*w, D]
        grid = (pixels.shape[2] // encoder.patch_size, pixels.shape[3] // encoder.patch_size)
        done += len(bucket) + len(failed)
        if progress is not None:
            progress(done, len(paths))
        return EmbeddedBatch([EmbeddedImage(p, grid, t) for (p, _), t in zip(bucket, tokens)], failed)

    def flush_jpegs() -> list[str]:
        if not pending_jpegs:
            return []
        decoded, failed = decode_jpegs([t for _, t in pending_jpegs], [p for p, _ in pending_jpegs], encoder.policy, device)
        pending_jpegs.clear()
        for path, image in decoded:
            buckets[tuple(image.shape[1:])].append((path, image))
        return failed

    failed: list[str] = []
    for kind, path, payload in loader:
        if kind == "error":
            failed.append(payload)
            continue
        if kind == "jpeg":
            pending_jpegs.append((path, payload))
            if len(pending_jpegs) >= config.batch_size:
                failed += flush_jpegs()
        else:
            buckets[tuple(payload.shape[1:])].append((path, payload))
        for size in [s for s, b in buckets.items() if len(b) >= config.batch_size]:
            yield run(buckets.pop(size), failed)
            failed = []
    failed += flush_jpegs()
    for size in list(buckets):
        for start in range(0, len(buckets[size]), config.batch_size):
            yield run(buckets[size][start:start + config.batch_size], failed)
            failed = []
    if failed:
        done += len(failed)
        if progress is not None:
            progress(done, len(paths))
        yield EmbeddedBatch([], failed)


def _compiled_forward(encoder: Encoder) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.compile(encoder.model.forward_features, dynamic=False)
