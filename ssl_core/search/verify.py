"""Checking an index folder: each file against its recorded size and checksum, and (deep) its vectors against the model.

    report = verify_index("photos.index")                                    # what loading checks, as a report
    report = verify_index("photos.index", encoder_for=load_manifest_model)   # deep: re-embed a sample of images

The shallow check is what `PatchIndex.load` does (a damaged folder raises `IndexFormatError` naming the file). The
deep check re-embeds a seeded sample of the indexed images that are at hand (the file exists with the content hash
the manifest records) with the encoder ``encoder_for(index)`` returns, and compares them with the stored vectors:
every patch must have cosine at least `MIN_COSINE` (fp16 storage loses about 1e-4). A manifest whose model, weights
or layer were changed, or vectors that belong to another image, fail it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ssl_core.features.encoder import Encoder
from ssl_core.features.patch_table import patch_vectors
from ssl_core.models.weights import file_fingerprint
from ssl_core.search.patch_index import PatchIndex

MIN_COSINE = 0.99
DEFAULT_SAMPLE = 8


@dataclass
class VerifyReport:
    directory: str
    generation: str = ""
    files: dict[str, int] = field(default_factory=dict)  # checked file -> bytes
    images: int = 0
    patches: int = 0
    deep: bool = False
    sampled: list[str] = field(default_factory=list)  # images re-embedded and compared
    unavailable: list[str] = field(default_factory=list)  # "path: reason" for indexed images not at hand
    worst_cosine: float | None = None  # lowest cosine between a stored and a re-embedded patch
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and (not self.deep or bool(self.sampled))

    def summary(self) -> str:
        size = sum(self.files.values())
        lines = [f"{self.directory}: generation {self.generation}, {len(self.files)} files ({size:,} bytes) match "
                 f"their checksums; {self.images} images, {self.patches:,} patches"]
        if self.deep:
            worst = "" if self.worst_cosine is None else f", lowest cosine {self.worst_cosine:.4f}"
            lines.append(f"re-embedded {len(self.sampled)} images{worst}; {len(self.unavailable)} not at hand")
            if not self.sampled and not self.problems:
                lines.append("no indexed image is at hand (same path and content): the vectors could not be checked")
        lines += [f"problem: {p}" for p in self.problems]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def verify_index(directory: str | os.PathLike, encoder_for: Callable[[PatchIndex], Encoder] | None = None,
                 sample: int = DEFAULT_SAMPLE, seed: int = 0, min_cosine: float = MIN_COSINE) -> VerifyReport:
    """Load (checking every file's checksum) and, with ``encoder_for``, re-embed a sample of images (see the module docstring)."""
    from ssl_core.search.index_files import load_index

    index = load_index(directory, device="cpu", all_checksums=True)  # the mapped files of an ivfpq index too
    folder = Path(directory) / index.origin.generation
    m = index.manifest
    report = VerifyReport(str(directory), index.origin.generation, {
        name: record.size for name, record in sorted(m.files.items())}, len(m.images), len(index))
    report.files["manifest.json"] = (folder / "manifest.json").stat().st_size
    if encoder_for is not None:
        report.deep = True
        deep_check(index, encoder_for(index), report, sample, seed, min_cosine)
    return report


def deep_check(index: PatchIndex, encoder: Encoder, report: VerifyReport, sample: int, seed: int,
               min_cosine: float) -> None:
    """Re-embed up to ``sample`` indexed images that are at hand and compare their stored vectors (into ``report``)."""
    m = index.manifest
    differences = m.differences(encoder, m.layer)
    if differences:
        report.problems.append(f"the manifest says {m.describe_embedding()}; the model loaded for it gives "
                               f"{'; '.join(differences)}")
    if encoder.embed_dim != m.dim:
        report.problems.append(f"the model gives {encoder.embed_dim}-d tokens, the index stores {m.dim}-d vectors")
        return
    for i in np.random.default_rng(seed).permutation(len(m.images)).tolist():
        if len(report.sampled) >= sample:
            break
        image = m.images[i]
        reason = _not_at_hand(Path(image.path), image.hash)
        if reason:
            report.unavailable.append(f"{image.path}: {reason}")
            continue
        [features] = encoder.extract([image.path], layers=() if m.layer is None else (m.layer,))
        report.sampled.append(image.path)
        if tuple(features.grid_hw) != tuple(image.grid_hw):
            report.problems.append(f"{image.path}: re-embedded as a {features.grid_hw} grid, indexed as "
                                   f"{image.grid_hw}")
            continue
        stored = index.vector_index.vector_range(image.first, image.count).astype(np.float32)  # [h*w, D]
        cosines = (patch_vectors(features, m.layer) * stored).sum(1)  # both unit rows
        worst = float(cosines.min())
        report.worst_cosine = worst if report.worst_cosine is None else min(worst, report.worst_cosine)
        if worst < min_cosine:
            report.problems.append(f"{image.path}: its stored vectors do not match a re-embedding (lowest cosine "
                                   f"{worst:.3f}, at least {min_cosine} expected)")


def _not_at_hand(path: Path, content_hash: str) -> str:
    if not path.is_file():
        return "missing"
    return "" if file_fingerprint(path) == content_hash else "changed since it was indexed"


__all__ = ["verify_index", "deep_check", "VerifyReport", "MIN_COSINE"]
