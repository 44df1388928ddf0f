"""The patch index: exact and approximate search, files, refusals, atomic writes, incremental adds, gallery handlers."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from ssl_core.errors import IndexMismatch
from ssl_core.search import vectors as vectors_module
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.vectors import DeviceSearch, exact_search_torch, ivf_list_count, make_vector_index, recall_at_k


def mixture(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors from a Gaussian mixture (cluster structure, as patch embeddings have), float32 [n, dim]."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ database.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def make_gallery(root) -> tuple:
    """Three small images in a folder (one in a subfolder) and a file that is not an image."""
    folder = root / "gallery"
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, (h, w) in enumerate([(64, 96), (80, 80), (72, 64)]):
        path = folder / ("sub" if i == 2 else "") / f"img{i}.png"
        Image.fromarray(smooth_image(h, w, seed=10 + i)).save(path)
        paths.append(str(path.resolve()))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder, paths


@pytest.fixture
def gallery(tmp_path):
    return make_gallery(tmp_path)


@pytest.fixture(scope="module")
def built(tiny_encoder, tmp_path_factory):
    """The gallery and an index over it, built once for the tests that only read them."""
    folder, paths = make_gallery(tmp_path_factory.mktemp("built"))
    index, report = PatchIndex.build([folder], tiny_encoder)
    return folder, paths, index, report


def count_forwards(monkeypatch, encoder) -> list[int]:
    """Record how many images each forward pass of ``encoder`` runs on."""
    calls: list[int] = []
    original = encoder.forward_patch_tokens

    def counting(batch, *args, **kwargs):
        calls.append(int(batch.shape[0]))
        return original(batch, *args, **kwargs)
    monkeypatch.setattr(encoder, "forward_patch_tokens", counting)
    return calls


# ------------------------------------------------------------------------------------------------- vector search
def test_exact_index_equals_numpy_brute_force_top_k():
    database = mixture(2000, 48, 20, seed=0)
    queries = mixture(50, 48, 20, seed=1)
    exact = make_vector_index(database, "exact")
    assert exact.kind == "exact" and exact.recall == 1.0
    scores, ids = exact.search(queries, 10)
    stored = database.astype(np.float16).astype(np.float32)  # the index keeps fp16 codes
    true_scores, true_ids = brute_force(stored, queries, 10)
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(scores, true_scores, atol=1e-5)
    fp32_scores, fp32_ids = brute_force(database, queries, 10)  # and float32 gives the same answers
    np.testing.assert_allclose(scores, fp32_scores, atol=2e-3)
    assert recall_at_k(ids, fp32_ids) > 0.99
    np.testing.assert_allclose(exact.vectors(), database, atol=1e-3)  # stored as float16, read back


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_reaches_recall_095_on_new_queries(kind):
    database = mixture(4000, 64, 40, seed=0)
    queries = mixture(300, 64, 40, seed=5)  # not in the database: the tuning sample was
    approximate = make_vector_index(database, kind)
    assert approximate.kind == kind and approximate.recall >= 0.95
    if kind == "ivf":
        assert approximate.search_param < ivf_list_count(4000)  # really approximate: not every list is scanned
    _, truth = brute_force(database, queries, 10)
    _, found = approximate.search(queries, 10)
    assert recall_at_k(found, truth) >= 0.95


def test_torch_exact_search_in_chunks_matches_numpy():
    database = mixture(1000, 32, 10, seed=2)
    queries = mixture(7, 32, 10, seed=3)
    true_scores, true_ids = brute_force(database, queries, 5)
    scores, ids = exact_search_torch(torch.from_numpy(database), torch.from_numpy(queries), 5, chunk_rows=96)
    np.testing.assert_array_equal(ids.numpy(), true_ids)
    np.testing.assert_allclose(scores.numpy(), true_scores, atol=1e-5)
    # the GPU path's torch branch (fp16 database, fp16 matmul) run on CPU tensors
    scores16, ids16 = DeviceSearch(database.astype(np.float16), torch.device("cpu")).search(queries, 5)
    np.testing.assert_allclose(scores16, true_scores, atol=5e-3)
    assert recall_at_k(ids16, true_ids) > 0.9


def test_a_k_over_faiss_gpu_limit_is_searched_with_torch(monkeypatch):
    """FAISS's GPU index returns at most 2048 neighbours; a query that skips its own image's patches can ask more:
    that search goes to torch's, over all the vectors, instead of coming back short."""
    import ssl_core.search.vectors as vectors

    class GpuFlatIndex:  # what FAISS's GpuIndexFlatIP answers, with its limit on k
        def search(self, queries, k):
            assert k <= 2048, "FAISS GPU: k must be <= 2048"
            return brute_force(database, queries, k)

    database = mixture(3000, 16, 10, seed=4)
    queries = mixture(2, 16, 10, seed=5)
    monkeypatch.setattr(vectors, "faiss_has_gpu", lambda: False)
    search = DeviceSearch(database, torch.device("cpu"))
    search.gpu_index = GpuFlatIndex()
    assert search.search(queries, 10)[1].shape == (2, 10) and search.database is None  # FAISS's, up to its limit
    scores, ids = search.search(queries, 2500)
    _, true_ids = brute_force(database, queries, 2500)
    assert ids.shape == (2, 2500) and recall_at_k(ids, true_ids) > 0.99


