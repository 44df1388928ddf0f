"""The Ray engine of a sharded build: Ray Data decodes shards in tasks and embeds them in a pool of encoder actors.

    started = start_ray(RayOptions(address=None, num_cpus=2))          # a local Ray, or the cluster at ``address``
    for done in embed_shards_ray(plans, root, EncoderArgs("dinov2-vitb14"), embedding, layer, 32, options):
        print(done.name, done.patches)                                   # as each shard commits
    fill_shards_ray([(trained, shard_file, first_id, out), ...])       # IVF-PQ codes, one Ray task per shard

The dataset has one row per shard still to embed (``override_num_blocks``: one block each). ``map(_decode_row)``
runs as Ray tasks of one CPU that read and decode the shard's files (`ssl_core.scale.stages.decode_shard`); its
``ray_remote_args_fn`` keeps Ray Data from fusing it into the actors' stage, so decoding stays on the CPUs and off
the encoder's. ``map_batches(ShardEmbedder, batch_size=1)`` runs on a fixed pool of actors (one per GPU with a
GPU each, else ``actors`` CPU actors of ``actor_cpus`` CPUs), each loading the encoder once; an actor embeds a
shard, writes it and commits it (`ssl_core.scale.shards.write_shard`) and returns one small summary row, so
tokens never travel to the driver. The output folder must therefore be a filesystem every node mounts at the same
path; the images may be fsspec URLs every node can read. Worker nodes need PatchLens installed
(``pip install patchlens[scale]``) and the model's weights at hand (the Hugging Face cache, or ``--weights``).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ssl_core.data.images import ResizePolicy
from ssl_core.errors import BadRequest
from ssl_core.scale.shards import Embedding, ShardPlan, write_shard
from ssl_core.scale.stages import EncoderArgs, decode_shard, embed_shard


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: start a local Ray
    num_cpus: int | None = None  # a local Ray's CPUs (None: all)
    object_store_mb: int | None = None  # a local Ray's object store (None: Ray's default, 30% of memory)
    actors: int | None = None  # encoder actors (None: one per GPU, else half the CPUs)
    actor_cpus: int = 1  # CPUs of each CPU actor (its torch threads)
    gpus: bool = True  # actors take a GPU each where the cluster has GPUs; False: CPU actors all the same


@dataclass(frozen=True)
class ShardDone:
    name: str
    images: int
    patches: int
    failed: list[str]


def start_ray(options: RayOptions) -> bool:
    """Connect to the cluster at ``options.address`` or start a local Ray; whether this call started it."""
    try:
        import ray
    except ImportError:
        raise BadRequest("--engine ray needs Ray: pip install 'patchlens[scale]'") from None
    if ray.is_initialized():
        return False
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
        return True
    memory = options.object_store_mb * 2**20 if options.object_store_mb else None
    # "local": a new Ray of this process's own, even when a cluster started with `ray start` runs on this machine
    ray.init(address="local", num_cpus=options.num_cpus, object_store_memory=memory, include_dashboard=False,
             log_to_driver=False)
    return True


def stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def _decode_row(row: dict, policy: ResizePolicy, max_pixels: int) -> dict:
    decoded = decode_shard(json.loads(row["paths"]), policy, max_pixels)
    return {"name": row["name"], "paths": row["paths"], "decoded": pickle.dumps(decoded, protocol=5)}


class ShardEmbedder:
    """A Ray Data actor: loads the encoder once, then embeds, writes and commits one shard per call."""

    def __init__(self, encoder_args: EncoderArgs, embedding: Embedding, layer: int | None, batch_size: int,
                 root: str, device: str):
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.encoder = encoder_args.load(device)
        if self.encoder.key != embedding.model_key:
            raise BadRequest(f"a worker loaded {encoder_args.model} as {self.encoder.key}, the driver as "
                             f"{embedding.model_key}: give every node the same weights (--weights FILE)")
        self.embedding, self.layer, self.batch_size, self.root = embedding, layer, batch_size, Path(root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"name": [], "images": [], "patches": [], "failed": []}
        for name, paths, decoded in zip(batch["name"], batch["paths"], batch["decoded"]):
            shard = embed_shard(self.encoder, pickle.loads(decoded), self.layer, self.batch_size)
            record = write_shard(self.root, ShardPlan(str(name), tuple(json.loads(paths))), self.embedding, shard)
            out["name"].append(record.name)
            out["images"].append(len(record.images))
            out["patches"].append(record.count)
            out["failed"].append(json.dumps(record.failed))
        return {key: np.array(values) for key, values in out.items()}


def actor_pool(options: RayOptions, resources: dict[str, float]) -> tuple[int, dict]:
    """(actors, remote args of each) for a cluster's ``resources``: one per GPU where it has them and
    ``options.gpus``, else CPU actors (half the CPUs unless ``options.actors`` says)."""
    gpus = int(resources.get("GPU", 0)) if options.gpus else 0
    if gpus:
        return options.actors or gpus, {"num_gpus": 1, "num_cpus": 1}
    cpus = int(resources.get("CPU", 1))
    return options.actors or max(1, cpus // 2), {"num_cpus": options.actor_cpus}


def embed_shards_ray(plans: Sequence[ShardPlan], root: Path, encoder_args: EncoderArgs, embedding: Embedding,
                     layer: int | None, batch_size: int, options: RayOptions, policy: ResizePolicy,
                     ) -> Iterator[ShardDone]:
    """Embed and commit the planned shards on the running Ray (see the module docstring); yields as each commits."""
    import ray

    if not plans:
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    actors, remote_args = actor_pool(options, ray.cluster_resources())
    device = "cuda" if remote_args.get("num_gpus") else "cpu"
    rows = [{"name": plan.name, "paths": json.dumps(list(plan.paths))} for plan in plans]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    dataset = dataset.map(_decode_row, fn_kwargs={"policy": policy, "max_pixels": embedding.max_pixels},
                          num_cpus=1)
    dataset = dataset.map_batches(
        ShardEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(actors, len(plans))),
        fn_constructor_kwargs={"encoder_args": encoder_args, "embedding": embedding, "layer": layer,
                               "batch_size": batch_size, "root": str(root), "device": device},
        **remote_args)
    for row in dataset.iter_rows():
        yield ShardDone(str(row["name"]), int(row["images"]), int(row["patches"]), json.loads(str(row["failed"])))


def fill_shards_ray(jobs: Sequence[tuple[Path, Path, int, Path]]) -> None:
    """Run `ssl_core.search.ivfpq.fill_shard` for each (trained, shard file, first id, out) as a Ray task."""
    import ray

    from ssl_core.search.ivfpq import fill_shard

    remote = ray.remote(num_cpus=1)(fill_shard)
    ray.get([remote.remote(*job) for job in jobs])


__all__ = ["RayOptions", "ShardDone", "ShardEmbedder", "start_ray", "stop_ray", "embed_shards_ray",
           "fill_shards_ray", "actor_pool"]
