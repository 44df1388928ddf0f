"""Shards: the unit of work of a sharded build, named by a hash of their inputs, each committed by one rename.

    plans = plan_shards(files, embedding, shard_size=256)    # [ShardPlan(name, paths)]
    record = read_shard(root, plan.name)                      # ShardRecord when committed, else None
    record = write_shard(root, plan, embedding, embedded)     # writes .tmp-..., renames it to root/<name>

A shard folder ``root/<name>/`` holds::

    tokens.npy        [n, D] float16 unit rows: every patch of the shard's images, image after image, row-major
    patches.parquet   one row per patch: image (int32, into the record's images), path (dictionary), row, col (int16)
    shard.json        the record: inputs, images (path, content hash, grid, first row), failed files, dim, and the
                      size and sha256 of the two data files

**Names.** A shard's name is the blake2b hash of its input list (each file's path and listed version) and of the
embedding (model key, layer, image size, pixel limit): the same files embedded the same way give the same
name, so a rerun finds the shards it already has and embeds only the rest. **Chunks** are cut where a path's
hash is 0 modulo ``shard_size`` (content-defined, as rsync cuts blocks; at least a quarter and at most twice
``shard_size`` files), so adding files to a gallery changes the shards they fall into, not every later one.
**Commit.** Files are written and fsynced in ``root/.tmp-<name>-<random>/``, which is then renamed to
``root/<name>``: a shard folder exists whole or not at all. Leftover temp folders of killed runs are deleted by
`remove_partial` (the build holds the index's writer lock). Two workers that embed the same shard (a retried
task) both rename; the second finds the folder there and drops its copy, which has the same content.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ssl_core.errors import IndexFormatError
from ssl_core.features.patch_table import grid_positions
from ssl_core.scale.listing import SourceFile
from ssl_core.search.records import IndexedImage
from ssl_core.search.storage import FileRecord, check_file, file_record, fsync_path

SHARD_FORMAT = 1
SHARD_FILE, TOKENS_FILE, PATCHES_PARQUET = "shard.json", "tokens.npy", "patches.parquet"
TEMP_PREFIX = ".tmp-"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedding:
    """What a shard's vectors depend on besides its input files."""

    model_key: str  # Encoder.key: architecture@weights fingerprint
    layer: int | None  # resolved block, None: the final normed tokens
    image_size: int
    max_pixels: int

    def key(self) -> str:
        return f"{self.model_key}|layer={self.layer}|size={self.image_size}|max_pixels={self.max_pixels}"


@dataclass(frozen=True)
class ShardPlan:
    name: str
    paths: tuple[str, ...]


@dataclass
class EmbeddedShard:
    images: list[IndexedImage]  # first: the image's first row in tokens
    tokens: np.ndarray  # [n, D] float16 unit rows
    failed: list[str] = field(default_factory=list)  # "path: reason"


@dataclass
class ShardRecord:
    name: str
    embedding: str  # Embedding.key()
    inputs: list[str]
    images: list[IndexedImage]
    failed: list[str]
    count: int  # rows of tokens.npy
    dim: int
    files: dict[str, FileRecord]
    format: int = SHARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> "ShardRecord":
        try:
            data = json.loads(text)
            data["images"] = [IndexedImage(str(i["path"]), str(i["hash"]), (int(i["grid_hw"][0]), int(i["grid_hw"][1])),
                                           int(i["first"])) for i in data["images"]]
            data["files"] = {str(k): FileRecord(int(v["size"]), str(v["sha256"])) for k, v in data["files"].items()}
            return cls(**data)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise IndexFormatError(f"{where}: not a shard record ({type(err).__name__}: {err})") from None


