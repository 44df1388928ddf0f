"""Nearest-patch search over a gallery: every patch of every image, embedded by one encoder, stored with FAISS.

    index, report = PatchIndex.build(["photos/"], encoder, layer=None)   # None: final normed tokens
    index.save("photos.index")                                           # commits a new generation
    index = PatchIndex.load("photos.index")                              # every file checked
    query = index.embed_query(encoder, "cat.jpg")                        # refused for another model/layer
    hits = index.search_patch(query, row=3, col=5, k=10)                 # [PatchHit(score, image, row, col)]

Policy:

* **Vectors** are unit rows (inner product = cosine) stored as fp16 codes in FAISS; the index kinds (exact, IVF,
  HNSW, auto), their tuning and the GPU search are `ssl_core.search.vectors`. An ``auto`` index is re-decided, and
  rebuilt, when an ``add`` crosses `AUTO_EXACT_LIMIT`; an IVF index that grows to 4x the size it was trained at
  is retrained. The rows themselves come from `ssl_core.features.patch_table`.
* **Files**: a folder of generations with one commit point, checksums of every file and a writer lock
  (`ssl_core.search.storage`, `ssl_core.search.index_files`); the manifest and hits are `ssl_core.search.records`.
  One index holds one layer: the layer of every vector is the manifest's. A save merges images other processes
  committed since this index was loaded, so concurrent adds lose nothing.
* **Incremental.** ``add`` embeds only files not indexed yet (by resolved path and content hash); a file whose
  content changed is re-embedded and its old vectors dropped; a copy of an indexed image (same content, another
  path) is left out, so adding the same pictures again never duplicates them. Bad images are listed and skipped, and so are
  symlink loops and symlinked folders (not followed; named in the report).
"""
from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

from ssl_core.data.images import ImageSource, ResizePolicy, is_url, load_image, read_image_bytes
from ssl_core.errors import BadRequest, IndexMismatch
from ssl_core.features.encoder import Encoder, default_device, resolve_device
from ssl_core.features.patch_table import PatchTable, grid_positions, normalize_rows, patch_vectors, region_mask
from ssl_core.features.pipeline import PipelineConfig, embed_files
from ssl_core.models.weights import file_fingerprint
from ssl_core.progress import ProgressFn
from ssl_core.search.ivfpq import NOT_IN_PLACE, OnDiskVectorIndex
from ssl_core.search.records import (
    MANIFEST_FILE,
    AddReport,
    ImageHit,
    IndexedImage,
    IndexManifest,
    PatchHit,
    QueryImage,
)
from ssl_core.search.sources import Readable, gallery_files
from ssl_core.search.storage import POINTER_FILE, is_index_directory
from ssl_core.search.vectors import DeviceSearch, VectorIndex, make_vector_index, resolve_kind

if TYPE_CHECKING:
    from ssl_core.search.index_files import IndexOrigin

IVF_RETRAIN_GROWTH = 4.0
SAME_IMAGE_COSINE = 0.99  # mean patch cosine at which a query image is taken for an indexed one (`_find_indexed`)


