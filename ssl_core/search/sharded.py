"""Float16 vectors kept in several ``.npy`` files, read through memory maps as one ``[N, D]`` array.

    vectors = ShardedVectors([Path("vectors-00000.npy"), Path("vectors-00001.npy")])   # nothing read yet
    vectors.rows(1000, 1010)      # [10, D] float16, may span files
    vectors.take(ids)             # [len(ids), D] float16, ids in any order: only those rows are read
    exact_search_torch(vectors, queries, k)    # exhaustive search, file chunk by file chunk

Only the pages of the rows read become resident, and the kernel may drop them again (they are clean file pages):
this is how an on-disk index re-ranks its candidates and how the exact ground truth over 10M vectors is computed
in a few hundred MB.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssl_core.errors import IndexFormatError


class ShardedVectors:
    """Rows of several ``[n_i, D]`` float16 ``.npy`` files, one after another (see the module docstring)."""

    def __init__(self, files: Sequence[Path]):
        self.files = [Path(f) for f in files]
        self.maps = [_open(f) for f in self.files]
        dims = {m.shape[1] for m in self.maps}
        if len(dims) > 1:
            raise IndexFormatError(f"{self.files[0].parent}: vector files of different widths {sorted(dims)}")
        self.dim = dims.pop() if dims else 0
        counts = np.array([m.shape[0] for m in self.maps], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # [files + 1]: first row of each file, then N

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.dim

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start .. stop-1 as one array [stop - start, D] float16 (a copy)."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        parts = []
        for i in range(int(np.searchsorted(self.starts, start, side="right")) - 1, len(self.maps)):
            first = int(self.starts[i])
            if first >= stop:
                break
            parts.append(self.maps[i][max(start - first, 0):stop - first])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float16)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` [n] (any order, repeats allowed, all in range) as [n, D] float16; reads only those rows."""
        ids = np.asarray(ids, np.int64).ravel()
        out = np.empty((ids.size, self.dim), np.float16)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        which = np.searchsorted(self.starts, sorted_ids, side="right") - 1  # file of each id
        for i in np.unique(which).tolist():
            picked = which == i
            out[order[picked]] = self.maps[i][sorted_ids[picked] - self.starts[i]]
        return out

    def __getitem__(self, item: slice) -> torch.Tensor:
        """A contiguous slice as a float16 tensor: what `exact_search_torch` reads its database through."""
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("ShardedVectors supports contiguous slices only")
        start, stop, _ = item.indices(len(self))
        return torch.from_numpy(self.rows(start, stop))


def _open(path: Path) -> np.ndarray:
    try:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:  # an empty file of rows cannot be mapped: read it (it is a header)
            array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"{path}: not a readable vector file ({type(err).__name__}: {err})") from None
    if array.ndim != 2 or array.dtype != np.float16:
        raise IndexFormatError(f"{path}: holds {array.dtype} {array.shape}, float16 [n, D] expected")
    return array


__all__ = ["ShardedVectors"]