def test_a_failing_faiss_gpu_search_falls_back_to_torch_for_good(monkeypatch):
    """FAISS allocates its own GPU memory; when torch's cache holds it all, FAISS raises a RuntimeError (not an
    out-of-memory error anyone retries): the search goes on with torch's, and stays there."""
    import ssl_core.search.vectors as vectors

    class StarvedGpuIndex:
        def search(self, queries, k):
            raise RuntimeError("Error in virtual void* faiss::gpu::StandardGpuResourcesImpl::allocMemory: cudaMalloc")

    database, queries = mixture(500, 16, 10, seed=6), mixture(3, 16, 10, seed=7)
    monkeypatch.setattr(vectors, "faiss_has_gpu", lambda: False)
    search = DeviceSearch(database, torch.device("cpu"))
    search.gpu_index = StarvedGpuIndex()
    _, ids = search.search(queries, 5)
    assert recall_at_k(ids, brute_force(database, queries, 5)[1]) > 0.9 and search.gpu_index is None


def test_gpu_indexes_share_one_faiss_resources_per_gpu_and_search_through_it_one_at_a_time(monkeypatch):
    """Each `StandardGpuResources` reserves up to 1.5 GiB of GPU memory that one call at a time may use: every gallery
    index on a GPU (one per session in the app) shares the GPU's one, and their FAISS calls take turns."""
    import threading
    import time
    import types

    import ssl_core.search.vectors as vectors

    inside, overlaps, resources_made = [], [], []
    database, queries = mixture(400, 16, 10, seed=8), mixture(2, 16, 10, seed=9)

    class GpuIndexFlatIP:  # FAISS's GPU flat index: add and search use the resources' temporary memory
        def __init__(self, resources, dim, config):
            self.resources, self.gpu, self.ntotal = resources, config.device, 0

        def _use_temporary_memory(self):
            overlaps.append(bool(inside))
            inside.append(1)
            time.sleep(0.02)
            inside.pop()

        def add(self, rows):
            self._use_temporary_memory()
            self.ntotal += len(rows)

        def search(self, rows, k):
            self._use_temporary_memory()
            return brute_force(database, rows, k)

        def __del__(self):  # freeing goes through the shared resources too
            self._use_temporary_memory()

    fake_faiss = types.SimpleNamespace(
        get_compile_options=lambda: "AVX2 GPU", get_num_gpus=lambda: 2, GpuIndexFlatConfig=types.SimpleNamespace,
        StandardGpuResources=lambda: resources_made.append(object()) or resources_made[-1], GpuIndexFlatIP=GpuIndexFlatIP)
    monkeypatch.setitem(sys.modules, "faiss", fake_faiss)
    monkeypatch.setattr(vectors, "_GPU_RESOURCES", {})
    searches = [DeviceSearch(database, torch.device("cuda:0")) for _ in range(3)]
    other_gpu = DeviceSearch(database, torch.device("cuda:1"))
    assert len(resources_made) == 2 and {id(s.resources) for s in searches} == {id(resources_made[0])}
    assert other_gpu.resources is resources_made[1] and other_gpu.gpu_index.gpu == 1
    overlaps.clear()
    threads = [threading.Thread(target=search.search, args=(queries, 5)) for search in searches[:2] * 3]
    threads.append(threading.Thread(target=searches[2].release))  # an index dropped while others search
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [False] * 7 and searches[2].gpu_index is None
    del searches[1]  # the garbage collector frees it under the lock as well
    assert overlaps == [False] * 8


