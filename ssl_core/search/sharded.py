"""Float16 vectors kept in several ``.npy`` files, read as one ``[N, D]`` array without holding them in memory.

    vectors = ShardedVectors([Path("vectors-00000.npy"), Path("vectors-00001.npy")])   # nothing read yet
    vectors.rows(1000, 1010)      # [10, D] float16, may span files
    vectors.take(ids)             # [len(ids), D] float16, ids in any order: only those rows are read
    exact_search_torch(vectors, queries, k)    # exhaustive search, file chunk by file chunk

`take` reads each row it is asked for with one ``pread`` (see its docstring for why not a memory map): this is
how an on-disk index re-ranks its candidates. `rows` reads a range with plain sequential reads: this is how the
exact ground truth over 10M vectors is computed, chunk by chunk, in a few hundred MB. Nothing is held in memory
but the file headers; the page cache keeps what is read often.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssl_core.errors import IndexFormatError


class ShardedVectors:
    """Rows of several ``[n_i, D]`` float16 ``.npy`` files, one after another (see the module docstring)."""

    def __init__(self, files: Sequence[Path]):
        self._fds: dict[int, int] = {}  # open file descriptors, by file (opened on first read)
        self._lock = threading.Lock()
        self.files = [Path(f) for f in files]
        headers = [_header(f) for f in self.files]  # (rows, dim, data offset)
        dims = {dim for _, dim, _ in headers}
        if len(dims) > 1:
            raise IndexFormatError(f"{self.files[0].parent}: vector files of different widths {sorted(dims)}")
        self.dim = dims.pop() if dims else 0
        self.offsets = [offset for _, _, offset in headers]
        self.starts = np.concatenate([[0], np.cumsum([rows for rows, _, _ in headers])]).astype(np.int64)  # [files+1]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.dim

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start .. stop-1 as one array [stop - start, D] float16, read with plain reads (sequential, with the
        kernel's read-ahead; nothing stays mapped)."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        parts = []
        for i in range(int(np.searchsorted(self.starts, start, side="right")) - 1, len(self.files)):
            first = int(self.starts[i])
            if first >= stop:
                break
            lo, hi = max(start - first, 0), min(stop, int(self.starts[i + 1])) - first
            offset = self.offsets[i] + lo * self.dim * 2
            block = np.fromfile(self.files[i], np.float16, (hi - lo) * self.dim, offset=offset)
            parts.append(block.reshape(-1, self.dim))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float16)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` [n] (any order, repeats allowed, all in range) as [n, D] float16: one ``pread`` per row.

        Reads, not a memory map: the kernel maps pages *around* each faulting page of a mapping (fault-around),
        so mapped random rows made the process's resident set grow to the size of the cached vector files (1.9 GB
        for 1M 768-d vectors, docs/benchmarks.md); reads keep it to what is asked, and the page cache still serves
        repeated rows."""
        ids = np.asarray(ids, np.int64).ravel()
        out = np.empty((ids.size, self.dim), np.float16)
        row_bytes = self.dim * 2
        which = np.searchsorted(self.starts, ids, side="right") - 1  # file of each id
        offsets = np.asarray(self.offsets, np.int64)[which] + (ids - self.starts[which]) * row_bytes
        buffer = memoryview(out.view(np.uint8).reshape(-1))
        for i, (file, offset) in enumerate(zip(which.tolist(), offsets.tolist())):
            if os.preadv(self._fd(file), [buffer[i * row_bytes:(i + 1) * row_bytes]], offset) != row_bytes:
                raise IndexFormatError(f"{self.files[file]}: shorter than its header says")
        return out

    def _fd(self, i: int) -> int:
        fd = self._fds.get(i)
        if fd is None:
            with self._lock:  # searches may run in several threads (the app)
                if i not in self._fds:
                    self._fds[i] = os.open(self.files[i], os.O_RDONLY | os.O_CLOEXEC)
                fd = self._fds[i]
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()

    def __getitem__(self, item: slice) -> torch.Tensor:
        """A contiguous slice as a float16 tensor: what `exact_search_torch` reads its database through."""
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("ShardedVectors supports contiguous slices only")
        start, stop, _ = item.indices(len(self))
        return torch.from_numpy(self.rows(start, stop))


def _header(path: Path) -> tuple[int, int, int]:
    """(rows, width, offset of the data) of a float16 [n, D] .npy file, from its header."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read(f)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"{path}: not a readable vector file ({type(err).__name__}: {err})") from None
    if len(shape) != 2 or dtype != np.float16 or fortran_order:
        raise IndexFormatError(f"{path}: holds {dtype} {shape}, float16 [n, D] in C order expected")
    if size != offset + shape[0] * shape[1] * 2:
        raise IndexFormatError(f"{path}: {size:,} bytes, its header announces {offset + shape[0] * shape[1] * 2:,}")
    return int(shape[0]), int(shape[1]), offset


__all__ = ["ShardedVectors"]
