"""2-D maps of patch embeddings (UMAP, or PCA as the fast alternative) and the colourings drawn on them.

Policy:

* **UMAP** (umap-learn) with the cosine metric and a fixed ``random_state`` (which makes umap-learn run on one
  thread, and the map reproducible). The first UMAP in a process pays for numba compilation (30 s to minutes on a
  small CPU; umap-learn's numba functions are mostly not cached on disk): `UMAP_WARM_UP` compiles it ahead, in a
  low-priority background thread, and `map_patches` waits for it (saying so) rather than compiling twice.
* **PCA** (the first two components, via `ssl_core.analyses.pca.fit_pca`) of the L2-normalised vectors, so both methods
  see the same cosine geometry.
* **Size limit.** Above ``fit_limit`` points the map is fitted on a seeded random sample of that many points and
  the rest are placed by the fit's ``transform`` (or PCA's projection); `PatchMap` says so (``fitted_on`` < ``total``).
* **Memory.** `layout_patches` reads the vectors through a function, the sample first and then blocks of ``block``
  rows, so at most the sample and one block are in memory as float32 (maps of millions of patches of an index on
  disk, docs/scale.md); `map_patches` is the same over an array in memory.
* **Colourings** are arrays, rendered elsewhere (`ssl_core.render.figures`): categorical labels (source image, k-means
  part from `ssl_core.analyses.parts.kmeans`), an RGB colour per point (grid position: the four corners of the grid get
  four colours, blended bilinearly in between), or a scalar (attention received, coloured with a colormap).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ssl_core.errors import BadRequest
from ssl_core.progress import ProgressFn

if TYPE_CHECKING:
    from ssl_core.features.encoder import PatchFeatures
    from ssl_core.search.patch_index import PatchTable

log = logging.getLogger("patchlens")
# numba (under umap-learn) colours its compiler messages with colorama whenever colorama can be imported (Ray puts a
# copy on the path): colorama's init/deinit then swap the process-wide sys.stdout and sys.stderr from whichever
# thread compiles, the UMAP warm-up's included, and put back what they saw, undoing any redirection made meanwhile
# (pytest's capture, a caller's log capture). Plain messages, set before numba is first imported:
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
StageFn = Callable[[str], None]  # told what a long step is doing now, e.g. "fitting UMAP on 600 patches"
METHODS = ("umap", "pca")
COLOURINGS = ("image", "part", "position", "attention")
DEFAULT_FIT_LIMIT = 20_000
TRANSFORM_CHUNK = 10_000
# grid-position colours of the top-left, top-right, bottom-left and bottom-right patches
CORNER_COLOURS = np.array([(0.90, 0.10, 0.10), (0.10, 0.60, 0.95), (0.15, 0.75, 0.20), (0.95, 0.80, 0.10)])
SMALL_DATA = 4096  # umap-learn finds exact neighbours below this many points, approximate ones (NN-descent) above


@dataclass
class PatchMap:
    coords: np.ndarray  # [N, 2] float32
    method: str  # "umap" | "pca"
    fitted_on: int  # points the map was fitted on (a seeded sample when < total)
    total: int
    seed: int

    def describe(self) -> str:
        name = "UMAP (cosine)" if self.method == "umap" else "PCA (first two components of unit vectors)"
        if self.fitted_on < self.total:
            return (f"{name} fitted on a random sample of {self.fitted_on:,} of {self.total:,} patches (seed {self.seed}); "
                    f"the other {self.total - self.fitted_on:,} placed with the fit's "
                    f"{'transform' if self.method == 'umap' else 'projection'}")
        return f"{name} of {self.total:,} patches (seed {self.seed})"


VectorReader = Callable[[np.ndarray], np.ndarray]  # sorted row ids [n] -> their vectors [n, D] (any float dtype)


def map_patches(vectors: np.ndarray, method: str = "umap", seed: int = 0, fit_limit: int = DEFAULT_FIT_LIMIT,
                n_neighbors: int = 15, min_dist: float = 0.1, progress: ProgressFn | None = None,
                stage: StageFn | None = None) -> PatchMap:
    """A 2-D map of patch vectors [N, D] held in memory (see `layout_patches`)."""
    return layout_patches(lambda ids: vectors[ids], len(vectors), method, seed, fit_limit, n_neighbors, min_dist,
                          progress=progress, stage=stage)


def layout_patches(read: VectorReader, total: int, method: str = "umap", seed: int = 0,
                   fit_limit: int = DEFAULT_FIT_LIMIT, n_neighbors: int = 15, min_dist: float = 0.1,
                   block: int = TRANSFORM_CHUNK, progress: ProgressFn | None = None,
                   stage: StageFn | None = None) -> PatchMap:
    """A 2-D map of ``total`` patch vectors read block by block through ``read`` (see the module docstring).

    At most ``fit_limit`` + ``block`` vectors are in memory as float32 at once: the fit's seeded sample, then one
    block of ``block`` rows at a time placed by the fit. Progress counts points placed; ``stage`` hears what is being
    done (waiting for the warm-up's compilation, fitting, placing the rest)."""
    stage = stage or (lambda text: None)
    if method not in METHODS:
        raise BadRequest(f"map method must be one of {', '.join(METHODS)}, not {method!r}")
    if total < 3:
        raise BadRequest(f"a map needs at least 3 patches, got {total}")
    fit_ids = np.arange(total)
    if total > fit_limit:
        fit_ids = np.sort(np.random.default_rng(seed).choice(total, fit_limit, replace=False))
    fitted = np.zeros(total, bool)
    fitted[fit_ids] = True
    coords = np.empty((total, 2), np.float32)  # [N, 2]
    sample = np.asarray(read(fit_ids), np.float32)  # [n_fit, D]
    if method == "pca":
        from ssl_core.analyses.pca import fit_pca

        stage(f"fitting PCA on {len(fit_ids):,} of {total:,} patches")
        fit = fit_pca(torch.nn.functional.normalize(torch.from_numpy(sample), dim=-1), k=2)
        stage(f"placing {total:,} patches with the fit's projection")
        place, done = (lambda x: fit.project(torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)).numpy()), 0
        skip = np.zeros(total, bool)  # every point is placed by the projection, the sample's too
    else:
        place, done = _fit_umap(sample, fit_ids, total, coords, n_neighbors, min_dist, seed, stage), len(fit_ids)
        skip = fitted
        if done < total:
            stage(f"placing the other {total - done:,} patches with the fit's transform")
    del sample
    if progress is not None and done:
        progress(done, total)
    for start in range(0, total, block):
        ids = np.arange(start, min(start + block, total))[~skip[start:start + block]]
        if len(ids):
            coords[ids] = place(np.asarray(read(ids), np.float32))
            done += len(ids)
            if progress is not None:
                progress(done, total)
    return PatchMap(coords, method, len(fit_ids), total, seed)


