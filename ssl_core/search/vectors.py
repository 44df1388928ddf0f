"""FAISS indexes over unit vectors (fp16 codes), exhaustive search in torch, recall measurement and tuning.

    built = make_vector_index(vectors, "auto")        # [N, D] unit rows -> VectorIndex (tuned when approximate)
    scores, ids = built.search(queries, k=10)           # [q, k] float32 cosines, [q, k] int64 ids (-1: none)

Policy:

* **Vectors.** Rows are unit vectors: inner product is cosine similarity. They are stored as float16 codes inside
  FAISS (``ScalarQuantizer.QT_fp16``) for every kind, which halves memory and disk against float32; scores differ
  from float32 by about 1e-4. Vectors can be read back (`VectorIndex.vectors`), so no second copy is kept.
* **Kinds.** ``exact``: a flat scan (``IndexScalarQuantizer``, the fp16 form of ``IndexFlatIP``; on this CPU it
  scans faster than float32 ``IndexFlatIP`` because the scan is memory-bound). ``ivf``: IVF with fp16 lists,
  ``2*sqrt(N)`` lists trained on a seeded sample. ``hnsw``: HNSW (M=32) over fp16 storage. ``auto``: exact up
  to `AUTO_EXACT_LIMIT` vectors, IVF above.
* **Tuning.** Approximate kinds are tuned at build time: ``nprobe`` / ``efSearch`` is the smallest power of two
  whose recall@10 against an exhaustive search reaches `RECALL_TARGET` plus a margin for sampling error, on a
  seeded sample of 200 stored vectors used as queries (each one's own entry left out).
* **GPU.** `DeviceSearch` searches exhaustively on a CUDA device (fp16; exact beats approximate there): FAISS's
  ``GpuIndexFlatIP`` when the installed FAISS has GPU support, else a chunked torch matmul + top-k
  (`exact_search_torch`, which also computes the ground truth for tuning on the CPU).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ssl_core.errors import BadRequest

logger = logging.getLogger(__name__)

KINDS = ("auto", "exact", "ivf", "hnsw", "ivfpq")
AUTO_EXACT_LIMIT = 200_000  # vectors; an exact scan of this many 384-d fp16 vectors takes ~15 ms per query on 2 cores
# vectors; past this a sharded build (`ssl_core.scale`) makes an on-disk IVF-PQ index (`ssl_core.search.ivfpq`):
# 2M 768-d vectors are 3 GB of float16, as much as an in-memory index should hold on a small machine
AUTO_IVFPQ_LIMIT = 2_000_000
RECALL_TARGET = 0.95
TUNE_MARGIN = 0.01  # tuning aims this far above the target: 200 sampled queries measure recall to about +-0.007
TUNE_QUERIES = 200
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


# --------------------------------------------------------------------------------------------------- exact search in torch
def exact_search_torch(database: torch.Tensor, queries: torch.Tensor, k: int, chunk_rows: int = 65_536,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exhaustive inner-product top-k, database in chunks.

    database: [N, D] any float dtype, any device; queries: [q, D]. Each chunk is cast to the queries' dtype and
    device (fp16 on a GPU, float32 on a CPU), so a float16 database on the CPU can be searched on a GPU.
    Returns (scores [q, k'] float32, ids [q, k'] int64), best first, k' = min(k, N).
    """
    q = queries.shape[0]
    best_scores = queries.new_empty((q, 0), dtype=torch.float32)
    best_ids = torch.empty((q, 0), dtype=torch.long, device=queries.device)
    for start in range(0, database.shape[0], chunk_rows):
        block = database[start:start + chunk_rows].to(device=queries.device, dtype=queries.dtype)  # [c, D]
        scores = (queries @ block.T).float()  # [q, c]
        top_scores, top_ids = scores.topk(min(k, scores.shape[1]), dim=1)
        merged_scores = torch.cat([best_scores, top_scores], 1)
        merged_ids = torch.cat([best_ids, top_ids + start], 1)
        best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
        best_ids = merged_ids.gather(1, order)
    return best_scores, best_ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` [q, k] (ids) that appears in the same row of ``found`` [q, k'] ."""
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) / max(len(t), 1) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


# --------------------------------------------------------------------------------------------------- FAISS indexes
def resolve_kind(kind: str, count: int, on_disk: bool = False) -> str:
    """The concrete index kind for a requested one ("auto" depends on the vector count, and on whether the build
    is sharded (``on_disk``): only a sharded build makes an ``ivfpq`` index, past `AUTO_IVFPQ_LIMIT`)."""
    if kind not in KINDS:
        raise BadRequest(f"index kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "ivfpq" and not on_disk:
        raise BadRequest("an ivfpq index is built from shards on disk: use `patchlens index build --engine ray` "
                         "(or --engine local --kind ivfpq)")
    if kind == "auto":
        if count <= AUTO_EXACT_LIMIT:
            return "exact"
        return "ivfpq" if on_disk and count > AUTO_IVFPQ_LIMIT else "ivf"
    return kind


def ivf_list_count(count: int) -> int:
    """Inverted lists for ``count`` vectors: 2*sqrt(N), with at least 39 training vectors per list."""
    return int(max(1, min(2 * np.sqrt(count), count // 39)))


@dataclass
class VectorIndex:
    """One FAISS index over unit vectors (fp16 codes) with the search setting it was tuned to."""

    index: object  # faiss.Index
    kind: str  # "exact" | "ivf" | "hnsw"
    search_param: int = 0  # nprobe (ivf) or efSearch (hnsw); 0 for exact
    recall: float | None = None  # recall@10 measured when tuned
    trained_count: int = 0  # vectors the index was trained (ivf) or built on

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search_parameters(self):
        import faiss

        if self.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.search_param)
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=self.search_param)
        return None

    def search(self, queries: np.ndarray, k: int, search_param: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries: [q, D] unit float32 -> (scores [q, k] float32, ids [q, k] int64; -1 where fewer results)."""
        if search_param is not None:
            return VectorIndex(self.index, self.kind, search_param).search(queries, k)
        params = self.search_parameters()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, k) if params is None else self.index.search(queries, k, params=params)

    def add(self, vectors: np.ndarray, chunk_rows: int = 65_536) -> None:
        for start in range(0, vectors.shape[0], chunk_rows):
            self.index.add(np.ascontiguousarray(vectors[start:start + chunk_rows], dtype=np.float32))

    def _direct_map(self) -> None:
        """IVF indexes need a map from ids to list entries before vectors can be read back."""
        import faiss

        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()

    def vector(self, i: int) -> np.ndarray:
        """One stored vector [D] float16."""
        self._direct_map()
        return self.index.reconstruct(int(i)).astype(np.float16)

    def vector_range(self, start: int, count: int) -> np.ndarray:
        """Stored vectors start .. start+count-1 [count, D] float16."""
        self._direct_map()
        return self.index.reconstruct_n(int(start), int(count)).astype(np.float16)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given row ids [n, D] float16."""
        self._direct_map()
        return self.index.reconstruct_batch(np.asarray(ids, np.int64)).astype(np.float16)

    def vectors(self, chunk_rows: int = 65_536) -> np.ndarray:
        """The stored vectors [N, D] float16 (decoded from the fp16 codes, exact)."""
        self._direct_map()
        out = np.empty((self.ntotal, self.dim), np.float16)
        for start in range(0, self.ntotal, chunk_rows):
            stop = min(start + chunk_rows, self.ntotal)
            out[start:stop] = self.index.reconstruct_n(start, stop - start)
        return out

    def tune(self, vectors: np.ndarray, target: float = RECALL_TARGET, k: int = 10, seed: int = 0) -> None:
        """Pick the smallest power-of-two nprobe/efSearch whose recall@k reaches ``target`` on a sample of ``vectors``.

        The sampled vectors are the queries; each one's own entry is left out of both the exhaustive and the
        approximate results (finding itself is trivial), so the recall is that of its other neighbours, as for a
        query that is not in the index.
        """
        if self.kind == "exact":
            self.recall = 1.0
            return
        sample = np.sort(np.random.default_rng(seed).choice(vectors.shape[0], min(TUNE_QUERIES, vectors.shape[0]), replace=False))
        queries = np.asarray(vectors[sample], dtype=np.float32)
        _, truth = exact_search_torch(torch.from_numpy(np.asarray(vectors)), torch.from_numpy(queries), k + 1)
        truth = without_own(truth.numpy(), sample, k)
        limit = faiss_ivf_lists(self.index) if self.kind == "ivf" else 1024
        candidates = [2**i for i in range(0, 11) if 2**i < limit] + [limit]
        if self.kind == "hnsw":  # stored vectors as queries flatter HNSW (their own node is in the graph): start at 32
            candidates = [c for c in candidates if c >= 32]
        for value in candidates:
            found = without_own(self.search(queries, k + 1, search_param=value)[1], sample, k)
            self.search_param, self.recall = value, recall_at_k(found, truth)
            if self.recall >= target + TUNE_MARGIN:
                break


def without_own(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Result rows ids [q, k+1] without each query's own id own[q], cut to k columns."""
    return np.array([[i for i in row if i != self_id][:k] for row, self_id in zip(ids.tolist(), own.tolist())])


def faiss_ivf_lists(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nlist)


def make_vector_index(vectors: np.ndarray, kind: str, seed: int = 0, recall_target: float = RECALL_TARGET) -> VectorIndex:
    """Build and tune a FAISS index of a concrete or "auto" kind over unit vectors [N, D] (float16 or float32)."""
    import faiss

    count, dim = vectors.shape
    kind = resolve_kind(kind, count)
    fp16 = faiss.ScalarQuantizer.QT_fp16
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "exact":
        index = faiss.IndexScalarQuantizer(dim, fp16, ip)
    elif kind == "ivf":
        nlist = ivf_list_count(count)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, fp16, ip, False)
        index.cp.niter = 10
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(count, min(count, 40 * nlist), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    else:
        index = faiss.IndexHNSWSQ(dim, fp16, HNSW_M, ip)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    built = VectorIndex(index, kind, trained_count=count)
    built.add(vectors)
    built.tune(vectors, target=recall_target, seed=seed)
    return built


# --------------------------------------------------------------------------------------------------- GPU search
FAISS_GPU_MAX_K = 2048  # the most neighbours FAISS's GPU k-selection returns


def faiss_has_gpu() -> bool:
    import faiss

    return "GPU" in faiss.get_compile_options() and faiss.get_num_gpus() > 0


_GPU_RESOURCES: dict[int, tuple[object, threading.RLock]] = {}  # GPU number -> (faiss.StandardGpuResources, lock)
_GPU_RESOURCES_LOCK = threading.Lock()


def faiss_gpu_resources(gpu: int) -> tuple[object, threading.RLock]:
    """The process's one FAISS `StandardGpuResources` for a GPU, and the lock every call through it takes (building,
    searching and freeing an index). It reserves a region of temporary GPU memory (up to about 1.5 GiB) that one call
    at a time may use, so FAISS advises indexes to share it: one per gallery index would reserve that much again for
    every session's gallery. It is kept for the life of the process, as torch keeps its cached memory."""
    with _GPU_RESOURCES_LOCK:
        if gpu not in _GPU_RESOURCES:
            import faiss

            _GPU_RESOURCES[gpu] = (faiss.StandardGpuResources(), threading.RLock())
        return _GPU_RESOURCES[gpu]


class DeviceSearch:
    """Exhaustive fp16 search on a CUDA device: FAISS's GPU flat index where FAISS has GPU support, else torch (also
    for a k over `FAISS_GPU_MAX_K`, e.g. a query that must skip its own image's thousands of patches). Not for two
    threads at once (its owner, `PatchIndex`, serialises); FAISS calls are also serialised per GPU, across indexes."""

    def __init__(self, vectors: np.ndarray, device: torch.device):
        self.device, self.vectors = device, vectors  # [N, D], until torch's search has its device copy
        self.gpu_index, self.faiss_lock = None, threading.RLock()
        self.database: torch.Tensor | None = None  # [N, D] fp16 on the device, for torch's search
        if faiss_has_gpu():
            import faiss

            config = faiss.GpuIndexFlatConfig()
            config.useFloat16 = True
            config.device = device.index or 0
            self.resources, self.faiss_lock = faiss_gpu_resources(config.device)
            with self.faiss_lock:
                self.gpu_index = faiss.GpuIndexFlatIP(self.resources, vectors.shape[1], config)
                VectorIndex(self.gpu_index, "exact").add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.gpu_index is not None and k <= FAISS_GPU_MAX_K:
            try:
                with self.faiss_lock:
                    return self.gpu_index.search(np.ascontiguousarray(queries, np.float32), k)
            except RuntimeError as err:  # FAISS's own GPU allocations failed (torch holds the memory): torch's search
                logger.warning("FAISS GPU search failed, searching with torch from now on: %s", err)
                self.release()
        if self.database is None:  # the host copy goes once the device holds one (10M x 768: 15 GB)
            self.database = torch.from_numpy(np.asarray(self.vectors, np.float16)).to(self.device)
            self.vectors = None
        scores, ids = exact_search_torch(self.database, torch.from_numpy(queries).to(self.device, torch.float16), k)
        return scores.cpu().numpy(), ids.cpu().numpy()

    def release(self) -> None:
        """Frees the FAISS GPU index under its GPU's lock: its memory goes back through the shared resources, which a
        search of another index may be using (a reentrant lock: the garbage collector may call this on a thread that
        holds it)."""
        with self.faiss_lock:
            self.gpu_index = None

    def __del__(self) -> None:
        if getattr(self, "gpu_index", None) is not None:
            self.release()


__all__ = ["VectorIndex", "make_vector_index", "exact_search_torch", "recall_at_k", "resolve_kind", "ivf_list_count",
           "without_own", "DeviceSearch", "faiss_has_gpu", "faiss_gpu_resources", "FAISS_GPU_MAX_K", "KINDS", "AUTO_EXACT_LIMIT", "AUTO_IVFPQ_LIMIT",
           "RECALL_TARGET", "HNSW_M"]