# --------------------------------------------------------------------------------------------------- the gallery index
class PatchIndex:
    """Every patch of a gallery, embedded by one encoder at one layer, searchable by cosine similarity."""

    def __init__(self, manifest: IndexManifest, vector_index: VectorIndex | OnDiskVectorIndex | None,
                 device: str | torch.device | None = None):
        self.manifest = manifest
        self.vector_index = vector_index
        self.device = resolve_device(device) if device is not None else default_device()
        self._device_search: DeviceSearch | None = None
        self._device_lock = threading.Lock()  # one thread at a time builds and searches the device copy
        self.origin: IndexOrigin | None = None  # the folder and generation it was loaded from or saved to
        self._reindex_images()

    def _reindex_images(self) -> None:
        images = self.manifest.images
        self._by_path = {image.path: i for i, image in enumerate(images)}
        self._image_ids = np.concatenate([np.full(im.count, i, np.int32) for i, im in enumerate(images)] or [np.zeros(0, np.int32)])
        positions = [grid_positions(im.grid_hw) for im in images]
        self._rows = np.concatenate([r for r, _ in positions] or [np.zeros(0, np.int64)]).astype(np.int16)
        self._cols = np.concatenate([c for _, c in positions] or [np.zeros(0, np.int64)]).astype(np.int16)
        with self._device_lock:  # the device copy is of the old vectors
            if self._device_search is not None:
                self._device_search.release()
            self._device_search = None

    # ----------------------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, encoder: Encoder, layer: int | None = None, kind: str = "auto",
               device: str | torch.device | None = None, sharded: bool = False) -> "PatchIndex":
        """An empty index for an encoder at a layer (None: the final normed tokens); ``sharded``: for a sharded
        build (`ssl_core.scale`), which may make an on-disk ivfpq index."""
        import faiss

        resolve_kind(kind, 0, on_disk=sharded)
        resolved = None if layer is None else encoder.resolve_layers([layer])[0]
        now = _now()
        manifest = IndexManifest(
            model=encoder.name, model_key=encoder.key, fingerprint=encoder.fingerprint, weights=encoder.weights_label,
            image_size=encoder.spec.image_size, patch_size=encoder.patch_size, layer=resolved, dim=encoder.embed_dim,
            kind_requested=kind, created=now, updated=now, faiss_version=faiss.__version__)
        return cls(manifest, None, device)

    @classmethod
    def build(cls, sources: Sequence[str | os.PathLike], encoder: Encoder, layer: int | None = None, kind: str = "auto",
              progress: ProgressFn | None = None, batch_size: int = 16, device: str | torch.device | None = None,
              readable: Readable | None = None) -> tuple["PatchIndex", AddReport]:
        """Index the images of files and folders (searched recursively); bad images are reported and skipped."""
        index = cls.create(encoder, layer, kind, device)
        return index, index.add(sources, encoder, progress, batch_size, readable=readable)

    # ----------------------------------------------------------------------------------------- identity
    @property
    def images(self) -> list[IndexedImage]:
        return self.manifest.images

    @property
    def layer(self) -> int | None:
        return self.manifest.layer

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def __len__(self) -> int:
        return self.manifest.count

    def describe(self) -> str:
        return self.manifest.describe()

    def matches(self, encoder: Encoder, layer: int | None | str = "index") -> bool:
        try:
            self.check_encoder(encoder, layer)
            return True
        except IndexMismatch:
            return False

    def check_encoder(self, encoder: Encoder, layer: int | None | str = "index") -> None:
        """Refuse an encoder (and layer; "index": the index's own) that differs from the one the index was built with."""
        m = self.manifest
        wanted = m.layer if layer == "index" else (None if layer is None else encoder.resolve_layers([layer])[0])
        problems = m.differences(encoder, wanted)
        if problems:
            raise IndexMismatch(
                f"this index was built with {m.describe_embedding()}; the query uses {'; '.join(problems)}. "
                f"Choose the index's model and layer, or build an index for this one.")

    # ----------------------------------------------------------------------------------------- adding
    def add(self, sources: Sequence[str | os.PathLike], encoder: Encoder, progress: ProgressFn | None = None,
            batch_size: int = 16, workers: int | None = None, readable: Readable | None = None) -> AddReport:
        """Embed and add the images not indexed yet (see the module docstring); nothing changes on failure.
        ``readable`` says why a file found may not be read ("" when it may; `gallery_files`).

        Images are embedded by `ssl_core.features.pipeline.embed_files` (decoding in worker processes, batches by grid).
        """
        self.check_encoder(encoder)
        if self.kind == "ivfpq":
            raise BadRequest(NOT_IN_PLACE)
        report = AddReport()
        paths, report.skipped, report.refused = gallery_files(sources, readable)
        todo = self._new_files(paths, report)  # resolved path -> content hash
        paths = list(todo)
        new_images: list[IndexedImage] = []
        new_vectors: list[np.ndarray] = []
        config = PipelineConfig(batch_size=batch_size, layer=self.layer, workers=workers)
        for batch in embed_files(encoder, paths, config, progress=progress):  # streamed batch by batch
            report.failed += batch.failed
            for item in batch.items:
                new_images.append(IndexedImage(item.path, todo[item.path], tuple(item.grid_hw), 0))
                new_vectors.append(normalize_rows(item.tokens.float().numpy()).astype(np.float16))
                (report.replaced if item.path in self._by_path else report.added).append(item.path)
        if progress is not None and not paths:
            progress(0, 0)
        report.patches_added = sum(v.shape[0] for v in new_vectors)
        if new_images:
            report.rebuilt = self.append_embedded(new_images, new_vectors)
        return report

    def _new_files(self, paths: Sequence[Path], report: AddReport) -> dict[str, str]:
        """The files ``add`` must embed (resolved path -> content hash): not those indexed with the same content,
        nor a copy (same content, another path) of an indexed image or of an earlier file of ``paths``."""
        todo: dict[str, str] = {}
        seen = {image.hash for image in self.images}  # contents indexed or about to be
        for path in paths:
            resolved = str(path.resolve())
            if resolved in todo:
                continue
            content = file_fingerprint(path) if path.is_file() else ""
            known = self._by_path.get(resolved)
            if known is not None and self.images[known].hash == content:
                report.unchanged.append(resolved)
            elif known is None and content in seen and content:
                report.duplicates.append(resolved)
            else:
                todo[resolved] = content
                seen.add(content)
        return todo

    def append_embedded(self, new_images: list[IndexedImage], new_vectors: list[np.ndarray]) -> bool:
        """Add embedded images (replacing same-path ones); returns whether the FAISS index was rebuilt."""
        replaced = {self._by_path[im.path] for im in new_images if im.path in self._by_path}
        kept = [im for i, im in enumerate(self.images) if i not in replaced]
        count = sum(im.count for im in kept) + sum(v.shape[0] for v in new_vectors)
        current = self.vector_index
        kind = resolve_kind(self.manifest.kind_requested, count)
        rebuild = (current is None or bool(replaced) or kind != current.kind
                   or (kind == "ivf" and count > IVF_RETRAIN_GROWTH * current.trained_count))
        added = np.concatenate(new_vectors)
        if rebuild:
            old = current.vectors() if current is not None else np.zeros((0, self.manifest.dim), np.float16)
            keep = np.ones(old.shape[0], bool)
            for i in replaced:
                image = self.images[i]
                keep[image.first:image.first + image.count] = False
            vector_index = make_vector_index(np.concatenate([old[keep], added]), kind)
        else:
            vector_index = current
            vector_index.add(added)
        first = 0
        images = []
        for image in kept + new_images:
            images.append(IndexedImage(image.path, image.hash, image.grid_hw, first))
            first += image.count
        m = self.manifest
        m.images, m.count, m.kind = images, first, vector_index.kind
        m.search_param, m.recall, m.trained_count = vector_index.search_param, vector_index.recall, vector_index.trained_count
        m.updated = _now()
        self.vector_index = vector_index
        self._reindex_images()
        return rebuild

    # ----------------------------------------------------------------------------------------- saving and loading
    def save(self, directory: str | os.PathLike) -> Path:
        """Commit the index to a folder (see `ssl_core.search.index_files.save_index`); refused while empty."""
        from ssl_core.search.index_files import save_index

        return save_index(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device | None = None) -> "PatchIndex":
        """Read an index folder, checking every file (see `ssl_core.search.index_files.load_index`)."""
        from ssl_core.search.index_files import load_index

        return load_index(directory, device)

    def adopt(self, other: "PatchIndex") -> None:
        """Take over another index's contents (after a merge)."""
        self.manifest, self.vector_index = other.manifest, other.vector_index
        self._reindex_images()

    def patch_positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image id [N] int32, row [N] int16 and col [N] int16 of every stored vector."""
        return self._image_ids, self._rows, self._cols

    # ----------------------------------------------------------------------------------------- reading back
    def vectors(self) -> np.ndarray:
        """All stored vectors [N, D] float16 (unit rows)."""
        return np.zeros((0, self.manifest.dim), np.float16) if self.vector_index is None else self.vector_index.vectors()

    def read_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given row ids [n, D] float16, read without loading the others (on disk for IVF-PQ)."""
        return self.vectors()[:0] if self.vector_index is None else self.vector_index.take(np.asarray(ids))

    def table(self, limit: int | None = None, seed: int = 0) -> PatchTable:
        """The stored patches as a table; with ``limit``, a seeded random sample of that many (in index order)."""
        ids = np.arange(len(self))
        if limit is not None and len(self) > limit:
            ids = np.sort(np.random.default_rng(seed).choice(len(self), limit, replace=False))
        vectors = self.read_vectors(ids)  # [n, D]
        return PatchTable(vectors, self._image_ids[ids], self._rows[ids].astype(np.int64),
                          self._cols[ids].astype(np.int64), [im.path for im in self.images],
                          [im.grid_hw for im in self.images])

    def resize_policy(self) -> ResizePolicy:
        return ResizePolicy(short_side=self.manifest.image_size, patch_size=self.manifest.patch_size)

    def processed_image(self, image_index: int) -> np.ndarray:
        """A gallery image as the encoder saw it [H, W, 3] uint8 (its patch grid matches the index's rows and cols)."""
        path = self.images[image_index].path  # a local path, or a URL (indexed by a sharded build)
        image = load_image(read_image_bytes(path), name=path) if is_url(path) else load_image(path)
        return np.asarray(self.resize_policy().apply(image), dtype=np.uint8)

    # ----------------------------------------------------------------------------------------- searching
    def embed_query(self, encoder: Encoder, image: ImageSource, layer: int | None | str = "index") -> QueryImage:
        """Embed a query image with the index's model and layer (`IndexMismatch` for another one)."""
        self.check_encoder(encoder, layer)
        [features] = encoder.extract([image], layers=() if self.layer is None else (self.layer,))
        tokens = patch_vectors(features, self.layer).reshape(*features.grid_hw, -1)
        image_index = None
        if isinstance(image, (str, os.PathLike)):
            resolved = str(Path(image).resolve())
            known = self._by_path.get(resolved)
            if known is not None and self.images[known].hash == file_fingerprint(resolved):
                image_index = known
        if image_index is None and len(self):
            image_index = self._find_indexed(tokens)
        name = str(image) if isinstance(image, (str, os.PathLike)) else "query image"
        return QueryImage(name, features, tokens, image_index)

    def _find_indexed(self, tokens: np.ndarray, min_score: float = SAME_IMAGE_COSINE) -> int | None:
        """The indexed image whose patches are these tokens [h, w, D] (an in-memory copy of an indexed file), by mean
        cosine: a gallery is embedded in batches and a query alone, in bfloat16 on a GPU (`bench/gpu_check.py`)."""
        h, w = tokens.shape[:2]
        [first_hits] = self.search_vectors(tokens[0, 0][None].astype(np.float32), k=5)
        for hit in first_hits:
            image = self.images[hit.image_index]
            if (hit.row, hit.col) != (0, 0) or tuple(image.grid_hw) != (h, w):
                continue
            stored = self.vector_index.vector_range(image.first, image.count).astype(np.float32)  # [h*w, D]
            if float(np.einsum("nd,nd->n", stored, tokens.reshape(h * w, -1)).mean()) >= min_score:
                return hit.image_index
        return None

    def search_vectors(self, queries: np.ndarray, k: int = 10, exclude_image: int | None = None) -> list[list[PatchHit]]:
        """Top-k patches for each unit query vector [q, D], best first; optionally leaving one image out."""
        if self.vector_index is None:
            raise BadRequest("the index is empty: add images first")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.manifest.dim:
            raise BadRequest(f"query vectors have dim {queries.shape[1]}, the index {self.manifest.dim}")
        excluded = self.images[exclude_image].count if exclude_image is not None else 0
        fetch = min(int(k) + excluded, len(self))
        scores, ids = self._search_raw(queries, fetch)
        out = []
        for row_scores, row_ids in zip(scores, ids):
            hits = []
            for score, vid in zip(row_scores.tolist(), row_ids.tolist()):
                if vid < 0 or (exclude_image is not None and self._image_ids[vid] == exclude_image):
                    continue
                image_id = int(self._image_ids[vid])
                hits.append(PatchHit(float(score), self.images[image_id].path, int(self._rows[vid]), int(self._cols[vid]),
                                     image_id, int(vid)))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.device.type == "cuda" and self.kind != "ivfpq":  # an on-disk index is not copied to the GPU
            with self._device_lock:
                if self._device_search is None:
                    self._device_search = DeviceSearch(self.vectors(), self.device)
                return self._device_search.search(queries, k)
        return self.vector_index.search(queries, k)

    def search_patch(self, query: QueryImage, row: int, col: int, k: int = 10,
                     exclude_query_image: bool = False) -> list[PatchHit]:
        """The k gallery patches nearest to one patch of the query image."""
        h, w = query.grid_hw
        if not (0 <= row < h and 0 <= col < w):
            raise BadRequest(f"patch ({row}, {col}) is outside the query's {h}x{w} grid")
        return self.search_vectors(query.vectors[row, col][None], k, self._excluded(query, exclude_query_image))[0]

    def search_region(self, query: QueryImage, cells: np.ndarray | Iterable[tuple[int, int]], k: int = 10,
                      exclude_query_image: bool = False) -> list[PatchHit]:
        """The k gallery patches nearest to the mean direction of a region: a bool mask [h, w] or (row, col) pairs."""
        mask = region_mask(cells, query.grid_hw)  # [h, w] bool
        mean = normalize_rows(query.vectors[mask].mean(0, keepdims=True))
        return self.search_vectors(mean, k, self._excluded(query, exclude_query_image))[0]

    def search_image(self, query: QueryImage, k: int = 10, per_patch: int = 20,
                     exclude_query_image: bool = False) -> list[ImageHit]:
        """Gallery images ranked by how many query patches find one of their ``per_patch`` nearest patches in them.

        Ties are broken by the best single patch score. Voting is robust to one generic patch (sky, wall) matching
        well everywhere, which a ranking by the best score alone is not.
        """
        flat = query.vectors.reshape(-1, query.vectors.shape[-1])
        results = self.search_vectors(flat, per_patch, self._excluded(query, exclude_query_image))
        votes: dict[int, int] = {}
        best: dict[int, tuple[float, int, PatchHit]] = {}
        for query_id, hits in enumerate(results):
            for image_id in {hit.image_index for hit in hits}:
                votes[image_id] = votes.get(image_id, 0) + 1
            for hit in hits:
                if hit.image_index not in best or hit.score > best[hit.image_index][0]:
                    best[hit.image_index] = (hit.score, query_id, hit)
        w = query.grid_hw[1]
        ranked = sorted(votes, key=lambda i: (votes[i], best[i][0]), reverse=True)[:k]
        out = []
        for image_id in ranked:
            score, query_id, hit = best[image_id]
            out.append(ImageHit(hit.image, image_id, votes[image_id], score, query_id // w, query_id % w, hit.row, hit.col))
        return out

    def _excluded(self, query: QueryImage, exclude_query_image: bool) -> int | None:
        return query.image_index if exclude_query_image else None


# --------------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["PatchIndex", "PatchHit", "ImageHit", "QueryImage", "AddReport", "IndexManifest", "IndexedImage",
           "gallery_files", "is_index_directory", "MANIFEST_FILE", "POINTER_FILE"]
