"""An index that does not hold the vectors in memory: FAISS IVF-PQ over float16 vector shards, on disk.

    settings = ivfpq_settings(count, dim)                      # lists, PQ code size, OPQ (see the function)
    train_ivfpq(vectors, settings, work / "trained.faiss")     # on a seeded sample of the ShardedVectors
    fill_shard(work / "trained.faiss", shard_file, first_id, work / "filled-0.faiss")  # one per shard, in parallel
    merge_filled(work / "trained.faiss", filled_files, generation_folder)             # index.faiss + lists.ivfdata
    index = OnDiskVectorIndex.open(generation_folder, vector_files, nprobe, rerank)
    scores, ids = index.search(queries, k=10)                  # PQ candidates, re-ranked exactly

How it searches: the optional OPQ rotation, the coarse quantizer (``nlist`` centroids) and the PQ codebooks are
small and read into memory; the inverted lists (``lists.ivfdata``: per vector a PQ code of ``m`` bytes and an
8-byte id) are memory-mapped, and a query touches only the ``nprobe`` lists it scans. The ``rerank`` best
candidates by PQ score are then scored exactly against their float16 vectors, read row by row from the shards
(`ShardedVectors`: one ``pread`` per row, not a mapping, which keeps the resident set to the rows read), so the
hits and their scores are those of an exact search whenever the true neighbours are among the candidates.
``nprobe`` and ``rerank`` are tuned at build time like the in-memory kinds (`ssl_core.search.vectors`; see
`OnDiskVectorIndex.tune`).

Files are read with ``IO_FLAG_SKIP_IVF_DATA | IO_FLAG_READ_ONLY`` and the lists mapped by hand from the folder the
index is in: what ``IO_FLAG_ONDISK_SAME_DIR`` does, without the line FAISS prints on standard output (which
would break ``patchlens index search --json``).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ssl_core.errors import BadRequest, IndexFormatError
from ssl_core.search.records import INDEX_FILE, LISTS_FILE
from ssl_core.search.sharded import ShardedVectors
from ssl_core.search.vectors import (
    RECALL_TARGET,
    TUNE_MARGIN,
    TUNE_QUERIES,
    exact_search_torch,
    recall_at_k,
    without_own,
)

TRAIN_PER_LIST = 39  # FAISS's minimum training points per centroid
MAX_TRAIN = 200_000  # training sample cap: 200k x 768 float32 is 600 MB
PQ_SUBDIM = 8  # dimensions per PQ sub-quantizer
OPQ_DIM = 256  # width after the OPQ rotation, when OPQ is asked for
RERANK_CHOICES = (16, 32, 64, 128, 256, 512)  # candidates per query re-ranked exactly, tried in this order
CHUNK_ROWS = 65_536
TOP1_TARGET = 0.995  # tuning: the best hit must be the true nearest neighbour for all but 1 in 200 sampled queries
# tuning: the nprobe found on stored vectors is doubled. Stored vectors as queries flatter IVF (each lies in the
# list it probes first, with most of its neighbours); new queries fall near list boundaries more often.
NPROBE_SAFETY = 2
NOT_IN_PLACE = ("an on-disk ivfpq index is not added to in place: run `patchlens index build` again with all the "
                "sources and the same --out (committed shards are reused: only new images are embedded)")


@dataclass(frozen=True)
class IVFPQSettings:
    nlist: int  # inverted lists (coarse centroids)
    m: int  # PQ sub-quantizers: code bytes per vector at 8 bits
    nbits: int  # bits per sub-quantizer code
    opq_dim: int  # width after the OPQ rotation; 0: no OPQ
    train_size: int  # vectors sampled for training

    def factory(self) -> str:
        pq = f"PQ{self.m}" if self.nbits == 8 else f"PQ{self.m}x{self.nbits}"
        opq = f"OPQ{self.m}_{self.opq_dim}," if self.opq_dim else ""
        return f"{opq}IVF{self.nlist},{pq}"

    def bytes_per_vector(self) -> int:
        """What each vector costs in the inverted lists: its code and its 8-byte id."""
        return math.ceil(self.m * self.nbits / 8) + 8


def ivfpq_settings(count: int, dim: int, opq: bool | None = None) -> IVFPQSettings:
    """Settings for ``count`` vectors of width ``dim`` (measured on 768-d vectors: docs/scale.md).

    ``nlist``: the power of two nearest sqrt(N)/2, with at least `TRAIN_PER_LIST` training vectors per list (2048
    at 10M). Assigning a vector to its list costs nlist x D multiply-adds, the largest part of filling the index,
    so lists are kept fewer than FAISS's usual 4 sqrt(N); queries scan longer lists instead, which the memory-
    mapped codes allow. PQ: sub-vectors of `PQ_SUBDIM` dimensions (96 bytes per 768-d vector), 8-bit codes once
    there are enough vectors to train 256 centroids per sub-quantizer (fewer bits below). With 8-d sub-vectors
    the candidates are good enough that exact re-ranking of 128 of them reaches recall@10 0.99, so OPQ (a learnt
    rotation, ``opq=True``, reducing to `OPQ_DIM`) is off by default: its training took minutes per 10k vectors
    on 2 cores and bought nothing the re-ranking does not.
    """
    if count < 1 or dim < PQ_SUBDIM:
        raise BadRequest(f"an IVF-PQ index needs vectors of width {PQ_SUBDIM} or more, not {count} of width {dim}")
    cap = max(1, count // TRAIN_PER_LIST)
    nlist = min(2 ** max(0, round(math.log2(math.sqrt(count) / 2))), 2 ** int(math.log2(cap)))
    pq_dim = min(dim, OPQ_DIM) if opq else dim
    m = max(d for d in range(1, pq_dim // PQ_SUBDIM + 1) if pq_dim % d == 0)
    nbits = int(min(8, max(4, math.floor(math.log2(cap)))))
    train = min(count, MAX_TRAIN, max(TRAIN_PER_LIST * nlist, TRAIN_PER_LIST * 2 ** nbits))
    return IVFPQSettings(nlist, m, nbits, pq_dim if opq else 0, train)


# --------------------------------------------------------------------------------------------------- building
def train_ivfpq(vectors: ShardedVectors, settings: IVFPQSettings, out: Path, seed: int = 0) -> None:
    """Train an empty IVF-PQ index on a seeded sample of ``vectors`` and write it to ``out`` (atomically)."""
    import faiss

    index = faiss.index_factory(vectors.dim, settings.factory(), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # IndexIVFPQ
    ivf.cp.niter, ivf.cp.seed = 10, seed
    ivf.pq.cp.seed, ivf.pq.cp.niter = seed, 10  # codes only pick candidates: re-ranking makes scores exact
    ivf.do_polysemous_training = False  # the factory turns it on; it costs minutes and serves Hamming filtering only
    sample = np.sort(np.random.default_rng(seed).choice(len(vectors), settings.train_size, replace=False))
    index.train(vectors.take(sample).astype(np.float32))
    _write_atomically(index, out)


def fill_shard(trained: Path, shard: Path, first_id: int, out: Path) -> Path:
    """Encode one shard's vectors (ids first_id ...) into a copy of the trained index, written to ``out``."""
    import faiss

    index = faiss.read_index(str(trained))
    vectors = ShardedVectors([shard])
    for start in range(0, len(vectors), CHUNK_ROWS):
        block = vectors.rows(start, start + CHUNK_ROWS).astype(np.float32)  # [c, D]
        index.add_with_ids(block, np.arange(first_id + start, first_id + start + len(block), dtype=np.int64))
    _write_atomically(index, out)
    return out


