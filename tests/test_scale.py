"""Sharded builds without Ray: listing sources, shard plans and commits, the on-disk IVF-PQ index, the local engine.

The Ray engine and the killed-and-resumed build are in test_scale_ray.py (slow).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from ssl_core.errors import BadRequest, IndexFormatError
from ssl_core.scale.build import EncoderArgs, ShardedBuild, build_sharded
from ssl_core.scale.listing import SourceFile, list_sources
from ssl_core.scale.shards import (
    TEMP_PREFIX,
    EmbeddedShard,
    Embedding,
    committed_or_none,
    plan_shards,
    read_shard,
    remove_partial,
    write_shard,
)
from ssl_core.search.index_files import load_index
from ssl_core.search.ivfpq import OnDiskVectorIndex, fill_shard, ivfpq_settings, merge_filled, train_ivfpq
from ssl_core.search.patch_index import PatchIndex
from ssl_core.search.records import IndexedImage
from ssl_core.search.sharded import ShardedVectors
from ssl_core.search.vectors import exact_search_torch, recall_at_k, resolve_kind
from ssl_core.search.verify import verify_index

EMBEDDING = Embedding("arch@fingerprint", None, 96, 64_000_000)


def make_gallery(folder, count: int = 12, seed: int = 100) -> list[str]:
    """``count`` small images of four sizes (PNG and JPEG) and two unreadable files; the good paths."""
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(count):
        h, w = [(64, 96), (80, 80), (72, 64), (96, 64)][i % 4]
        path = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(smooth_image(h, w, seed=seed + i)).save(path, quality=95)
        good.append(str(path.resolve()))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return good


def clustered(n: int, dim: int, seed: int, clusters: int = 30) -> np.ndarray:
    """Unit float16 vectors [n, dim] from a Gaussian mixture (fixed centres)."""
    centres = np.random.default_rng(7).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


# ------------------------------------------------------------------------------------------------- listing and plans
def test_sources_folders_globs_lists_and_urls_give_one_sorted_list(tmp_path):
    good = make_gallery(tmp_path / "g", count=4)
    (tmp_path / "list.txt").write_text(f"# two of them\ng/img00.jpg\n\n{good[1]}\n")
    pq.write_table(pa.table({"path": [good[2], good[3]]}), tmp_path / "list.parquet")
    by_folder, _ = list_sources([str(tmp_path / "g")])
    assert [f.path for f in by_folder] == sorted(good + [str((tmp_path / "g" / n).resolve())
                                                         for n in ("broken.jpg", "empty.png")])
    by_lists, _ = list_sources([str(tmp_path / "list.txt"), str(tmp_path / "list.parquet")])
    assert [f.path for f in by_lists] == sorted(good)
    by_glob, _ = list_sources([str(tmp_path / "g" / "*.png")])
    assert [f.path for f in by_glob] == sorted([p for p in good if p.endswith(".png")]
                                               + [str((tmp_path / "g" / "empty.png").resolve())])
    by_url, _ = list_sources([f"file://{tmp_path / 'g'}"])
    assert [f.path for f in by_url] == [f"file://{p}" for p in sorted(f.path for f in by_folder)]
    assert all(f.version.startswith(str(os.path.getsize(f.path))) for f in by_folder)
    merged, _ = list_sources([str(tmp_path / "g"), str(tmp_path / "list.txt")])
    assert merged == by_folder  # repeats removed
    with pytest.raises(BadRequest, match="matches no file"):
        list_sources([str(tmp_path / "nothing-*.jpg")])


def test_shard_names_follow_inputs_and_embedding_and_cuts_are_content_defined():
    files = [SourceFile(f"/gallery/img{i:03d}.jpg", f"{1000 + i}-1") for i in range(200)]
    plans = plan_shards(files, EMBEDDING, shard_size=8)
    assert [p for plan in plans for p in plan.paths] == [f.path for f in files]
    assert plan_shards(files, EMBEDDING, 8) == plans and 10 < len(plans) < 50  # deterministic, about 8 files each
    assert all(2 <= len(plan.paths) <= 16 for plan in plans[:-1])
    other = Embedding("arch@fingerprint", 3, 96, 64_000_000)
    assert not {p.name for p in plans} & {p.name for p in plan_shards(files, other, 8)}
    for extra in ("/gallery/img050b.jpg", "/gallery/img120b.jpg", "/gallery/img199b.jpg"):
        grown = plan_shards(sorted([*files, SourceFile(extra, "1-1")], key=lambda f: f.path), EMBEDDING, 8)
        assert len({p.name for p in plans} - {p.name for p in grown}) <= 2  # only around the new file
    changed = [*files[:-1], SourceFile(files[-1].path, "999-2")]  # the last file changed in place
    same = [a.name == b.name for a, b in zip(plans, plan_shards(changed, EMBEDDING, 8))]
    assert same == [True] * (len(plans) - 1) + [False]


def test_a_shard_commits_whole_and_leftovers_and_damage_are_cleaned(tmp_path):
    root = tmp_path / "shards"
    [plan] = plan_shards(list_sources([str(p) for p in make_gallery(tmp_path / "g", 2)])[0], EMBEDDING, 100)
    images = [IndexedImage(plan.paths[0], "h0", (2, 3), 0), IndexedImage(plan.paths[1], "h1", (1, 2), 6)]
    tokens = clustered(8, 16, seed=0)
    assert read_shard(root, plan.name) is None
    record = write_shard(root, plan, EMBEDDING, EmbeddedShard(images, tokens, ["x.jpg: the file is empty"]))
    assert read_shard(root, plan.name, contents=True) == record and record.count == 8
    np.testing.assert_array_equal(np.load(root / plan.name / "tokens.npy"), tokens)
    table = pq.read_table(root / plan.name / "patches.parquet").to_pydict()
    assert table["row"] == [0, 0, 0, 1, 1, 1, 0, 0] and table["col"] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert table["path"] == [plan.paths[0]] * 6 + [plan.paths[1]] * 2
    assert write_shard(root, plan, EMBEDDING, EmbeddedShard(images, tokens, [])) == record  # already committed
    (root / f"{TEMP_PREFIX}{plan.name}-dead").mkdir()
    assert remove_partial(root) == [f"{TEMP_PREFIX}{plan.name}-dead"]
    with open(root / plan.name / "tokens.npy", "ab") as f:
        f.write(b"extra")
    with pytest.raises(IndexFormatError, match="tokens.npy is damaged"):
        read_shard(root, plan.name)
    assert committed_or_none(root, plan.name) is None and not (root / plan.name).exists()


# ------------------------------------------------------------------------------------------------- IVF-PQ on disk
def test_ivfpq_on_disk_reaches_recall_and_reranked_scores_are_exact(tmp_path):
    shards = [tmp_path / f"v{i}.npy" for i in range(3)]
    for i, path in enumerate(shards):
        np.save(path, clustered(4000, 64, seed=i))
    vectors = ShardedVectors(shards)
    assert vectors.shape == (12000, 64)
    np.testing.assert_array_equal(vectors.take(np.array([11999, 0, 4000, 3999])),
                                  np.concatenate([np.load(s) for s in shards])[[11999, 0, 4000, 3999]])
    settings = ivfpq_settings(len(vectors), 64)
    train_ivfpq(vectors, settings, tmp_path / "trained.faiss")
    filled = [fill_shard(tmp_path / "trained.faiss", s, int(vectors.starts[i]), tmp_path / f"f{i}.faiss")
              for i, s in enumerate(shards)]
    (tmp_path / "gen").mkdir()
    merge_filled(tmp_path / "trained.faiss", filled, tmp_path / "gen")
    index = OnDiskVectorIndex.open(tmp_path / "gen", shards)
    index.tune()
    assert index.recall >= 0.95 and index.search_param < settings.nlist  # approximate: not every list scanned
    queries = clustered(200, 64, seed=9).astype(np.float32)
    true_scores, truth = exact_search_torch(vectors, torch.from_numpy(queries), 10)
    scores, ids = index.search(queries, 10)
    assert recall_at_k(ids, truth.numpy()) >= 0.95
    exact = (vectors.take(ids.ravel()).astype(np.float32).reshape(200, 10, 64) * queries[:, None]).sum(-1)
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # re-ranked: exact float16 scores
    assert (ids[:, 0] == truth.numpy()[:, 0]).mean() >= 0.97


def test_auto_kind_goes_on_disk_only_for_sharded_builds_past_the_limit():
    assert resolve_kind("auto", 3_000_000) == "ivf"
    assert resolve_kind("auto", 3_000_000, on_disk=True) == "ivfpq"
    assert resolve_kind("auto", 1_000_000, on_disk=True) == "ivf"
    with pytest.raises(BadRequest, match="built from shards"):
        resolve_kind("ivfpq", 10)


# ------------------------------------------------------------------------------------------------- the local engine
@pytest.fixture(scope="module")
def sup_encoder():
    from ssl_core import load_encoder

    return load_encoder("patchlens-sup", device="cpu", cache=None)


def test_local_sharded_ivfpq_build_matches_the_single_process_index(sup_encoder, tmp_path):
    good = make_gallery(tmp_path / "g")
    report = build_sharded([str(tmp_path / "g")], tmp_path / "idx", EncoderArgs("patchlens-sup"),
                           config=ShardedBuild(kind="ivfpq", shard_size=4, device="cpu"))
    assert report.images == 12 and report.embedded == report.shards > 1 and report.kind == "ivfpq"
    assert sorted(f.split(":")[0] for f in report.failed) == sorted(str((tmp_path / "g" / n).resolve())
                                                                   for n in ("broken.jpg", "empty.png"))
    on_disk = PatchIndex.load(tmp_path / "idx", device="cpu")
    reference, _ = PatchIndex.build([tmp_path / "g"], sup_encoder, kind="exact", device="cpu")
    assert on_disk.kind == "ivfpq" and len(on_disk) == len(reference)
    assert sorted(im.path for im in on_disk.images) == good
    query = on_disk.embed_query(sup_encoder, smooth_image(80, 96, seed=999))
    flat = query.vectors.reshape(-1, query.vectors.shape[-1])
    ours, theirs = on_disk.search_vectors(flat, 10), reference.search_vectors(flat, 10)
    # the same best patch for every query; two patches of one score (flat JPEG areas) count as the same
    top1 = [(a[0].image, a[0].row, a[0].col) == (b[0].image, b[0].row, b[0].col) or abs(a[0].score - b[0].score) < 1e-6
            for a, b in zip(ours, theirs)]
    assert all(top1), [(a[0], b[0]) for a, b, same in zip(ours, theirs, top1) if not same][:3]
    found = [{(h.image, h.row, h.col) for h in hits} for hits in ours]
    assert np.mean([len(f & {(h.image, h.row, h.col) for h in t}) / 10 for f, t in zip(found, theirs)]) >= 0.95
    again = build_sharded([str(tmp_path / "g")], tmp_path / "idx", EncoderArgs("patchlens-sup"),
                          config=ShardedBuild(kind="ivfpq", shard_size=4, device="cpu"))
    assert again.embedded == 0 and again.reused == report.shards  # nothing embedded twice
    assert verify_index(tmp_path / "idx").ok
    with pytest.raises(BadRequest, match="not added to in place"):
        on_disk.add([tmp_path / "g"], sup_encoder)


def test_big_files_are_size_checked_on_load_and_checksummed_by_verify(tmp_path):
    make_gallery(tmp_path / "g", count=8)
    build_sharded([str(tmp_path / "g")], tmp_path / "idx", EncoderArgs("random-tiny"),
                  config=ShardedBuild(kind="ivfpq", shard_size=4, device="cpu"))
    generation = tmp_path / "idx" / json.loads((tmp_path / "idx" / "CURRENT").read_text())["generation"]
    vectors = generation / "vectors-00000.npy"
    data = bytearray(vectors.read_bytes())
    data[-3] ^= 0xFF
    vectors.write_bytes(bytes(data))  # the same size, another byte: loading (sizes only) does not see it
    assert len(PatchIndex.load(tmp_path / "idx", device="cpu")) > 0
    with pytest.raises(IndexFormatError, match="vectors-00000.npy is damaged"):
        load_index(tmp_path / "idx", all_checksums=True)
    (generation / "lists.ivfdata").write_bytes(b"short")
    with pytest.raises(IndexFormatError, match="lists.ivfdata is damaged"):
        PatchIndex.load(tmp_path / "idx", device="cpu")


def test_urls_are_read_with_fsspec_and_indexed_by_url(tmp_path):
    make_gallery(tmp_path / "g", count=3)
    report = build_sharded([f"file://{tmp_path / 'g'}"], tmp_path / "idx", EncoderArgs("random-tiny"),
                           config=ShardedBuild(device="cpu"))
    assert report.images == 3 and len(report.failed) == 2 and report.kind == "exact"
    index = PatchIndex.load(tmp_path / "idx", device="cpu")
    assert all(im.path.startswith("file://") for im in index.images)
    assert index.processed_image(0).shape[2] == 3  # the gallery view reads a URL image back


def test_a_build_of_only_unreadable_files_writes_nothing(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    report = build_sharded([str(folder)], tmp_path / "idx", EncoderArgs("random-tiny"),
                           config=ShardedBuild(kind="ivfpq", device="cpu"))
    assert report.patches == 0 and len(report.failed) == 1 and not (tmp_path / "idx").exists()


def test_ray_actors_take_the_clusters_gpus_unless_the_device_says_cpu():
    """One GPU actor per GPU of the cluster; ``--device cpu`` (or a cluster without GPUs) gives CPU actors, half the
    CPUs unless told how many."""
    from ssl_core.scale.ray_engine import RayOptions, actor_pool

    with_gpus, cpus_only = {"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0}
    assert actor_pool(RayOptions(), with_gpus) == (2, {"num_gpus": 1, "num_cpus": 1})
    assert actor_pool(RayOptions(), cpus_only) == (8, {"num_cpus": 1})
    options = ShardedBuild(engine="ray", device="cpu", ray=RayOptions(actors=3, actor_cpus=2)).ray_options()
    assert actor_pool(options, with_gpus) == (3, {"num_cpus": 2})
    for device in (None, "cuda", "cuda:1"):
        assert actor_pool(ShardedBuild(engine="ray", device=device).ray_options(), with_gpus)[1]["num_gpus"] == 1
