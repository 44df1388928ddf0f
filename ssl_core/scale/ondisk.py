"""The index stage of a sharded build: committed shards to an index generation, on disk (ivfpq) or in memory.

    pointer = commit_ivfpq(target, manifest, records, fill=fill_local)      # train, fill, merge, link, tune, commit
    index = in_memory_index(encoder, layer, "auto", records, target / "shards")   # exact / ivf / hnsw from shards

`commit_ivfpq` keeps its intermediate results in ``target/work/`` under names that hash their inputs (the shard
names, the FAISS factory string, the seed): the trained empty index ``trained-<key>.faiss`` and each shard's codes
``filled-<key>-<shard>.faiss``, each written to a temp name and renamed. A build killed during this stage
resumes from what is there; the build deletes ``work/`` once the generation is committed. The generation holds
``index.faiss`` (quantizers and codebooks), ``lists.ivfdata`` (the merged inverted lists), ``vectors-NNNNN.npy``
(hard links to the shards' ``tokens.npy``: no copy; a copy where links are impossible), ``patches.npz`` and the
manifest; its checksums for the linked files are the shards' own (not read again).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ssl_core.features.encoder import Encoder
from ssl_core.scale.shards import TOKENS_FILE, ShardRecord
from ssl_core.search.index_files import write_manifest, write_patches
from ssl_core.search.ivfpq import OnDiskVectorIndex, fill_shard, ivfpq_settings, merge_filled, train_ivfpq
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.records import INDEX_FILE, LISTS_FILE, VECTORS_PREFIX, IndexedImage, IndexManifest
from ssl_core.search.sharded import ShardedVectors
from ssl_core.search.storage import SHARDS_DIR, WORK_DIR, FileRecord, Pointer, write_generation

FillJob = tuple[Path, Path, int, Path]  # (trained index, shard tokens.npy, first id, filled output)
FillFn = Callable[[Sequence[FillJob]], None]


def fill_local(jobs: Sequence[FillJob]) -> None:
    """Fill shards one after another in this process (FAISS uses its threads within each)."""
    for job in jobs:
        fill_shard(*job)


def global_images(records: Sequence[ShardRecord]) -> list[IndexedImage]:
    """The shards' images with their first row counted across the shards, in shard order."""
    images, first = [], 0
    for record in records:
        for image in record.images:
            images.append(IndexedImage(image.path, image.hash, image.grid_hw, first + image.first))
        first += record.count
    return images


def commit_ivfpq(target: Path, manifest: IndexManifest, records: Sequence[ShardRecord], fill: FillFn = fill_local,
                 seed: int = 0, opq: bool | None = None, seconds: dict[str, float] | None = None) -> Pointer:
    """Build the on-disk index of the shards' vectors and commit it as a generation (caller holds the lock).

    ``opq``: None lets `ivfpq_settings` decide by width. ``seconds`` receives the time of each step (train, fill,
    merge, tune, commit; a step found done in work/ costs nothing)."""
    seconds = {} if seconds is None else seconds
    clock = _Clock(seconds)
    root, work = target / SHARDS_DIR, target / WORK_DIR
    work.mkdir(exist_ok=True)
    kept = [r for r in records if r.count]
    shard_files = [root / r.name / TOKENS_FILE for r in kept]
    vectors = ShardedVectors(shard_files)
    settings = ivfpq_settings(len(vectors), vectors.dim, opq)
    key = hashlib.blake2b(f"{[r.name for r in kept]}|{settings}|{seed}".encode(), digest_size=8).hexdigest()
    trained = work / f"trained-{key}.faiss"
    if not trained.exists():
        train_ivfpq(vectors, settings, trained, seed)
    clock.lap("train")
    filled = [work / f"filled-{key}-{r.name}.faiss" for r in kept]
    fill([(trained, f, int(first), out) for f, first, out in zip(shard_files, vectors.starts, filled)
          if not out.exists()])
    clock.lap("fill")
    names = [f"{VECTORS_PREFIX}{i:05d}.npy" for i in range(len(kept))]
    known: dict[str, FileRecord] = {name: r.files[TOKENS_FILE] for name, r in zip(names, kept)}
    manifest.images, manifest.count, manifest.kind = global_images(records), len(vectors), "ivfpq"
    manifest.factory, manifest.trained_count = settings.factory(), len(vectors)

    def write_data(folder: Path) -> list[str]:
        merge_filled(trained, filled, folder)
        for source, name in zip(shard_files, names):
            _link_or_copy(source, folder / name)
        patches = write_patches(PatchIndex(manifest, None, "cpu"), folder)
        clock.lap("merge")
        index = OnDiskVectorIndex.open(folder, [folder / name for name in names])
        index.tune(seed=seed)
        manifest.search_param, manifest.rerank, manifest.recall = index.search_param, index.rerank, index.recall
        del index  # unmaps the lists before they are fsynced and committed
        clock.lap("tune")
        return [INDEX_FILE, LISTS_FILE, *names, patches]

    pointer = write_generation(target, write_data, lambda folder, files: write_manifest(manifest, folder, files),
                               known)
    clock.lap("commit")
    return pointer


class _Clock:
    """Seconds since the last lap, recorded under a name."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds, self.last = seconds, time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, target)


def in_memory_index(encoder: Encoder, layer: int | None, kind: str, records: Sequence[ShardRecord], root: Path,
                    ) -> PatchIndex:
    """An exact / IVF / HNSW `PatchIndex` of the shards' vectors (read into memory: small galleries)."""
    index = PatchIndex.create(encoder, layer, kind, device="cpu", sharded=True)
    images = [IndexedImage(im.path, im.hash, im.grid_hw, 0) for r in records for im in r.images]
    vectors = [np.load(root / r.name / TOKENS_FILE) for r in records if r.count]  # each [n, D] float16
    index.append_embedded(images, vectors)
    return index


__all__ = ["commit_ivfpq", "in_memory_index", "fill_local", "global_images", "FillJob", "FillFn"]