def merge_filled(trained: Path, filled: Sequence[Path], folder: Path) -> None:
    """Merge filled shard indexes into on-disk inverted lists: ``folder/lists.ivfdata`` and ``folder/index.faiss``."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.read_index(str(trained))
    with c_stdout_to_stderr():  # OnDiskInvertedLists prints "resizing ..." on standard output
        merge_ondisk(index, [str(f) for f in filled], str(folder / LISTS_FILE))
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    lists.filename = LISTS_FILE  # stored without a folder: `read_ondisk` maps the file next to index.faiss
    faiss.write_index(index, str(folder / INDEX_FILE))


def _write_atomically(index, out: Path) -> None:
    import faiss

    temp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    faiss.write_index(index, str(temp))
    os.replace(temp, out)


@contextlib.contextmanager
def c_stdout_to_stderr() -> Iterator[None]:
    """Send what C code prints on standard output to standard error meanwhile."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def read_ondisk(folder: Path):
    """The index of a folder with its inverted lists memory-mapped read-only (see the module docstring)."""
    import faiss

    try:
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    except RuntimeError as err:
        reason = str(err).splitlines()[0][:200]
        raise IndexFormatError(f"{folder / INDEX_FILE}: FAISS cannot read it ({reason})") from None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise IndexFormatError(f"{folder / INDEX_FILE}: not an IVF index with on-disk inverted lists")
    lists.filename = str(folder / LISTS_FILE)
    lists.prefetch_nthread = 0  # no prefetch threads per query: the page cache does that work
    lists.do_mmap()
    return index


