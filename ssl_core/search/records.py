"""The records of a patch index: its manifest, the images it holds, add reports and search hits.

The manifest (``manifest.json`` in each generation folder, see `ssl_core.search.storage`) names the embedding
(model, encoder key = architecture@weights fingerprint, image size, patch size, layer, dim), the FAISS kind and
tuning, the images with their content hashes, grids and first vector, and the size and sha256 of every data file
of its generation. The commit record holds the manifest's own size and checksum, so an edited manifest is refused.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from ssl_core.errors import IndexFormatError
from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.search.storage import FileRecord

FORMAT_VERSION = 2  # 1: files at the top of the folder, no checksums (refused: rebuild)
INDEX_FILE, PATCHES_FILE, MANIFEST_FILE = "index.faiss", "patches.npz", "manifest.json"
LISTS_FILE = "lists.ivfdata"  # an on-disk (ivfpq) index's inverted lists: PQ codes and ids, memory-mapped
VECTORS_PREFIX = "vectors-"  # an on-disk index's float16 vectors for re-ranking: vectors-00000.npy ..., read by row


@dataclass
class IndexedImage:
    path: str  # resolved path
    hash: str  # content hash of the file (blake2b)
    grid_hw: tuple[int, int]
    first: int  # its patches are vectors first .. first + h*w - 1

    @property
    def count(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


@dataclass
class IndexManifest:
    model: str  # short name or timm id
    model_key: str  # Encoder.key: architecture@weights fingerprint
    fingerprint: str
    weights: str
    image_size: int  # short side images were resized to
    patch_size: int
    layer: int | None  # block index, or None for the final normed tokens
    dim: int
    kind_requested: str  # "auto" | "exact" | "ivf" | "hnsw" | "ivfpq"
    kind: str = ""  # the concrete kind built ("" while empty)
    count: int = 0
    search_param: int = 0  # nprobe (ivf, ivfpq) or efSearch (hnsw)
    recall: float | None = None
    rerank: int = 0  # ivfpq: candidates per query re-ranked exactly from the float16 vectors
    factory: str = ""  # ivfpq: the FAISS factory string (e.g. "OPQ64_256,IVF4096,PQ64")
    trained_count: int = 0
    images: list[IndexedImage] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    created: str = ""
    updated: str = ""
    faiss_version: str = ""
    files: dict[str, FileRecord] = field(default_factory=dict)  # data files of the generation: size and checksum

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> "IndexManifest":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise IndexFormatError(f"{where}: the manifest is not valid JSON ({err})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{where}: index format version {version!r}, this PatchLens reads {FORMAT_VERSION}")
        try:
            data["images"] = [IndexedImage(str(i["path"]), str(i["hash"]), (int(i["grid_hw"][0]), int(i["grid_hw"][1])),
                                           int(i["first"])) for i in data["images"]]
            data["files"] = {str(name): FileRecord(int(r["size"]), str(r["sha256"]))
                             for name, r in data["files"].items()}
            return cls(**data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            problem = f"{type(err).__name__}: {err}"
            raise IndexFormatError(f"{where}: the manifest lacks or mangles a field ({problem})") from None

    def describe(self) -> str:
        """The index in one line: its size, embedding, kind and tuning."""
        tuning = ""
        if self.kind in ("ivf", "hnsw"):
            name = "nprobe" if self.kind == "ivf" else "efSearch"
            tuning = f", {name} {self.search_param} (recall@10 {self.recall:.3f} on a sample)"
        elif self.kind == "ivfpq":
            tuning = (f" on disk ({self.factory}), nprobe {self.search_param}, {self.rerank} candidates re-ranked "
                      f"exactly (recall@10 {self.recall:.3f} on a sample)")
        return (f"{self.count:,} patches of {len(self.images)} images · {self.describe_embedding()} · "
                f"{self.kind or 'empty'} index{tuning}")

    def describe_embedding(self) -> str:
        layer = "final normed tokens" if self.layer is None else f"block {self.layer}"
        return f"{self.model} ({self.model_key}) at {layer}, images at {self.image_size} px"

    def differences(self, encoder: Encoder, layer: int | None) -> list[str]:
        """What differs between this embedding and an encoder at a resolved layer, in words ([] when nothing)."""
        problems = []
        if encoder.key != self.model_key:
            if encoder.name != self.model:
                problems.append(f"model {encoder.name} ({encoder.key})")
            elif encoder.fingerprint != self.fingerprint:
                problems.append(f"other weights for {encoder.name}: fingerprint {encoder.fingerprint}, the index's "
                                f"{self.fingerprint} ({encoder.weights_label}; the index's {self.weights})")
            else:
                problems.append(f"{encoder.name} as {encoder.key}, the index's {self.model_key}")
        if layer != self.layer:
            problems.append("final normed tokens" if layer is None else f"block {layer}")
        if encoder.spec.image_size != self.image_size:
            problems.append(f"images at {encoder.spec.image_size} px")
        return problems


@dataclass(frozen=True)
class PatchHit:
    score: float  # cosine similarity
    image: str  # path of the gallery image
    row: int
    col: int
    image_index: int  # position in `PatchIndex.images`
    vector_id: int


@dataclass(frozen=True)
class ImageHit:
    image: str
    image_index: int
    votes: int  # query patches whose top matches include a patch of this image
    score: float  # the best score between any query patch and any patch of this image
    query_row: int  # the best pair: query patch ...
    query_col: int
    row: int  # ... and its match in this image
    col: int


@dataclass
class QueryImage:
    """A query image embedded the way the index was built."""

    name: str
    features: PatchFeatures
    vectors: np.ndarray  # [h, w, D] unit float32
    image_index: int | None  # its position in the index when it is an indexed file (same path and content)

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.features.grid_hw


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)  # newly indexed files
    replaced: list[str] = field(default_factory=list)  # files whose content changed: re-embedded
    unchanged: list[str] = field(default_factory=list)  # already indexed with the same content: not embedded
    duplicates: list[str] = field(default_factory=list)  # same content as an indexed image under another path: left out
    failed: list[str] = field(default_factory=list)  # "path: reason" for inputs that are not readable images
    skipped: list[str] = field(default_factory=list)  # "path: reason" for links not followed (loops, folders)
    refused: list[str] = field(default_factory=list)  # what the caller's check reports for files it may not read
    patches_added: int = 0
    rebuilt: bool = False  # the FAISS index was rebuilt (kind changed, retrained, or vectors dropped)

    def summary(self) -> str:
        others = [(self.replaced, "changed and re-embedded"), (self.unchanged, "already indexed"),
                  (self.duplicates, "copies of indexed images left out"), (self.failed, "skipped as unreadable"),
                  (self.skipped, "symlinks not followed"), (self.refused, "outside the allowed folders, not read")]
        parts = [f"{len(self.added)} images added ({self.patches_added} patches)"]
        return ", ".join(parts + [f"{len(items)} {what}" for items, what in others if items])

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced)

    @property
    def found(self) -> int:
        """Inputs seen: image files (readable or not) and links not followed."""
        return (len(self.added) + len(self.replaced) + len(self.unchanged) + len(self.duplicates) + len(self.failed)
                + len(self.skipped) + len(self.refused))


__all__ = ["IndexedImage", "IndexManifest", "PatchHit", "ImageHit", "QueryImage", "AddReport", "FORMAT_VERSION",
           "INDEX_FILE", "PATCHES_FILE", "MANIFEST_FILE", "LISTS_FILE", "VECTORS_PREFIX"]