def _fit_umap(sample: np.ndarray, fit_ids: np.ndarray, total: int, coords: np.ndarray, n_neighbors: int,
              min_dist: float, seed: int, stage: StageFn) -> Callable[[np.ndarray], np.ndarray]:
    """Fit UMAP on the sample [n_fit, D] (its points' coordinates written into ``coords``); the fit's transform."""
    UMAP_WARM_UP.wait_for(len(fit_ids), len(fit_ids) < total, stage)
    import warnings

    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(fit_ids) - 1), min_dist=min_dist,
                        metric="cosine", random_state=seed, n_jobs=1)
    stage(f"fitting UMAP on {len(fit_ids):,} patches")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by setting random_state", spectral init notes
        coords[fit_ids] = reducer.fit_transform(sample)

    def transform(x: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return reducer.transform(x)
    return transform


class UmapWarmUp:
    """Compiles umap-learn's numba code before the first map, on random data through the code paths maps take:
    a small map (exact neighbours), then a large one (approximate neighbours) with points placed by ``transform``.

    `start` runs it in a daemon thread at the lowest CPU priority; `wait_for` blocks a map until the stages it
    needs are compiled (it returns at once when no warm-up was started).
    """

    STAGES = (("small maps", 600, DEFAULT_FIT_LIMIT), ("large maps and transform", SMALL_DATA + 400, SMALL_DATA + 100))

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.finished: list[str] = []
        self.current = ""
        self.started_at = 0.0
        self.seconds: float | None = None  # how long it took, once done
        self._changed = threading.Condition()

    def start(self, dim: int = 64) -> threading.Thread:
        """Start warming up (once per process) in a low-priority daemon thread."""
        with self._changed:
            if self.thread is None:
                self.started_at = time.monotonic()
                self.thread = threading.Thread(target=self._run, args=(dim,), name="umap-warm-up", daemon=True)
                self.thread.start()
                log.info("UMAP warm-up started (compiling in a low-priority background thread)")
            return self.thread

    def _run(self, dim: int) -> None:
        import numba

        numba.get_num_threads()  # numba's worker threads start now, so they do not inherit the low priority below
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        rng = np.random.default_rng(0)
        try:
            for name, points, fit_limit in self.STAGES:
                self._set(current=name)
                map_patches(rng.normal(size=(points, dim)).astype(np.float32), "umap", fit_limit=fit_limit)
                self._set(finished=name)
        except Exception:  # noqa: BLE001 - a failed warm-up only means the first map compiles for itself
            log.exception("UMAP warm-up failed; the first map compiles UMAP itself")
        self._set(current="", done=True)
        log.info("UMAP warm-up finished in %.1f s (%s)", self.seconds, ", ".join(self.finished) or "nothing")

    def _set(self, current: str | None = None, finished: str | None = None, done: bool = False) -> None:
        with self._changed:
            if current is not None:
                self.current = current
            if finished is not None:
                self.finished.append(finished)
            if done:
                self.seconds = time.monotonic() - self.started_at
            self._changed.notify_all()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.seconds is None and threading.current_thread() is not self.thread

    def needed(self, fitted: int, transforms: bool) -> list[str]:
        """The stages a map fitted on ``fitted`` points (placing more with ``transform``: ``transforms``) needs."""
        large = fitted >= SMALL_DATA or transforms
        return [name for name, _, _ in self.STAGES if name == self.STAGES[0][0] or large]

    def wait_for(self, fitted: int, transforms: bool, stage: StageFn) -> None:
        """Block until the stages a map needs are compiled (or the warm-up ends), telling ``stage`` every second."""
        needed = self.needed(fitted, transforms)
        with self._changed:
            while self.running and not all(name in self.finished for name in needed):
                stage(f"compiling UMAP once per server start ({self.current}; "
                      f"{time.monotonic() - self.started_at:.0f} s so far)")
                self._changed.wait(1.0)


UMAP_WARM_UP = UmapWarmUp()


def nearest_point(coords: np.ndarray, x: float, y: float, max_distance: float | None = None) -> int | None:
    """Index of the point of ``coords`` [N, 2] nearest to (x, y); None when there is none within ``max_distance``."""
    if len(coords) == 0:
        return None
    d2 = ((np.asarray(coords, np.float64) - np.array([x, y], np.float64)) ** 2).sum(1)
    best = int(np.argmin(d2))
    if max_distance is not None and d2[best] > max_distance**2:
        return None
    return best


# --------------------------------------------------------------------------------------------------- colourings
@dataclass
class Colouring:
    kind: str  # "categorical" | "rgb" | "scalar"
    values: np.ndarray  # categorical: [N] int labels; rgb: [N, 3] float in [0, 1]; scalar: [N] float
    title: str
    names: list[str] = field(default_factory=list)  # categorical: a name per label


def colour_by_image(image_ids: np.ndarray, names: Sequence[str]) -> Colouring:
    """One category per source image."""
    return Colouring("categorical", np.asarray(image_ids, np.int64), "source image", [str(n) for n in names])


def colour_by_part(vectors: np.ndarray, k: int = 8, seed: int = 0) -> Colouring:
    """One category per k-means part (spherical k-means over all the points, `ssl_core.analyses.parts.kmeans`)."""
    from ssl_core.analyses.parts import kmeans

    result = kmeans(torch.from_numpy(np.asarray(vectors, np.float32)), k, seed)
    return Colouring("categorical", result.labels.numpy(), f"k-means part (k={k})", [f"part {i}" for i in range(k)])


def colour_by_position(rows: np.ndarray, cols: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Colouring:
    """A colour per grid position: row and column normalised to [0, 1] by each point's grid, corners blended."""
    v = np.asarray(rows, np.float64) / np.maximum(np.asarray(heights, np.float64) - 1, 1)  # [N] 0 top .. 1 bottom
    u = np.asarray(cols, np.float64) / np.maximum(np.asarray(widths, np.float64) - 1, 1)  # [N] 0 left .. 1 right
    tl, tr, bl, br = CORNER_COLOURS
    rgb = ((1 - v)[:, None] * ((1 - u)[:, None] * tl + u[:, None] * tr)
           + v[:, None] * ((1 - u)[:, None] * bl + u[:, None] * br))
    return Colouring("rgb", rgb, "grid position (corners: red, blue, green, yellow)")


def colour_by_attention(values: np.ndarray, title: str = "class-token attention (last layer, heads averaged)") -> Colouring:
    """A scalar per point, e.g. the attention each patch receives (see `attention_per_patch`)."""
    return Colouring("scalar", np.asarray(values, np.float64), title)


def colour_patches(table: PatchTable, by: str, attention: np.ndarray | None = None, parts: int = 8, seed: int = 0) -> Colouring:
    """The colouring named ``by`` (one of `COLOURINGS`) for the rows of a `ssl_core.features.patch_table.PatchTable`.

    ``attention``: a value per row, needed for ``by="attention"`` (see `attention_per_patch`).
    """
    if by == "image":
        return colour_by_image(table.image_ids, table.names)
    if by == "part":
        return colour_by_part(table.vectors, min(parts, len(table)), seed)
    if by == "position":
        return colour_by_position(table.rows, table.cols, *table.heights_widths())
    if by == "attention":
        if attention is None:
            raise BadRequest("colouring by attention needs attention values (not stored in an index: map images instead)")
        return colour_by_attention(attention)
    raise BadRequest(f"colour by must be one of {', '.join(COLOURINGS)}, not {by!r}")


def attention_per_patch(features: Sequence[PatchFeatures]) -> np.ndarray:
    """Class-token attention to each patch (last layer, heads averaged), all images' patches row-major: [N].

    ``features``: `PatchFeatures` extracted with ``attention=True``.
    """
    from ssl_core.analyses.attention import class_attention_map

    maps = []
    for f in features:
        if f.attention is None:
            raise BadRequest("features were extracted without attention (use attention=True)")
        maps.append(class_attention_map(f.attention, f.num_prefix, f.grid_hw).reshape(-1).numpy())
    return np.concatenate(maps) if maps else np.zeros(0)


__all__ = ["PatchMap", "map_patches", "layout_patches", "VectorReader", "nearest_point", "Colouring", "colour_by_image", "colour_by_part",
           "colour_by_position", "colour_by_attention", "colour_patches", "attention_per_patch", "METHODS",
           "COLOURINGS", "DEFAULT_FIT_LIMIT", "UMAP_WARM_UP", "UmapWarmUp", "StageFn"]