# --------------------------------------------------------------------------------------------------- searching
def rerank_exact(vectors: ShardedVectors, queries: np.ndarray, candidates: np.ndarray, k: int, block: int = 64,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate ids [q, R] (-1: none) for unit queries [q, D]: the best k, (scores [q, k]
    float32, ids [q, k] int64), best first, ties by id; -inf and -1 where fewer than k candidates."""
    q, depth = candidates.shape
    scores_out = np.full((q, k), -np.inf, np.float32)
    ids_out = np.full((q, k), -1, np.int64)
    for start in range(0, q, block):
        cand = candidates[start:start + block]  # [b, R]
        valid = cand >= 0
        unique = np.unique(cand[valid])  # [u]
        if unique.size == 0:
            continue
        rows = vectors.take(unique).astype(np.float32)  # [u, D]
        table = rows @ queries[start:start + block].T  # [u, b]
        pos = np.searchsorted(unique, np.where(valid, cand, unique[0]))  # [b, R]
        scores = np.where(valid, table[pos, np.arange(len(cand))[:, None]], -np.inf)  # [b, R]
        order = np.lexsort((cand, -scores), axis=-1)[:, :k]  # best score first, then lower id
        width = order.shape[1]
        picked = np.take_along_axis(scores, order, 1)
        scores_out[start:start + len(cand), :width] = picked
        ids_out[start:start + len(cand), :width] = np.where(np.isfinite(picked), np.take_along_axis(cand, order, 1), -1)
    return scores_out, ids_out


@dataclass
class OnDiskVectorIndex:
    """An IVF-PQ index with memory-mapped lists and float16 vectors for exact re-ranking (see the module docstring)."""

    index: object  # faiss.Index (IndexIVFPQ, or IndexPreTransform over one with OPQ)
    store: ShardedVectors  # the float16 vectors, read row by row
    search_param: int = 1  # nprobe
    rerank: int = RERANK_CHOICES[-1]
    recall: float | None = None
    trained_count: int = 0
    kind: str = "ivfpq"

    @classmethod
    def open(cls, folder: Path, vector_files: Sequence[Path], nprobe: int = 1, rerank: int = RERANK_CHOICES[-1],
             recall: float | None = None, trained_count: int = 0) -> "OnDiskVectorIndex":
        return cls(read_ondisk(folder), ShardedVectors(vector_files), nprobe, rerank, recall, trained_count)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int:
        import faiss

        return int(faiss.extract_index_ivf(self.index).nlist)

    def candidates(self, queries: np.ndarray, depth: int, nprobe: int) -> np.ndarray:
        """The ``depth`` best ids by PQ score [q, depth] (-1: none) for unit float32 queries [q, D]."""
        import faiss

        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        if isinstance(self.index, faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = params
            params, outer.keep = outer, params  # `keep`: the inner parameters live as long as the outer ones
        return self.index.search(queries, int(min(depth, self.ntotal)), params=params)[1]

    def search(self, queries: np.ndarray, k: int, search_param: int | None = None, rerank: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """queries: [q, D] unit float32 -> (scores [q, k] float32 exact cosines, ids [q, k] int64; -1: none)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        depth = max(int(k), rerank or self.rerank)
        found = self.candidates(queries, depth, search_param or self.search_param)
        return rerank_exact(self.store, queries, found, int(k))

    def tune(self, target: float = RECALL_TARGET, k: int = 10, seed: int = 0) -> None:
        """Tune nprobe and rerank on stored vectors used as queries (each one's own entry left out, as in
        `ssl_core.search.vectors.VectorIndex.tune`): the smallest nprobe at which recall@k reaches ``target`` plus
        `TUNE_MARGIN` and the best hit is right for `TOP1_TARGET` of the queries, times `NPROBE_SAFETY`; then the
        smallest rerank that keeps both at that nprobe."""
        n = self.ntotal
        sample = np.sort(np.random.default_rng(seed).choice(n, min(TUNE_QUERIES, n), replace=False))
        queries = self.store.take(sample).astype(np.float32)  # [s, D]
        _, truth = exact_search_torch(self.store, torch.from_numpy(queries), k + 1)
        truth = without_own(truth.numpy(), sample, k)

        def quality(nprobe: int, depths: Sequence[int]) -> Iterator[tuple[int, float, bool]]:
            found = self.candidates(queries, depths[-1], nprobe)
            for rerank in depths:
                ids = without_own(rerank_exact(self.store, queries, found[:, :rerank], k + 1)[1], sample, k)
                recall, top1 = recall_at_k(ids, truth), float(np.mean(ids[:, 0] == truth[:, 0]))
                yield rerank, recall, recall >= target + TUNE_MARGIN and top1 >= TOP1_TARGET

        probes = [2**i for i in range(int(math.log2(self.nlist)) + 1) if 2**i < self.nlist] + [self.nlist]
        nprobe = next((p for p in probes if next(quality(p, RERANK_CHOICES[-1:]))[2]), self.nlist)
        self.search_param = min(self.nlist, NPROBE_SAFETY * nprobe)
        depths = [r for r in RERANK_CHOICES if r > k]
        for rerank, recall, good in quality(self.search_param, depths):
            self.rerank, self.recall = rerank, recall
            if good:
                return

    # ----------------------------------------------------------------------------------------- reading back
    def vector(self, i: int) -> np.ndarray:
        return self.store.rows(i, i + 1)[0]

    def vector_range(self, start: int, count: int) -> np.ndarray:
        return self.store.rows(start, start + count)

    def vectors(self) -> np.ndarray:
        """All vectors [N, D] float16, read into memory: for small indexes (`take` reads a sample)."""
        return self.store.rows(0, self.ntotal)

    def take(self, ids: np.ndarray) -> np.ndarray:
        return self.store.take(ids)

    def add(self, vectors: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> None:
        raise BadRequest(NOT_IN_PLACE)


__all__ = ["IVFPQSettings", "ivfpq_settings", "train_ivfpq", "fill_shard", "merge_filled", "read_ondisk",
           "rerank_exact", "OnDiskVectorIndex", "c_stdout_to_stderr", "RERANK_CHOICES", "PQ_SUBDIM", "NOT_IN_PLACE"]