def test_one_index_is_searched_on_the_gpu_by_one_thread_at_a_time(tiny_encoder, built, monkeypatch):
    """FAISS's GPU index is not safe to search from two threads at once (the app runs two views at a time, both of
    which may search a session's gallery): the index's device search is made once and entered by one thread."""
    import threading
    import time

    import ssl_core.search.patch_index as patch_index

    _, _, index, _ = built
    inside, overlaps, made = [], [], []

    class OneAtATime:
        def __init__(self, vectors, device):
            made.append(device)
            self.exact = make_vector_index(vectors.astype(np.float32), "exact")

        def search(self, queries, k):
            overlaps.append(bool(inside))
            inside.append(1)
            time.sleep(0.05)
            inside.pop()
            return self.exact.search(queries, k)

    monkeypatch.setattr(patch_index, "DeviceSearch", OneAtATime)
    monkeypatch.setattr(index, "device", torch.device("cuda"))  # as with a GPU (none here); the fixture is shared
    monkeypatch.setattr(index, "_device_search", None)
    query = index.vectors()[:1].astype(np.float32)
    threads = [threading.Thread(target=index.search_vectors, args=(query, 3)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and overlaps == [False] * 4


# ------------------------------------------------------------------------------------------------- gallery index
def test_build_search_save_load(tiny_encoder, built, tmp_path):
    folder, paths, index, report = built
    assert sorted(report.added) == sorted(paths) and len(report.failed) == 1 and "broken.jpg" in report.failed[0]
    assert [im.path for im in index.images] == sorted(paths)
    grids = [tiny_encoder.extract([p])[0] for p in sorted(paths)]
    assert len(index) == sum(f.grid_hw[0] * f.grid_hw[1] for f in grids) and index.kind == "exact"

    query = index.embed_query(tiny_encoder, paths[1])
    assert query.image_index == sorted(paths).index(paths[1])
    hits = index.search_patch(query, 4, 5, k=10)
    assert (hits[0].image, hits[0].row, hits[0].col) == (paths[1], 4, 5) and hits[0].score == pytest.approx(1, abs=1e-3)
    # the true top-10 by brute force over independently extracted float32 tokens
    tokens = np.concatenate([f.patch_tokens.reshape(-1, f.patch_tokens.shape[-1]).numpy() for f in grids])
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    q = grids[query.image_index].patch_tokens[4, 5].numpy()
    true_scores, true_ids = brute_force(tokens, (q / np.linalg.norm(q))[None], 10)
    np.testing.assert_allclose([h.score for h in hits], true_scores[0], atol=2e-3)
    assert all(abs(tokens[h.vector_id] @ q / np.linalg.norm(q) - h.score) < 2e-3 for h in hits)
    first = index.images[hits[3].image_index].first
    w = index.images[hits[3].image_index].grid_hw[1]
    assert hits[3].vector_id == first + hits[3].row * w + hits[3].col  # metadata points at the right patch
    others = index.search_patch(query, 4, 5, k=10, exclude_query_image=True)
    assert len(others) == 10 and all(h.image != paths[1] for h in others)

    saved = index.save(tmp_path / "idx")
    assert {p.name for p in saved.iterdir()} == {"CURRENT", "gen-000001", ".lock"}
    generation = saved / json.loads((saved / "CURRENT").read_text())["generation"]
    assert {p.name for p in generation.iterdir()} == {"index.faiss", "patches.npz", "manifest.json"}
    manifest = json.loads((generation / "manifest.json").read_text())
    assert manifest["model_key"] == tiny_encoder.key and manifest["layer"] is None and manifest["count"] == len(index)
    assert manifest["dim"] == 192 and manifest["format_version"] == 2 and len(manifest["images"][0]["hash"]) == 24
    assert (generation / "index.faiss").stat().st_size < len(index) * 192 * 2 + 4096  # fp16 codes: 2 bytes a value
    loaded = PatchIndex.load(saved)
    assert loaded.manifest == index.manifest
    np.testing.assert_array_equal(loaded.vectors(), index.vectors())
    assert loaded.search_patch(loaded.embed_query(tiny_encoder, paths[1]), 4, 5, k=10) == hits


def test_image_and_region_search(tiny_encoder, built):
    folder, paths, index, _ = built
    query = index.embed_query(tiny_encoder, paths[0])
    ranked = index.search_image(query, k=3, per_patch=4)
    assert ranked[0].image == paths[0] and ranked[0].votes == query.grid_hw[0] * query.grid_hw[1]
    assert paths[0] not in [r.image for r in index.search_image(query, k=3, per_patch=4, exclude_query_image=True)]
    one_cell = index.search_region(query, [(2, 3)], k=5)
    assert one_cell == index.search_patch(query, 2, 3, k=5)
    mask = np.zeros(query.grid_hw, bool)
    mask[1:3, 1:3] = True
    mean = query.vectors[1:3, 1:3].reshape(4, -1).mean(0)
    region = index.search_region(query, mask, k=5)
    expected = index.search_vectors((mean / np.linalg.norm(mean))[None], k=5)[0]
    assert [h.vector_id for h in region] == [h.vector_id for h in expected]
    np.testing.assert_allclose([h.score for h in region], [h.score for h in expected], atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        index.search_patch(query, 99, 0)


def test_query_with_another_model_layer_or_size_is_refused(tiny_encoder, gallery, tmp_path):
    from safetensors.torch import save_file

    from ssl_core import load_encoder

    folder, paths = gallery
    index, _ = PatchIndex.build(paths[:1], tiny_encoder, layer=3)
    index.save(tmp_path / "idx")
    index = PatchIndex.load(tmp_path / "idx")
    assert index.layer == 3 and index.search_patch(index.embed_query(tiny_encoder, paths[0]), 0, 0, k=1)[0].score > 0.99
    with pytest.raises(IndexMismatch, match="built with random-tiny .* at block 3.*the query uses final normed tokens"):
        index.embed_query(tiny_encoder, paths[0], layer=None)
    weights = tmp_path / "other.safetensors"
    save_file({k: v + 0.01 for k, v in tiny_encoder.model.state_dict().items()}, str(weights))
    other = load_encoder("random-tiny", weights=weights, device="cpu", cache=None)
    with pytest.raises(IndexMismatch, match="the query uses other weights for random-tiny: fingerprint "
                       f"{other.fingerprint}, the index's {tiny_encoder.fingerprint}"):
        index.embed_query(other, paths[0])
    with pytest.raises(IndexMismatch, match="images at 64 px"):
        index.embed_query(load_encoder("random-tiny", device="cpu", image_size=64, cache=None), paths[0])
    with pytest.raises(IndexMismatch):
        index.add([paths[0]], other)


def test_interrupted_write_leaves_the_previous_index_loadable(tiny_encoder, gallery, tmp_path, monkeypatch):
    folder, paths = gallery
    index, _ = PatchIndex.build(paths[:1], tiny_encoder)
    target = index.save(tmp_path / "idx")
    before = len(index)
    index.add([paths[1]], tiny_encoder)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut while writing")
    monkeypatch.setattr(np, "savez", crash)  # index.faiss is written, then the metadata write dies
    with pytest.raises(KeyboardInterrupt):
        index.save(target)
    monkeypatch.undo()
    assert len(PatchIndex.load(target)) == before
    assert sorted(p.name for p in target.iterdir()) == [".lock", "CURRENT", "gen-000001"]  # the next open cleaned up
    index.save(target)
    assert len(PatchIndex.load(target)) == len(index) > before
    assert sorted(p.name for p in target.iterdir()) == [".lock", "CURRENT", "gen-000002"]


def test_incremental_add_embeds_only_new_or_changed_files(tiny_encoder, gallery, tmp_path, monkeypatch):
    folder, paths = gallery
    forwards = count_forwards(monkeypatch, tiny_encoder)
    index, _ = PatchIndex.build(paths[:2], tiny_encoder)
    assert sum(forwards) == 2
    index.save(tmp_path / "idx")
    index = PatchIndex.load(tmp_path / "idx")
    progress = []
    report = index.add([folder], tiny_encoder, progress=lambda done, total: progress.append((done, total)))
    assert sum(forwards) == 3 and report.added == [paths[2]] and sorted(report.unchanged) == sorted(paths[:2])
    assert progress[-1] == (2, 2)  # the new image and the unreadable file
    assert report.rebuilt is False and len(index.images) == 3
    assert index.add([folder], tiny_encoder).added == [] and sum(forwards) == 3  # nothing new: no forward pass

    Image.fromarray(smooth_image(64, 64, seed=99)).save(paths[0])  # content changed (and grid)
    report = index.add([paths[0]], tiny_encoder)
    assert sum(forwards) == 4 and report.replaced == [paths[0]] and report.rebuilt
    assert len(index) == sum(im.count for im in index.images) and len(index.images) == 3
    query = index.embed_query(tiny_encoder, paths[0])
    top = index.search_patch(query, 7, 7, k=1)[0]
    assert (top.image, top.row, top.col) == (paths[0], 7, 7) and top.score == pytest.approx(1, abs=1e-3)


def test_auto_kind_becomes_approximate_above_the_limit(tiny_encoder, gallery, monkeypatch):
    folder, paths = gallery
    index, _ = PatchIndex.build(paths[:1], tiny_encoder)
    assert index.kind == "exact"
    monkeypatch.setattr(vectors_module, "AUTO_EXACT_LIMIT", 200)
    report = index.add(paths[1:], tiny_encoder)
    assert report.rebuilt and index.kind == "ivf" and index.manifest.recall >= 0.95
    query = index.embed_query(tiny_encoder, paths[2])
    assert index.search_patch(query, 1, 1, k=1)[0].image == paths[2]


# ------------------------------------------------------------------------------------------------- gallery handlers
def test_search_click_shows_crops_and_the_source(tiny_encoder, built, tmp_path):
    from app.views import gallery as handlers_gallery
    from app.views import result as handlers

    folder, paths, index, _ = built
    index.save(tmp_path / "idx")
    built_again = handlers_gallery.build_index(tiny_encoder, [str(folder)], directory=str(tmp_path / "idx"))
    again, info = built_again.state, built_again.markdown
    assert "3 already indexed" in info and "broken.jpg" in info and len(again) == len(index)
    [features] = tiny_encoder.extract([paths[1]])
    step = features.patch_size * handlers.display_factor(features)
    click = handlers.Click(5 * step + 1, 2 * step + 1, handlers.display_hw(features))
    view = handlers_gallery.search_click(index, tiny_encoder, paths[1], click, k=4)
    hits, query, gallery = view.state, view.pictures["query"], view.galleries["hits"]
    assert len(gallery) == 4 and all(h.image != paths[1] for h in hits)  # the query image left out
    assert query.shape == handlers.to_display(features, features.image).shape
    assert (query[2 * step, 5 * step + 3] == handlers_gallery.BOX_COLOUR).all()  # the clicked patch is boxed
    crop, caption = gallery[0]
    assert crop.ndim == 3 and f"{hits[0].score:.3f}" in caption
    assert view.pictures["source"].shape[0] >= handlers.DISPLAY_MIN_SIDE


def test_an_in_memory_copy_of_an_indexed_image_is_recognised_and_left_out(tiny_encoder, tmp_path):
    from conftest import smooth_image
    from PIL import Image

    from ssl_core.search.patch_index import PatchIndex
    paths = []
    for i in range(3):
        path = tmp_path / f"g{i}.png"
        Image.fromarray(smooth_image(96, 96 + 16 * i, seed=20 + i)).save(path)
        paths.append(str(path))
    index, _ = PatchIndex.build(paths, tiny_encoder)
    query = index.embed_query(tiny_encoder, Image.open(paths[1]).convert("RGB"))  # not a path: pixels only
    assert query.image_index == 1
    hits = index.search_patch(query, 2, 3, k=5, exclude_query_image=True)
    assert all(hit.image_index != 1 for hit in hits)
    other = index.embed_query(tiny_encoder, Image.fromarray(smooth_image(96, 96, seed=99)))
    assert other.image_index is None
    # a GPU embeds the gallery in batches and the query alone, in bfloat16: the copy's tokens drift a little
    rng = np.random.default_rng(0)
    noise = rng.normal(size=query.vectors.shape).astype(np.float32) * 0.1 / np.sqrt(query.vectors.shape[-1])
    drifted = query.vectors + noise
    drifted /= np.linalg.norm(drifted, axis=-1, keepdims=True)
    assert 0.99 < float((drifted * query.vectors).sum(-1).min()) < 0.999
    assert index._find_indexed(drifted) == 1
