"""A `PatchIndex` on disk: each save commits a new generation (`ssl_core.search.storage`); loading checks everything.

A generation holds ``index.faiss`` (absent while empty), ``patches.npz`` (per vector: ``image_id`` int32, ``row``
int16, ``col`` int16) and ``manifest.json`` (`ssl_core.search.records.IndexManifest`, with the size and sha256 of
both data files). Loading checks the commit record, the manifest against the checksum in it, each data file against
the manifest, then that FAISS and the patch table agree with the manifest; any failure is an `IndexFormatError`
naming the file.

Concurrent writers do not lose each other's images: a save holds the folder's `WriterLock`, and an index loaded
from a generation that is no longer the committed one (another process saved meanwhile) is **merged**: the images
this index added since it was loaded are appended to the committed index, and the result is committed.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssl_core.errors import BadRequest, IndexFormatError, IndexMismatch
from ssl_core.search.ivfpq import OnDiskVectorIndex
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.records import (
    INDEX_FILE,
    LISTS_FILE,
    MANIFEST_FILE,
    PATCHES_FILE,
    VECTORS_PREFIX,
    IndexedImage,
    IndexManifest,
)
from ssl_core.search.storage import (
    POINTER_FILE,
    FileRecord,
    Pointer,
    WriterLock,
    check_file,
    check_writable_target,
    crash_point,
    read_pointer,
    recover,
    write_generation,
)
from ssl_core.search.vectors import VectorIndex

LOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class IndexOrigin:
    """Where an in-memory index was last loaded from or saved to, and the images it held then."""

    directory: Path  # resolved
    generation: str
    keys: frozenset[tuple[str, str]]  # (path, content hash) of each image


def origin_of(index: PatchIndex, directory: Path, generation: str) -> IndexOrigin:
    return IndexOrigin(directory.resolve(), generation, frozenset((im.path, im.hash) for im in index.images))


# --------------------------------------------------------------------------------------------------- saving
def save_index(index: PatchIndex, directory: str | os.PathLike, lock_timeout: float = LOCK_TIMEOUT_S) -> Path:
    """Commit the index as a new generation of ``directory`` (merged with saves made since it was loaded)."""
    if not len(index):
        raise BadRequest("the index is empty (no image was indexed); nothing was saved")
    target = Path(directory)
    check_writable_target(target)
    lock = WriterLock(target, timeout=lock_timeout)
    try:
        target.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        raise BadRequest(f"{target}: cannot write an index there ({err.strerror or err})") from None
    try:
        crash_point("locked")
        origin = index.origin
        if origin is not None and origin.directory == target.resolve():
            committed = read_pointer(target) if (target / POINTER_FILE).exists() else None
            if committed is not None and committed.generation != origin.generation:
                index.adopt(merged(index, _read(target, committed, index.device), origin))
        commit_locked(index, target)
    except OSError as err:  # a full disk, a folder made read-only meanwhile ...: the commit point was not reached
        raise BadRequest(f"{target}: writing the index failed ({err.strerror or err}); the committed index is "
                         f"unchanged") from None
    finally:
        lock.release()
    return target


def commit_locked(index: PatchIndex, target: Path) -> Pointer:
    """Write ``index`` as a new generation of ``target`` (the caller holds its lock; no merge)."""
    pointer = write_generation(target, lambda folder: _write_data(index, folder),
                               lambda folder, records: write_manifest(index.manifest, folder, records))
    index.origin = origin_of(index, target, pointer.generation)
    return pointer


def _write_data(index: PatchIndex, folder: Path) -> list[str]:
    import faiss

    if index.kind == "ivfpq":
        raise BadRequest("an on-disk ivfpq index is written by `patchlens index build` (ssl_core.scale), not saved")
    names = []
    if index.vector_index is not None:
        faiss.write_index(index.vector_index.index, str(folder / INDEX_FILE))
        names.append(INDEX_FILE)
    return names + [write_patches(index, folder)]


def write_patches(index: PatchIndex, folder: Path) -> str:
    """patches.npz: image id [N] int32, row [N] int16 and col [N] int16 of every vector; returns its name."""
    image_ids, rows, cols = index.patch_positions()
    np.savez(folder / PATCHES_FILE, image_id=image_ids, row=rows, col=cols)
    return PATCHES_FILE


def write_manifest(manifest: IndexManifest, folder: Path, records: dict[str, FileRecord]) -> str:
    manifest.files = dict(records)
    (folder / MANIFEST_FILE).write_text(manifest.to_json())
    return MANIFEST_FILE


def merged(ours: PatchIndex, theirs: PatchIndex, origin: IndexOrigin) -> PatchIndex:
    """``theirs`` (the committed index) plus the images ``ours`` added since it was loaded from ``origin``."""
    a, b = ours.manifest, theirs.manifest
    if (a.model_key, a.layer, a.image_size, a.dim) != (b.model_key, b.layer, b.image_size, b.dim):
        raise IndexMismatch(f"{origin.directory} was rebuilt with {b.describe_embedding()} since this index "
                            f"({a.describe_embedding()}) was loaded; nothing was saved")
    present = {(im.path, im.hash) for im in theirs.images}
    fresh = [im for im in ours.images if (im.path, im.hash) not in origin.keys and (im.path, im.hash) not in present]
    if fresh:
        vectors = [ours.vector_index.vector_range(im.first, im.count) for im in fresh]  # each [h*w, D] fp16
        theirs.append_embedded([IndexedImage(im.path, im.hash, im.grid_hw, 0) for im in fresh], vectors)
    return theirs


# --------------------------------------------------------------------------------------------------- loading
def load_index(directory: str | os.PathLike, device: str | torch.device | None = None,
               all_checksums: bool = False) -> PatchIndex:
    """Read the committed generation of an index folder, checking every file (`IndexFormatError` names damage).

    The big files of an on-disk (ivfpq) index (lists and vectors, many GB) are checked by size unless ``all_checksums``
    (`ssl_core.search.verify` reads them all); every other file by its checksum.
    """
    where = Path(directory)
    recover(where)
    for attempt in range(3):
        pointer = read_pointer(where)
        try:
            return _read(where, pointer, device, all_checksums)
        except IndexFormatError:
            try:
                moved = read_pointer(where) != pointer  # a writer committed while this was read: read again
            except IndexFormatError:
                moved = False
            if attempt == 2 or not moved:
                raise
    raise AssertionError("unreachable")


def _read(where: Path, pointer: Pointer, device: str | torch.device | None, all_checksums: bool = False,
          ) -> PatchIndex:
    folder = where / pointer.generation
    if not folder.is_dir():
        raise IndexFormatError(f"{folder}: the committed generation folder is missing; the index is damaged")
    check_file(folder / MANIFEST_FILE, pointer.manifest, "the manifest (edited or damaged since it was committed)")
    manifest = IndexManifest.from_json((folder / MANIFEST_FILE).read_bytes(), str(folder / MANIFEST_FILE))
    expected = expected_files(manifest)
    if set(manifest.files) != expected:
        raise IndexFormatError(f"{folder / MANIFEST_FILE}: lists the files {sorted(manifest.files)}, an index of "
                               f"{manifest.count} vectors has {sorted(expected)}")
    for name in sorted(expected):
        check_file(folder / name, manifest.files[name], name, contents=all_checksums or not _big(name))
    vectors = _read_ondisk(folder, manifest) if manifest.kind == "ivfpq" else _read_vectors(folder, manifest)
    index = PatchIndex(manifest, vectors, device)
    _check_patches(folder / PATCHES_FILE, index)
    index.origin = origin_of(index, where, pointer.generation)
    return index


def _read_vectors(folder: Path, manifest: IndexManifest) -> VectorIndex | None:
    import faiss

    if not manifest.count:
        return None
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as err:
        reason = str(err).splitlines()[0][:200]
        raise IndexFormatError(f"{folder / INDEX_FILE}: FAISS cannot read it ({reason})") from None
    vectors = VectorIndex(index, manifest.kind, manifest.search_param, manifest.recall, manifest.trained_count)
    if vectors.ntotal != manifest.count or vectors.dim != manifest.dim:
        raise IndexFormatError(f"{folder / INDEX_FILE}: holds {vectors.ntotal} vectors of dim {vectors.dim}, the "
                               f"manifest says {manifest.count} of dim {manifest.dim}")
    return vectors


def expected_files(manifest: IndexManifest) -> set[str]:
    """The data files a generation with this manifest holds."""
    if manifest.kind == "ivfpq":
        vectors = {name for name in manifest.files if name.startswith(VECTORS_PREFIX)}
        return {INDEX_FILE, LISTS_FILE, PATCHES_FILE} | (vectors or {f"{VECTORS_PREFIX}00000.npy"})
    return {PATCHES_FILE} | ({INDEX_FILE} if manifest.count else set())


def _big(name: str) -> bool:
    return name == LISTS_FILE or name.startswith(VECTORS_PREFIX)


def _read_ondisk(folder: Path, manifest: IndexManifest) -> OnDiskVectorIndex:
    files = sorted(folder / name for name in manifest.files if name.startswith(VECTORS_PREFIX))
    vectors = OnDiskVectorIndex.open(folder, files, manifest.search_param, manifest.rerank, manifest.recall,
                                     manifest.trained_count)
    if not (vectors.ntotal == len(vectors.store) == manifest.count) or vectors.dim != manifest.dim:
        raise IndexFormatError(f"{folder}: the on-disk index holds {vectors.ntotal} codes and {len(vectors.store)} "
                               f"vectors of dim {vectors.dim}, the manifest says {manifest.count} of dim {manifest.dim}")
    return vectors


def _check_patches(path: Path, index: PatchIndex) -> None:
    try:
        with np.load(path, allow_pickle=False) as patches:
            stored = [patches[key] for key in ("image_id", "row", "col")]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise IndexFormatError(f"{path}: not a readable patch table ({type(err).__name__}: {err})") from None
    if not all(np.array_equal(s, e) for s, e in zip(stored, index.patch_positions())):
        raise IndexFormatError(f"{path}: does not match the manifest's images")


__all__ = ["save_index", "load_index", "commit_locked", "write_manifest", "write_patches", "expected_files", "merged",
           "IndexOrigin", "LOCK_TIMEOUT_S"]
