"""Batch embedding of image files for galleries: the accelerator stays busy, not Python.

    for batch in embed_files(encoder, paths, PipelineConfig(batch_size=256)):
        index.add(batch.items)          # results stream out: a gallery never sits in memory whole

The stages:

1. **Read, decode, resize** in DataLoader worker processes. ``decode="pil"`` goes through `load_image`
   (every format, EXIF rotation, CMYK, 16-bit, decompression-bomb limit) and resizes with the encoder's
   `ResizePolicy`. ``decode="jpeg"`` has the workers read JPEG bytes only; they are decoded in batches by
   ``torchvision.io.decode_jpeg`` on the encoder's device (nvJPEG on a GPU) and resized there; files that
   are not JPEG, too large, CMYK, truncated, or whose EXIF asks for a rotation (nvJPEG ignores it), take the PIL
   path, as does a file the batched decoder refuses.
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

import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image
from torch.utils.data import DataLoader, Dataset

from ssl_core.data.images import DEFAULT_MAX_PIXELS, ResizePolicy, load_image
from ssl_core.errors import ImageLoadError
from ssl_core.features.encoder import Encoder, split_on_oom
from ssl_core.progress import ProgressFn
from ssl_core.system import usable_cores

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jfif")
T = TypeVar("T")


@dataclass
class PipelineConfig:
    batch_size: int = 64
    workers: int | None = None  # decoding processes; None: one per spare usable CPU core, at most 8
    layer: int | None = None  # block whose patch tokens are kept; None: the final, normed output
    decode: str = "pil"  # "pil" | "jpeg" (batched torchvision decode on the encoder's device)
    compile: bool = False  # torch.compile the forward (pays off on long GPU runs)
    out_dtype: torch.dtype = torch.float16
    max_pixels: int = DEFAULT_MAX_PIXELS

    def num_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(0, min(8, usable_cores() - 1))


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

    def __getitem__(self, i: int) -> tuple[str, str, torch.Tensor | str]:
        return decode_file(self.paths[i], self.policy, self.decode, self.max_pixels)


def decode_file(path: str, policy: ResizePolicy, decode: str = "pil", max_pixels: int = DEFAULT_MAX_PIXELS,
                data: bytes | None = None) -> tuple[str, str, torch.Tensor | str]:
    """Stage 1 for one file (read from ``path``, or its bytes ``data`` when given): ("pixels", path, uint8
    [3, H, W] resized by ``policy``) | ("jpeg", path, uint8 bytes [n]) | ("error", path, "path: reason")."""
    try:
        if decode == "jpeg" and path.lower().endswith(JPEG_SUFFIXES):
            data = Path(path).read_bytes() if data is None else data
            if batch_decodable(data, max_pixels):
                return "jpeg", path, torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = policy.apply(load_image(path if data is None else data, max_pixels, name=path))
        return "pixels", path, torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    except ImageLoadError as err:
        return "error", path, str(err)
    except OSError as err:
        return "error", path, f"{path}: cannot read ({err.strerror or err})"


def batch_decodable(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether a JPEG can go to the batched decoder as it is, judged from its header and its last bytes: an RGB or
    gray image within ``max_pixels`` whose EXIF asks for no rotation, ending with the end-of-image marker.
    Everything else takes the PIL path, which refuses decompression bombs from the header, converts CMYK, applies
    EXIF rotation (torchvision does that on the CPU only: nvJPEG ignores it), says that a truncated file is
    truncated (a decoder may fill in the missing part without a word) and names the reason of an unreadable file."""
    if not data.endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as header:
            return (header.format == "JPEG" and header.mode in ("RGB", "L")
                    and header.width * header.height <= max_pixels
                    and header.getexif().get(ExifTags.Base.Orientation, 1) == 1)
    except Exception:  # noqa: BLE001  (any unreadable header: the PIL path says why)
        return False


def _identity(item: T) -> T:
    return item


