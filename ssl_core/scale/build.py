"""A sharded, resumable gallery build: list, plan shards, embed what is missing (Ray or this process), index, commit.

    report = build_sharded(["s3://bucket/photos/"], "photos.index", EncoderArgs("dinov2-vitb14"),
                           config=ShardedBuild(engine="ray", kind="auto"))
    print(report.summary())

The index folder (`ssl_core.search.storage`) gains ``shards/`` (`ssl_core.scale.shards`) and, while the index
stage runs, ``work/`` (`ssl_core.scale.ondisk`). The build holds the folder's writer lock from start to end. Killed
at any point and run again with the same sources and settings, it embeds only the shards not committed yet, reuses
the index stage's finished steps, and commits the same index an uninterrupted run commits; shards no longer
planned are deleted after the commit. ``kind="auto"`` makes an exact index up to
`ssl_core.search.vectors.AUTO_EXACT_LIMIT` vectors, IVF up to `AUTO_IVFPQ_LIMIT` and the on-disk IVF-PQ index
above (`ssl_core.search.ivfpq`).
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ssl_core.data.images import DEFAULT_MAX_PIXELS
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.scale.listing import list_sources
from ssl_core.scale.ondisk import commit_ivfpq, fill_local, in_memory_index
from ssl_core.scale.ray_engine import RayOptions, embed_shards_ray, fill_shards_ray, start_ray, stop_ray
from ssl_core.scale.shards import (
    Embedding,
    ShardPlan,
    ShardRecord,
    committed_or_none,
    plan_shards,
    read_shard,
    remove_partial,
    write_shard,
)
from ssl_core.scale.stages import EncoderArgs, decode_shard, embed_shard
from ssl_core.search.index_files import commit_locked
from ssl_core.search.storage import SHARDS_DIR, WORK_DIR, WriterLock, check_writable_target
from ssl_core.search.vectors import resolve_kind

ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 256  # images per shard (about: chunks are content-defined)
LOCK_WAIT_S = 5.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardedBuild:
    engine: str = "local"  # "local": this process; "ray": Ray Data tasks and actors
    kind: str = "auto"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 16
    device: str | None = None  # the local engine's device; with Ray, a CPU device keeps the actors off the GPUs
    ray: RayOptions = field(default_factory=RayOptions)  # (actors take a GPU each where the cluster has them)
    seed: int = 0

    def ray_options(self) -> RayOptions:
        """The Ray options, with GPUs for the actors only if ``device`` allows a GPU."""
        on_cpu = self.device is not None and torch.device(self.device).type != "cuda"
        return replace(self.ray, gpus=False) if on_cpu else self.ray


@dataclass
class BuildReport:
    files: int = 0  # image files listed
    shards: int = 0
    reused: int = 0  # shards committed by an earlier (possibly killed) run
    embedded: int = 0  # shards embedded by this run
    images: int = 0
    patches: int = 0
    failed: list[str] = field(default_factory=list)  # "path: reason"
    skipped: list[str] = field(default_factory=list)  # links not followed
    kind: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: list, embed, index

    def summary(self) -> str:
        parts = [f"{self.images} images ({self.patches:,} patches) in {self.shards} shards "
                 f"({self.embedded} embedded now, {self.reused} already there)"]
        if self.failed:
            parts.append(f"{len(self.failed)} skipped as unreadable")
        if self.skipped:
            parts.append(f"{len(self.skipped)} symlinks not followed")
        timing = ", ".join(f"{stage} {s:.1f} s" for stage, s in self.seconds.items())
        return ", ".join(parts) + (f"; {self.kind} index" if self.kind else "") + (f" ({timing})" if timing else "")


def build_sharded(sources: Sequence[str], out: str | Path, encoder_args: EncoderArgs, layer: int | None = None,
                  config: ShardedBuild = ShardedBuild(), log: Callable[[str], None] = logger.info) -> BuildReport:
    """Build (or finish building) the index of ``sources`` in ``out`` (see the module docstring)."""
    if config.engine not in ENGINES:
        raise BadRequest(f"--engine must be one of {', '.join(ENGINES)}, not {config.engine!r}")
    resolve_kind(config.kind, 0, on_disk=True)
    target = Path(out)
    check_writable_target(target)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(target, timeout=LOCK_WAIT_S)
    lock.acquire()
    started = False
    try:
        report = BuildReport()
        clock = time.monotonic()
        files, report.skipped = list_sources(sources)
        encoder = encoder_args.load("cpu" if config.engine == "ray" else config.device)
        resolved = None if layer is None else encoder.resolve_layers([layer])[0]
        embedding = Embedding(encoder.key, resolved, encoder.spec.image_size, DEFAULT_MAX_PIXELS)
        plans = plan_shards(files, embedding, config.shard_size)
        report.files, report.shards, report.seconds["list"] = len(files), len(plans), time.monotonic() - clock
        if config.engine == "ray":
            started = start_ray(config.ray)
        records = _embed_missing(target / SHARDS_DIR, plans, encoder, encoder_args, embedding, config, report, log)
        report.seconds["embed"] = time.monotonic() - clock - report.seconds["list"]
        if not report.patches:
            if created:
                shutil.rmtree(target, ignore_errors=True)
            return report
        _index(target, records, encoder, resolved, config, report)
        report.seconds["index"] = time.monotonic() - clock - report.seconds["list"] - report.seconds["embed"]
        _remove_unplanned(target, plans)
        return report
    finally:
        lock.release()
        stop_ray(started)


def _embed_missing(root: Path, plans: Sequence[ShardPlan], encoder: Encoder, encoder_args: EncoderArgs,
                   embedding: Embedding, config: ShardedBuild, report: BuildReport,
                   log: Callable[[str], None]) -> list[ShardRecord]:
    """Embed the planned shards not committed yet; the records of all of them, in plan order."""
    remove_partial(root)
    missing = [plan for plan in plans if committed_or_none(root, plan.name) is None]
    report.reused, report.embedded = len(plans) - len(missing), len(missing)
    log(f"{len(plans)} shards planned, {report.reused} already committed, {len(missing)} to embed")
    if config.engine == "ray":
        done = embed_shards_ray(missing, root, encoder_args, embedding, embedding.layer, config.batch_size,
                                config.ray_options(), encoder.policy)
        for i, shard in enumerate(done):
            log(f"shard {i + 1}/{len(missing)} committed: {shard.images} images, {shard.patches} patches")
    else:
        for i, plan in enumerate(missing):
            decoded = decode_shard(plan.paths, encoder.policy, embedding.max_pixels)
            write_shard(root, plan, embedding, embed_shard(encoder, decoded, embedding.layer, config.batch_size))
            log(f"shard {i + 1}/{len(missing)} committed")
    records = [read_shard(root, plan.name) for plan in plans]
    for record in records:
        report.images += len(record.images)
        report.patches += record.count
        report.failed += record.failed
    return records


def _index(target: Path, records: list[ShardRecord], encoder: Encoder, layer: int | None, config: ShardedBuild,
           report: BuildReport) -> None:
    """Make the index of the shards and commit it (the caller holds the lock)."""
    report.kind = resolve_kind(config.kind, report.patches, on_disk=True)
    if report.kind == "ivfpq":
        from ssl_core.search.patch_index import PatchIndex

        manifest = PatchIndex.create(encoder, layer, config.kind, device="cpu", sharded=True).manifest
        commit_ivfpq(target, manifest, records, fill_shards_ray if config.engine == "ray" else fill_local, config.seed)
    else:
        commit_locked(in_memory_index(encoder, layer, config.kind, records, target / SHARDS_DIR), target)
    shutil.rmtree(target / WORK_DIR, ignore_errors=True)


def _remove_unplanned(target: Path, plans: Sequence[ShardPlan]) -> None:
    """Delete shards of earlier builds that this build's plan does not name (the committed index does not use
    them)."""
    planned = {plan.name for plan in plans}
    for folder in (target / SHARDS_DIR).iterdir():
        if folder.is_dir() and folder.name not in planned:
            shutil.rmtree(folder, ignore_errors=True)


__all__ = ["build_sharded", "ShardedBuild", "BuildReport", "EncoderArgs", "RayOptions", "ENGINES",
           "DEFAULT_SHARD_SIZE"]