# --------------------------------------------------------------------------------------------------- planning
def plan_shards(files: Sequence[SourceFile], embedding: Embedding, shard_size: int) -> list[ShardPlan]:
    """Cut the sorted files into shards at content-defined points (see the module docstring)."""
    shard_size = max(1, int(shard_size))
    chunks: list[list[SourceFile]] = []
    current: list[SourceFile] = []
    for file in files:
        current.append(file)
        cut = _hash_int(file.path) % shard_size == 0 and len(current) >= max(1, shard_size // 4)
        if cut or len(current) >= 2 * shard_size:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return [ShardPlan(shard_name(chunk, embedding), tuple(f.path for f in chunk)) for chunk in chunks]


def shard_name(files: Sequence[SourceFile], embedding: Embedding) -> str:
    body = {"format": SHARD_FORMAT, "embedding": embedding.key(), "inputs": [[f.path, f.version] for f in files]}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


def _hash_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


# --------------------------------------------------------------------------------------------------- reading
def read_shard(root: Path, name: str, contents: bool = False) -> ShardRecord | None:
    """The record of a committed shard; None when it is not there. A damaged one (files of other sizes, or with
    ``contents`` other checksums) raises `IndexFormatError`."""
    folder = root / name
    path = folder / SHARD_FILE
    if not path.is_file():
        return None
    record = ShardRecord.from_json(path.read_bytes(), str(path))
    if record.name != name or record.format != SHARD_FORMAT:
        raise IndexFormatError(f"{path}: records shard {record.name!r} of format {record.format}, not {name!r}")
    for file_name, expected in record.files.items():
        check_file(folder / file_name, expected, f"the shard's {file_name}", contents=contents)
    return record


def committed_or_none(root: Path, name: str) -> ShardRecord | None:
    """`read_shard`, but a damaged shard is logged and deleted (to be embedded again) instead of raised."""
    try:
        return read_shard(root, name)
    except IndexFormatError as err:
        logger.warning("%s; embedding that shard again", err)
        shutil.rmtree(root / name, ignore_errors=True)
        return None


def remove_partial(root: Path) -> list[str]:
    """Delete temp folders left by killed writers (the caller holds the index's writer lock); their names."""
    if not root.is_dir():
        return []
    removed = [p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
    for name in removed:
        shutil.rmtree(root / name, ignore_errors=True)
    return removed


# --------------------------------------------------------------------------------------------------- writing
def write_shard(root: Path, plan: ShardPlan, embedding: Embedding, shard: EmbeddedShard) -> ShardRecord:
    """Write a shard and commit it with one rename (see the module docstring); returns its record."""
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f"{TEMP_PREFIX}{plan.name}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        np.save(temp / TOKENS_FILE, np.ascontiguousarray(shard.tokens, dtype=np.float16))
        _write_patches(temp / PATCHES_PARQUET, shard.images)
        files = {name: file_record(temp / name) for name in (TOKENS_FILE, PATCHES_PARQUET)}
        record = ShardRecord(plan.name, embedding.key(), list(plan.paths), shard.images, shard.failed,
                             int(shard.tokens.shape[0]), int(shard.tokens.shape[1]), files)
        (temp / SHARD_FILE).write_text(record.to_json())
        for name in (*files, SHARD_FILE):
            fsync_path(temp / name)
        fsync_path(temp)
        os.rename(temp, root / plan.name)  # the commit
    except OSError as err:
        shutil.rmtree(temp, ignore_errors=True)
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY) and (root / plan.name / SHARD_FILE).is_file():
            return read_shard(root, plan.name)  # another worker committed the same shard first
        raise
    fsync_path(root)
    return record


def _write_patches(path: Path, images: Sequence[IndexedImage]) -> None:
    """patches.parquet: per patch its image (index and path, dictionary-encoded), row and col."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = np.array([im.count for im in images], np.int64)
    image = np.repeat(np.arange(len(images), dtype=np.int32), counts)  # [n]
    positions = [grid_positions(im.grid_hw) for im in images] or [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    rows, cols = (np.concatenate(parts) for parts in zip(*positions))
    table = pa.table({
        "image": pa.array(image, pa.int32()),
        "path": pa.DictionaryArray.from_arrays(pa.array(image, pa.int32()), pa.array([im.path for im in images],
                                                                                      pa.string())),
        "row": pa.array(rows.astype(np.int16)),
        "col": pa.array(cols.astype(np.int16)),
    })
    pq.write_table(table, path)


__all__ = ["Embedding", "ShardPlan", "EmbeddedShard", "ShardRecord", "plan_shards", "shard_name", "read_shard",
           "committed_or_none", "remove_partial", "write_shard", "SHARD_FILE", "TOKENS_FILE", "PATCHES_PARQUET"]