def decode_jpegs(encoded: list[torch.Tensor], paths: list[str], policy: ResizePolicy, device: torch.device,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """Decode JPEG bytes in one batch on ``device`` and resize each to the policy: ([(path, [3, H, W] uint8)], failed).
    A file the batched decoder refuses (nvJPEG reads fewer JPEG variants than PIL) takes the PIL path from its bytes:
    it is embedded if PIL reads it, else listed with PIL's reason (a truncated file says so)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":  # nvJPEG decodes on a stream of its own, not ordered after ours: memory our pending
        torch.cuda.current_stream(device).synchronize()  # kernels still read must not be handed to it as output
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
    for path, data, image in zip(paths, encoded, images):
        if image is None:
            kind, _, payload = decode_file(path, policy, "pil", max_pixels, data=data.numpy().tobytes())
            if kind == "pixels":
                done.append((path, payload))
            else:
                failed.append(payload)
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
    yield from embed_decoded(encoder, _reader_loader(paths, encoder.policy, config), len(paths), config, progress)


def embed_decoded(encoder: Encoder, decoded: Iterable[tuple[str, str, torch.Tensor | str]], total: int,
                  config: PipelineConfig | None = None, progress: ProgressFn | None = None) -> Iterator[EmbeddedBatch]:
    """Stages 2-5 over files already read (`decode_file`'s results, from any process or machine): batches of
    same-size images through the encoder, failures passed on; yields as batches finish."""
    config = config or PipelineConfig()
    runner = _BatchRunner(encoder, config, total, progress)
    failed: list[str] = []
    for kind, path, payload in decoded:
        if kind == "error":
            failed.append(payload)
            continue
        failed += runner.add(kind, path, payload)
        for size in runner.full_sizes():
            yield runner.run(runner.buckets.pop(size), failed)
            failed = []
    failed += runner.flush_jpegs()
    for bucket in runner.remaining():
        yield runner.run(bucket, failed)
        failed = []
    if failed:
        runner.advance(len(failed))
        yield EmbeddedBatch([], failed)


def _reader_loader(paths: list[str], policy: ResizePolicy, config: PipelineConfig) -> DataLoader:
    """Stage 1: worker processes that read, decode and resize, one file per item (see `_Reader`)."""
    workers = config.num_workers()
    return DataLoader(_Reader(paths, policy, config.decode, config.max_pixels), batch_size=None,
                      num_workers=workers, collate_fn=_identity, prefetch_factor=4 if workers else None,
                      persistent_workers=False)


class _BatchRunner:
    """Stages 2-5 of `embed_files`: images bucketed by processed size, JPEG bytes awaiting a batched decode,
    the forward pass of a full bucket, and the progress count."""

    def __init__(self, encoder: Encoder, config: PipelineConfig, total: int, progress: ProgressFn | None):
        self.encoder, self.config, self.total, self.progress = encoder, config, total, progress
        self.device = encoder.device
        self.forward_features = _compiled_forward(encoder) if config.compile and config.layer is None else None
        self.buckets: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = defaultdict(list)  # [3, H, W] uint8
        self.pending_jpegs: list[tuple[str, torch.Tensor]] = []  # encoded bytes [n] uint8
        self.done = 0

    def add(self, kind: str, path: str, payload: torch.Tensor) -> list[str]:
        """Queue one decoded image ("pixels") or JPEG file ("jpeg"); returns files that failed to decode."""
        if kind == "jpeg":
            self.pending_jpegs.append((path, payload))
            return self.flush_jpegs() if len(self.pending_jpegs) >= self.config.batch_size else []
        self.buckets[tuple(payload.shape[1:])].append((path, payload))
        return []

    def full_sizes(self) -> list[tuple[int, int]]:
        """Processed sizes (H, W) whose bucket holds a whole batch."""
        return [size for size, bucket in self.buckets.items() if len(bucket) >= self.config.batch_size]

    def remaining(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """What is left in the buckets at the end, in batches of at most ``batch_size``."""
        for size in list(self.buckets):
            for start in range(0, len(self.buckets[size]), self.config.batch_size):
                yield self.buckets[size][start:start + self.config.batch_size]

    def flush_jpegs(self) -> list[str]:
        """Decode the pending JPEGs in one batch on the device and bucket them; returns the failures."""
        if not self.pending_jpegs:
            return []
        pending = self.pending_jpegs
        decoded, failed = decode_jpegs([t for _, t in pending], [p for p, _ in pending], self.encoder.policy,
                                       self.device, self.config.max_pixels)
        pending.clear()
        for path, image in decoded:
            self.buckets[tuple(image.shape[1:])].append((path, image))
        return failed

    def run(self, bucket: list[tuple[str, torch.Tensor]], failed: list[str]) -> EmbeddedBatch:
        """Copy, normalise and embed one same-size bucket of [3, H, W] uint8 images."""
        encoder, config = self.encoder, self.config
        x = encoder.normalize(self.to_device([t for _, t in bucket]))  # [B, 3, H, W] float

        def forward(part: torch.Tensor) -> torch.Tensor:  # [b, 3, H, W] -> [b, h*w, D] out_dtype on the CPU
            return encoder.forward_patch_tokens(part, config.layer, self.forward_features).to("cpu", config.out_dtype)

        tokens = split_on_oom(forward, x, lambda a, b: torch.cat([a, b]))  # [B, h*w, D]
        grid = (x.shape[2] // encoder.patch_size, x.shape[3] // encoder.patch_size)
        self.advance(len(bucket) + len(failed))
        return EmbeddedBatch([EmbeddedImage(p, grid, t) for (p, _), t in zip(bucket, tokens)], failed)

    def to_device(self, images: list[torch.Tensor]) -> torch.Tensor:
        """[B, 3, H, W] uint8 on the device from same-size images [3, H, W]: those of the PIL path, on the CPU, are
        stacked, pinned and copied without blocking; a bucket that also holds batch-decoded ones (nvJPEG's, on the
        device already) gathers there."""
        on_device = [image.device.type == self.device.type for image in images]  # ("cuda" is "cuda:0")
        if any(on_device) and not all(on_device):
            return torch.stack([image.to(self.device) for image in images])
        pixels = torch.stack(images)
        if pixels.device.type == "cpu" and self.device.type == "cuda":
            pixels = pixels.pin_memory()
        return pixels.to(self.device, non_blocking=True)

    def advance(self, count: int) -> None:
        """Count ``count`` more files as handled (embedded or failed) and report progress."""
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)


def _compiled_forward(encoder: Encoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder's ``forward_features`` under ``torch.compile``: [B, 3, H, W] -> [B, P + h*w, D]."""
    return torch.compile(encoder.model.forward_features, dynamic=False)
