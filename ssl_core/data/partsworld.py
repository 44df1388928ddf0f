"""The parts world: a seeded procedural generator of objects built from parts, with exact part and object masks.

The scenes themselves (classes, parts, shapes, drawing) are `ssl_core.data.partsworld_scene`, re-exported here;
this module adds what is built on them: `sample`, per-patch labels (`patch_labels`, `grid_part_labels`), the
shipped example images (`write_examples`, `example_part_map`) and torch datasets (`PartsWorldDataset` for
held-out sets, `PartsWorldStream` for training).

    sample = PartsWorld().sample(seed=3)          # or partsworld.sample(3)
    sample.image        # [96, 96, 3] uint8
    sample.part_map     # [96, 96] part ids (0 = background), PART_NAMES
    patch_labels(sample.part_map, 8)              # [12, 12] majority part per patch
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ssl_core.data.partsworld_scene import (
    BACKGROUNDS,
    CLASS_NAMES,
    CLASS_PARTS,
    OBJECTS,
    OCCLUDER_CLASS,
    PART_COLORS,
    PART_IDS,
    PART_NAMES,
    TEXTURES,
    DrawnPart,
    PartsSample,
    PartsWorld,
)
from ssl_core.errors import BadRequest

# The example images in assets/examples: a car, a cart (both with wheels), a house (windows, as the car) and an animal.
EXAMPLE_SEEDS: tuple[int, ...] = (11, 71, 19, 77)
EXAMPLE_SIZE = 192
TRAIN_STREAM_STRIDE = 1 << 32  # training stream of run seed s uses sample seeds s * stride + i
HELDOUT_OFFSET = 1 << 62  # held-out sets use sample seeds HELDOUT_OFFSET + i, never met in training


DEFAULT_WORLD = PartsWorld()


def sample(seed: int, size: int = 96, world: PartsWorld = DEFAULT_WORLD) -> PartsSample:
    """One parts-world sample: a pure function of (seed, size, world)."""
    return world.sample(seed, size)


def class_names() -> tuple[str, ...]:
    return CLASS_NAMES


def part_names() -> tuple[str, ...]:
    return PART_NAMES


def shared_parts() -> dict[str, tuple[str, ...]]:
    """Kinds of part that occur in more than one class, with those classes."""
    out = {name: tuple(c for c in CLASS_NAMES if name in CLASS_PARTS[c]) for name in PART_NAMES[1:]}
    return {name: classes for name, classes in out.items() if len(classes) > 1}


# ------------------------------------------------------------------------------------------------ patches
def patch_labels(part_map: np.ndarray | torch.Tensor, patch_size: int, num_labels: int = len(PART_NAMES)) -> np.ndarray:
    """Majority label of each patch: [..., H, W] -> [..., H/p, W/p] int64 (ties go to the smaller label)."""
    labels = np.asarray(part_map.cpu() if isinstance(part_map, torch.Tensor) else part_map).astype(np.int64)
    *lead, H, W = labels.shape
    p = int(patch_size)
    if p < 1 or H % p or W % p:
        raise BadRequest(f"part_map of size {H}x{W} is not a whole number of {patch_size}-pixel patches")
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise BadRequest(f"part_map labels must lie in [0, {num_labels}), got [{labels.min()}, {labels.max()}]")
    h, w = H // p, W // p
    blocks = labels.reshape(-1, h, p, w, p).transpose(0, 1, 3, 2, 4).reshape(-1, p * p)  # [patches, p*p]
    keys = np.arange(blocks.shape[0])[:, None] * num_labels + blocks
    counts = np.bincount(keys.ravel(), minlength=blocks.shape[0] * num_labels).reshape(-1, num_labels)
    return counts.argmax(-1).reshape(*lead, h, w)


def grid_part_labels(part_map: np.ndarray, grid_hw: tuple[int, int], cell: int = 8) -> np.ndarray:
    """Ground-truth label of each cell of a patch grid laid over the whole map: [H, W] -> [h, w] int64.

    For grids that do not divide the map (a model's resize rounds to whole patches), the map is first resampled
    (nearest) to ``cell`` pixels per grid cell, then each cell takes its majority label (`patch_labels`)."""
    h, w = grid_hw
    labels = np.asarray(part_map)
    if labels.shape[0] % h or labels.shape[1] % w:
        resized = Image.fromarray(labels.astype(np.uint8)).resize((w * cell, h * cell), Image.Resampling.NEAREST)
        labels = np.asarray(resized)
    return patch_labels(labels, labels.shape[0] // h)


@lru_cache(maxsize=1)
def _example_samples() -> tuple[PartsSample, ...]:
    return tuple(sample(seed, EXAMPLE_SIZE) for seed in EXAMPLE_SEEDS)


def example_part_map(image: Image.Image | np.ndarray) -> np.ndarray | None:
    """The ground-truth part map [H, W] of an image that is one of the shipped examples (`write_examples`),
    recognised by its pixels; None for any other image."""
    if isinstance(image, Image.Image):
        if image.size != (EXAMPLE_SIZE, EXAMPLE_SIZE):  # checked before any pixel is converted
            return None
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.shape != (EXAMPLE_SIZE, EXAMPLE_SIZE, 3):
        return None
    return next((s.part_map for s in _example_samples() if np.array_equal(s.image, pixels)), None)


# ------------------------------------------------------------------------------------------------ datasets
def sample_tensors(seed: int, size: int, world: PartsWorld = DEFAULT_WORLD) -> dict[str, torch.Tensor]:
    """A sample as tensors: image [3, S, S] uint8, label [] int64, part_map [S, S] int64."""
    s = world.sample(seed, size)
    return {"image": torch.from_numpy(s.image).permute(2, 0, 1).contiguous(),
            "label": torch.tensor(s.object_class, dtype=torch.int64),
            "part_map": torch.from_numpy(s.part_map.astype(np.int64))}


class PartsWorldDataset(Dataset):
    """A fixed set of ``length`` samples (index i is sample seed ``first_seed + i``), made on access.

    The default seeds (from `HELDOUT_OFFSET`) are never drawn by a training stream: use it for held-out sets.
    """

    def __init__(self, length: int, size: int = 96, first_seed: int = HELDOUT_OFFSET, world: PartsWorld = DEFAULT_WORLD):
        self.length, self.size, self.first_seed, self.world = int(length), int(size), int(first_seed), world

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``first_seed + index`` as tensors (`sample_tensors`: image [3, S, S] uint8, label [], part_map [S, S])."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return sample_tensors(self.first_seed + index, self.size, self.world)


class PartsWorldStream(IterableDataset):
    """An endless training stream for run seed ``seed``: sample seeds ``seed * 2**32 + i``, i = 0, 1, 2 ...

    DataLoader workers split the stream (worker k of n takes i = k, k + n, ...), so the samples seen
    are the same for any number of workers, though their order across workers may interleave.
    """

    def __init__(self, seed: int = 0, size: int = 96, world: PartsWorld = DEFAULT_WORLD,
                 fields: tuple[str, ...] = ("image", "label", "part_map")):
        if not 0 <= seed < 1 << 29:
            raise BadRequest(f"seed must be in [0, 2**29), got {seed}")
        self.seed, self.size, self.world, self.fields = int(seed), int(size), world, tuple(fields)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Samples as tensors (`sample_tensors`: image [3, S, S] uint8, label [], part_map [S, S]; those of
        ``fields``: a loader's workers hand over only what the consumer uses), endlessly."""
        info = get_worker_info()
        index, step = (info.id, info.num_workers) if info is not None else (0, 1)
        first = self.seed * TRAIN_STREAM_STRIDE
        while True:
            sample = sample_tensors(first + index, self.size, self.world)
            yield {name: sample[name] for name in self.fields}
            index += step


def write_examples(folder: str | Path) -> list[Path]:
    """Save the example images (`EXAMPLE_SEEDS`, `EXAMPLE_SIZE` px) as ``partsworld_{1..}.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, seed in enumerate(EXAMPLE_SEEDS, start=1):
        path = folder / f"partsworld_{i}.png"
        Image.fromarray(sample(seed, EXAMPLE_SIZE).image).save(path, optimize=True)
        paths.append(path)
    return paths


__all__ = [
    "CLASS_NAMES", "PART_NAMES", "PART_IDS", "PART_COLORS", "CLASS_PARTS", "OBJECTS", "OCCLUDER_CLASS", "TEXTURES",
    "BACKGROUNDS", "EXAMPLE_SEEDS", "EXAMPLE_SIZE", "TRAIN_STREAM_STRIDE", "HELDOUT_OFFSET", "DEFAULT_WORLD",
    "DrawnPart", "PartsSample", "PartsWorld", "sample", "class_names", "part_names", "shared_parts", "patch_labels",
    "grid_part_labels", "example_part_map", "sample_tensors", "PartsWorldDataset", "PartsWorldStream",
    "write_examples",
]
