"""The Ray engine on a local Ray of 2 CPUs: the same answers as the single-process index, and a build killed half-way
(SIGKILL) that resumes to the same index. Slow: each Ray start costs seconds; the module takes about a minute."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import smooth_image
from test_scale import make_gallery

from ssl_core.data.images import DEFAULT_MAX_PIXELS
from ssl_core.scale.build import EncoderArgs, RayOptions, ShardedBuild, build_sharded
from ssl_core.scale.listing import list_sources
from ssl_core.scale.shards import Embedding, plan_shards
from ssl_core.search.patch_index import PatchIndex

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SHARD_SIZE = 2
RAY_ARGS = ["--engine", "ray", "--num-cpus", "2", "--object-store-mb", "200"]


@pytest.fixture(scope="module")
def sup_encoder():
    from ssl_core import load_encoder

    return load_encoder("patchlens-sup", device="cpu", cache=None)


@pytest.fixture(scope="module")
def ray_built(tmp_path_factory):
    """A gallery of 12 good and 2 bad images, and its ivfpq index built on a local Ray (2 CPUs), uninterrupted."""
    root = tmp_path_factory.mktemp("ray")
    good = make_gallery(root / "gallery")
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False)
    try:
        report = build_sharded([str(root / "gallery")], root / "idx", EncoderArgs("patchlens-sup"),
                               config=ShardedBuild(engine="ray", kind="ivfpq", shard_size=SHARD_SIZE,
                                                   ray=RayOptions(num_cpus=2, object_store_mb=200)))
    finally:
        ray.shutdown()
    return root, good, report


def test_ray_build_answers_as_the_single_process_index(ray_built, sup_encoder):
    root, good, report = ray_built
    assert report.images == 12 and report.kind == "ivfpq" and report.embedded == report.shards > 2
    assert sorted(f.split(":")[0] for f in report.failed) == sorted(str((root / "gallery" / n).resolve())
                                                                   for n in ("broken.jpg", "empty.png"))
    shards = [d for d in (root / "idx" / "shards").iterdir()]
    assert len(shards) == report.shards
    assert sum(pq.read_metadata(d / "patches.parquet").num_rows for d in shards) == report.patches == sum(
        np.load(d / "tokens.npy", mmap_mode="r").shape[0] for d in shards)
    on_ray = PatchIndex.load(root / "idx", device="cpu")
    single, single_report = PatchIndex.build([root / "gallery"], sup_encoder, kind="exact", device="cpu")
    assert sorted(im.path for im in on_ray.images) == sorted(single_report.added) == good
    for seed in (999, 998):  # images that are not in the gallery: every one of their patches is a query
        query = on_ray.embed_query(sup_encoder, smooth_image(80, 96, seed=seed))
        flat = query.vectors.reshape(-1, query.vectors.shape[-1])
        ours, exact = on_ray.search_vectors(flat, 10), single.search_vectors(flat, 10)
        assert [(a[0].image, a[0].row, a[0].col) for a in ours] == [(b[0].image, b[0].row, b[0].col) for b in exact]
        recall = np.mean([len({(h.image, h.row, h.col) for h in a} & {(h.image, h.row, h.col) for h in b}) / 10
                          for a, b in zip(ours, exact)])
        assert recall >= 0.95


def _session_pids(sid: int) -> list[int]:
    import psutil

    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(process.pid) == sid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return alive


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the build's session (the driver, and the Ray processes it started), by pid."""
    deadline = time.monotonic() + 30
    while (pids := _session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    assert not _session_pids(sid)


def _committed(shards: Path) -> list[str]:
    if not shards.is_dir():
        return []
    return sorted(d.name for d in shards.iterdir() if not d.name.startswith(".") and (d / "shard.json").is_file())


def test_a_build_killed_half_way_resumes_to_the_same_index(ray_built, sup_encoder, tmp_path):
    root, _, _ = ray_built
    out = tmp_path / "idx"
    command = [sys.executable, "-m", "app.cli.gallery", "index", "build", str(root / "gallery"), "--model",
               "patchlens-sup", "--kind", "ivfpq", "--out", str(out), "--shard-size", str(SHARD_SIZE), *RAY_ARGS]
    embedding = Embedding(sup_encoder.key, None, sup_encoder.spec.image_size, DEFAULT_MAX_PIXELS)
    planned = plan_shards(list_sources([str(root / "gallery")])[0], embedding, SHARD_SIZE)
    first = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not _committed(out / "shards") and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_session(first.pid)
    first.wait()
    killed_with = _committed(out / "shards")
    assert first.returncode == -signal.SIGKILL and 1 <= len(killed_with) < len(planned)
    assert not (out / "CURRENT").exists()  # nothing committed: the index stage never ran

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"{len(planned)} shards planned, {len(killed_with)} already committed" in second.stderr
    resumed = PatchIndex.load(out, device="cpu").manifest
    uninterrupted = PatchIndex.load(root / "idx", device="cpu").manifest
    assert resumed.files == uninterrupted.files  # every data file, byte for byte (sizes and sha256)
    assert resumed.images == uninterrupted.images
    assert (resumed.search_param, resumed.rerank, resumed.recall, resumed.factory) == (
        uninterrupted.search_param, uninterrupted.rerank, uninterrupted.recall, uninterrupted.factory)
