"""Galleries beyond one machine, measured here: the on-disk IVF-PQ index at millions of patches, and Ray's embedding.

    nice -n 10 python bench/bench_scale.py index --size 10000000 [--dim 768] [--opq auto|on|off] [--dir /tmp/scale]
    nice -n 10 python bench/bench_scale.py embed --images 200 [--model vit_small_patch16_224]

**index.** Synthetic patch vectors are written shard by shard as real shards (`ssl_core.scale.shards`: 250,000
vectors of 500 "images" of 20x25 patches each; never more than one shard in memory): the clustered mixture of
bench/bench_index.py (16-dim Gaussians in random subspaces plus isotropic noise, centres in overlapping groups,
L2-normalised) with one cluster per 2,000 vectors. Then, each step in its own process (so that its peak memory is
its own): the exact top-10 of 1,000 new queries from the same mixture, computed shard by shard; the index stage
of a sharded build (`ssl_core.scale.ondisk.commit_ivfpq`: train, fill, merge, tune, commit; FAISS on this
machine's threads); and the queries, one at a time through `PatchIndex.search_vectors` after `PatchIndex.load`,
with the resident memory of that process sampled after every query. Generated data is kept under --dir and reused
by a later run of the same size; the index is rebuilt every run.

**embed.** The same 200 JPEG files (448x448, as bench/bench_embed.py writes them) embedded by the single-process
pipeline (`embed_files`, 1 decoding worker, torch on all cores) and by the Ray engine on a local Ray
(`embed_shards_ray`: decode tasks and one actor per 2 CPUs, each shard written and committed), one after the other
in one run. The model has random weights (same speed as trained ones), saved to a file that the actors load.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # bench/, the repo
from bench_index import NOISE, SUBSPACE, Mixture  # noqa: E402
from machine import record  # noqa: E402

from ssl_core.render.tables import markdown_table  # noqa: E402

GRID = (20, 25)  # patches of one synthetic "image"
SHARD_IMAGES = 500  # 250,000 vectors per shard
PER_CLUSTER = 2000
QUERIES = 1000
SWEEP = [(8, 64), (16, 64), (32, 64), (32, 256), (64, 256), (128, 512)]  # (nprobe, rerank) beside the tuned ones


# --------------------------------------------------------------------------------------------------- index: phases
def sample(mixture: Mixture, n: int, seed: int, chunk: int = 65_536) -> np.ndarray:
    """n unit vectors [n, D] float16 from the distribution of `Mixture.sample` (other draws: torch's generator,
    several times faster here), with each cluster's subspace term as one matmul over its members."""
    generator = torch.Generator().manual_seed(seed)
    centres, dim = torch.from_numpy(mixture.centres), mixture.centres.shape[1]
    out = np.empty((n, dim), np.float16)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        k = torch.randint(0, len(centres), (m,), generator=generator)
        z = torch.randn((m, SUBSPACE), generator=generator)
        x = centres[k] + NOISE * torch.randn((m, dim), generator=generator)  # [m, D]
        order = torch.argsort(k, stable=True)
        clusters, counts = torch.unique_consecutive(k[order], return_counts=True)
        grouped, z, first = x[order], z[order], 0  # rows grouped by cluster
        for cluster, count in zip(clusters.tolist(), counts.tolist()):
            grouped[first:first + count] += z[first:first + count] @ torch.from_numpy(mixture.bases[cluster])
            first += count
        x[order] = grouped
        out[start:start + m] = torch.nn.functional.normalize(x, dim=1).numpy()
    return out


def folder_for(args) -> Path:
    return Path(args.dir) / f"ivfpq-{args.size}-{args.dim}"


def phase_generate(args) -> dict:
    """Write the shards (those not there yet) and the queries."""
    from ssl_core.scale.shards import EmbeddedShard, Embedding, ShardPlan, read_shard, write_shard
    from ssl_core.search.records import IndexedImage

    folder = folder_for(args)
    root = folder / "idx" / "shards"
    per_image, rows = GRID[0] * GRID[1], GRID[0] * GRID[1] * SHARD_IMAGES
    mixture = Mixture(max(1, args.size // PER_CLUSTER), args.dim, seed=0)
    embedding = Embedding("synthetic@bench", None, 0, 0)
    for shard in range((args.size + rows - 1) // rows):
        name = f"synthetic-{shard:05d}"
        count = min(rows, args.size - shard * rows)
        if read_shard(root, name) is not None:
            continue
        paths = tuple(f"synthetic://{shard}/{i}" for i in range(count // per_image))
        images = [IndexedImage(p, "", GRID, i * per_image) for i, p in enumerate(paths)]
        tokens = sample(mixture, count, seed=1000 + shard, chunk=125_000)  # [count, D] float16 unit rows
        write_shard(root, ShardPlan(name, paths), embedding, EmbeddedShard(images, tokens, []))
    np.save(folder / "queries.npy", sample(mixture, QUERIES, seed=999_999))
    return {}


def shard_records(folder: Path) -> list:
    from ssl_core.scale.shards import read_shard

    root = folder / "idx" / "shards"
    return [read_shard(root, d.name) for d in sorted(root.iterdir()) if d.name.startswith("synthetic-")]


def phase_truth(args) -> dict:
    """The exact top-10 of the queries over every shard, one chunk at a time."""
    from ssl_core.search.sharded import ShardedVectors
    from ssl_core.search.vectors import exact_search_torch

    folder = folder_for(args)
    vectors = ShardedVectors([folder / "idx" / "shards" / r.name / "tokens.npy" for r in shard_records(folder)])
    queries = torch.from_numpy(np.load(folder / "queries.npy").astype(np.float32))
    start = time.perf_counter()
    _, ids = exact_search_torch(vectors, queries, 10)
    np.save(folder / "truth.npy", ids.numpy())
    return {"truth_s": time.perf_counter() - start}


def phase_build(args) -> dict:
    """The index stage of a sharded build over the shards, from scratch (a new generation)."""
    from ssl_core.scale.ondisk import commit_ivfpq
    from ssl_core.search.records import IndexManifest
    from ssl_core.search.storage import WORK_DIR, WriterLock

    target = folder_for(args) / "idx"
    shutil.rmtree(target / WORK_DIR, ignore_errors=True)
    manifest = IndexManifest(model="synthetic", model_key="synthetic@bench", fingerprint="bench", weights="none",
                             image_size=0, patch_size=1, layer=None, dim=args.dim, kind_requested="ivfpq")
    seconds: dict[str, float] = {}
    opq = {"auto": None, "on": True, "off": False}[args.opq]
    with WriterLock(target):
        commit_ivfpq(target, manifest, shard_records(folder_for(args)), opq=opq, seconds=seconds)
    shutil.rmtree(target / WORK_DIR, ignore_errors=True)
    return {"build_s": seconds}


def memory_mb() -> dict[str, float]:
    """This process's resident memory in MB: VmRSS (all), RssAnon (its own memory), RssFile (mapped file pages,
    which the kernel may drop) and VmHWM (the peak of VmRSS)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def phase_query(args) -> dict:
    """Load the index and query it one query at a time: latency, recall@10, resident memory."""
    from ssl_core.search.patch_index import PatchIndex
    from ssl_core.search.vectors import recall_at_k

    folder = folder_for(args)
    start = time.perf_counter()
    index = PatchIndex.load(folder / "idx", device="cpu")
    load_s, loaded = time.perf_counter() - start, memory_mb()
    queries = np.load(folder / "queries.npy").astype(np.float32)
    truth = np.load(folder / "truth.npy")
    latencies, found, memory = [], [], []
    for query in queries:
        start = time.perf_counter()
        hits = index.search_vectors(query[None], 10)[0]
        latencies.append((time.perf_counter() - start) * 1000)
        found.append([h.vector_id for h in hits] + [-1] * (10 - len(hits)))
        memory.append(memory_mb())
    peak = {key: max(m[key] for m in memory) for key in memory[0]}
    sweep = [sweep_point(index.vector_index, queries[:200], truth[:200], nprobe, rerank) for nprobe, rerank in SWEEP
             if nprobe <= index.vector_index.nlist]
    m = index.manifest
    generation = folder / "idx" / index.origin.generation
    return {"load_s": load_s, "rss_loaded_mb": loaded["VmRSS"], "rss_max_mb": peak["VmRSS"],
            "anon_max_mb": peak["RssAnon"], "file_max_mb": peak["RssFile"],
            "median_ms": statistics.median(latencies), "p95_ms": float(np.percentile(latencies, 95)),
            "recall": recall_at_k(np.array(found), truth), "nprobe": m.search_param, "rerank": m.rerank,
            "tuned_recall": m.recall, "factory": m.factory, "nlist": index.vector_index.nlist, "sweep": sweep,
            "pq_mb": sum((generation / n).stat().st_size for n in ("index.faiss", "lists.ivfdata")) / 2**20,
            "vectors_gb": sum(p.stat().st_size for p in generation.glob("vectors-*.npy")) / 2**30}


def sweep_point(vector_index, queries: np.ndarray, truth: np.ndarray, nprobe: int, rerank: int) -> dict:
    from ssl_core.search.vectors import recall_at_k

    latencies, found = [], []
    for query in queries:
        start = time.perf_counter()
        found.append(vector_index.search(query[None], 10, nprobe, rerank)[1][0])
        latencies.append((time.perf_counter() - start) * 1000)
    return {"nprobe": nprobe, "rerank": rerank, "recall": recall_at_k(np.array(found), truth),
            "median_ms": statistics.median(latencies)}


class MemorySampler:
    """The peaks of `memory_mb`'s fields, sampled every 0.1 s by a thread while the ``with`` block runs."""

    def __init__(self):
        import threading

        self.peak: dict[str, float] = memory_mb()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = {key: max(value, self.peak[key]) for key, value in memory_mb().items()}

    def __enter__(self) -> "MemorySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


PHASES = {"generate": phase_generate, "truth": phase_truth, "build": phase_build, "query": phase_query}


def run_phases(args) -> dict[str, dict]:
    """The phases asked for, each in its own process; the others' results from an earlier run (results.json)."""
    saved = folder_for(args) / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for phase in args.phases.split(","):
        results[phase] = run_phase(args, phase)
        saved.write_text(json.dumps(results, indent=1))
    missing = [phase for phase in PHASES if phase not in results]
    if missing:
        raise SystemExit(f"no results yet for {', '.join(missing)}: run them (--phases)")
    return results


def run_phase(args, phase: str) -> dict:
    """Run one phase in a fresh process: its result, wall time and peak resident memory."""
    command = [sys.executable, __file__, "_phase", phase, "--size", str(args.size), "--dim", str(args.dim),
               "--opq", args.opq, "--dir", args.dir, "--threads", str(args.threads)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(wall_s=time.perf_counter() - start)
    print(f"{phase}: {result}", file=sys.stderr)
    return result


def bench_index(args) -> None:
    results = run_phases(args)
    build, query = results["build"], results["query"]
    build_s = build["build_s"]
    per_million = args.size / 1e6
    rows = [[f"{args.size:,}", args.dim, query["factory"], f"nprobe {query['nprobe']} of {query['nlist']}, "
             f"rerank {query['rerank']}", f"{results['generate']['wall_s']:.0f}", f"{results['truth']['truth_s']:.0f}",
             " / ".join(f"{build_s[k]:.0f}" for k in ("train", "fill", "merge", "tune", "commit")),
             f"{sum(build_s.values()):.0f}", f"{build['peak_mb']:.0f} ({build['anon_peak_mb']:.0f} + "
             f"{build['file_peak_mb']:.0f})", f"{query['pq_mb']:.0f}",
             f"{query['vectors_gb']:.2f}", f"{query['rss_loaded_mb']:.0f} / {query['rss_max_mb']:.0f} "
             f"({query['anon_max_mb']:.0f} + {query['file_max_mb']:.0f})",
             f"{query['median_ms']:.1f} / {query['p95_ms']:.1f}", f"{query['recall']:.3f}"]]
    table = markdown_table(["patches", "dim", "index", "search setting (tuned)", "generate s", "exact top-10 s",
                            "build s: train / fill / merge / tune / commit", "build s",
                            "build peak RSS MB (own + mapped file pages)", "PQ index MB (codes, ids, quantizers)",
                            "float16 vectors GB", "RSS MB after load / max while querying (own + mapped file pages)",
                            "1 query ms median / p95", "recall@10"], rows)
    sweep = markdown_table(["nprobe", "rerank", "recall@10 (200 queries)", "1 query ms median"],
                           [[p["nprobe"], p["rerank"], f"{p['recall']:.3f}", f"{p['median_ms']:.1f}"]
                            for p in query["sweep"]])
    earlier = [phase for phase in PHASES if phase not in args.phases.split(",")]
    notes = (f"torch and FAISS on {args.threads} thread(s) in every phase. "
             + (f"Phases {', '.join(earlier)}: from an earlier run of this size (results.json). " if earlier else "")
             + f"{QUERIES:,} new queries from the mixture, one at a time through `PatchIndex.search_vectors` on the "
             f"loaded index; recall@10 against the exact top-10 over all {args.size:,} stored float16 vectors. Per "
             f"million patches: build {sum(build_s.values()) / per_million:.0f} s, exact top-10 of 1,000 queries "
             f"{results['truth']['truth_s'] / per_million:.0f} s, PQ index {query['pq_mb'] / per_million:.0f} MB, "
             f"float16 vectors {query['vectors_gb'] / per_million * 1024:.0f} MB. Tuned on 200 stored vectors: "
             f"recall@10 {query['tuned_recall']:.3f}. Other settings on the first 200 queries:\n\n{sweep}")
    record(f"On-disk IVF-PQ index: {args.size:,} patches of dimension {args.dim}", table, notes, args.print_only)


def bench_phase(args) -> None:
    import faiss

    torch.set_num_threads(args.threads)  # on a shared machine 1 thread beats 2 that wait for each other
    faiss.omp_set_num_threads(args.threads)
    with MemorySampler() as memory:
        result = PHASES[args.phase](args)
    result.update(peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  anon_peak_mb=memory.peak["RssAnon"], file_peak_mb=memory.peak["RssFile"])
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------------- embed
def bench_embed(args) -> None:
    from bench_embed import write_jpegs

    from ssl_core import load_encoder

    folder = Path(args.dir) / f"embed-{args.images}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    paths = write_jpegs(folder / "images", args.images)
    encoder = load_encoder(args.model, device="cpu", pretrained=False, cache=None)
    weights = folder / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in encoder.model.state_dict().items()}, str(weights))
    single = time_single(args, paths, weights)
    rows = [["single process: embed_files (1 decoding worker, torch threads 2)", f"{single:.1f}", "—", "—",
             f"{args.images / single:.2f}", "1.00×"]]
    for cpus, actors in ((2, 1), (3, 2)):  # 3 logical CPUs on 2 cores: two 1-thread actors and a decoding task
        start_s, first_s, embed_s = time_ray(args, paths, weights, cpus, actors)
        rows.append([f"Ray, local, {cpus} CPUs: decode tasks + {actors} actor(s) of 1 CPU", f"{embed_s:.1f}",
                     f"{start_s:.1f}", f"{first_s:.1f}", f"{args.images / embed_s:.2f}", f"{single / embed_s:.2f}×"])
    table = markdown_table(["engine", "embed s", "Ray start s", "first shard committed after s", "images/s",
                            "throughput vs single process"], rows)
    notes = (f"{args.images} JPEG files of 448x448, {args.model} at 224 px (random weights), batch {args.batch_size}"
             f", shards of about {args.shard_size} images; the Ray time covers the actors' start and model load "
             f"(until the first shard) and writing and committing every shard (fsync, sha256), not `ray.init` (its "
             f"own column).")
    record(f"Embedding {args.images} images: Ray engine against the single-process pipeline", table, notes,
           args.print_only)


def time_single(args, paths: list[str], weights: Path) -> float:
    from ssl_core import load_encoder
    from ssl_core.features.pipeline import PipelineConfig, embed_files

    encoder = load_encoder(args.model, weights=weights, device="cpu", cache=None)
    torch.set_num_threads(2)
    start = time.perf_counter()
    for _ in embed_files(encoder, paths, PipelineConfig(batch_size=args.batch_size, workers=1)):
        pass
    return time.perf_counter() - start


def time_ray(args, paths: list[str], weights: Path, cpus: int, actors: int) -> tuple[float, float, float]:
    """(ray.init s, first shard s, embedding s) of the Ray engine on a local Ray of ``cpus`` CPUs."""
    from ssl_core.data.images import DEFAULT_MAX_PIXELS
    from ssl_core.scale.listing import list_sources
    from ssl_core.scale.ray_engine import RayOptions, embed_shards_ray, start_ray, stop_ray
    from ssl_core.scale.shards import Embedding, plan_shards
    from ssl_core.scale.stages import EncoderArgs

    encoder_args = EncoderArgs(args.model, str(weights))
    encoder = encoder_args.load("cpu")
    embedding = Embedding(encoder.key, None, encoder.spec.image_size, DEFAULT_MAX_PIXELS)
    plans = plan_shards(list_sources(paths)[0], embedding, args.shard_size)
    root = Path(args.dir) / f"embed-{args.images}" / f"shards-{cpus}"
    options = RayOptions(num_cpus=cpus, actors=actors, gpus=False)  # CPU actors, as the table says
    start = time.perf_counter()
    started = start_ray(options)
    start_s, first = time.perf_counter() - start, 0.0
    try:
        start = time.perf_counter()
        for _ in embed_shards_ray(plans, root, encoder_args, embedding, None, args.batch_size, options,
                                  encoder.policy):
            first = first or time.perf_counter() - start
        return start_s, first, time.perf_counter() - start
    finally:
        stop_ray(started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("index", "_phase"):
        p = sub.add_parser(name)
        if name == "_phase":
            p.add_argument("phase", choices=list(PHASES))
        p.add_argument("--size", type=int, default=10_000_000)
        p.add_argument("--dim", type=int, default=768)
        p.add_argument("--opq", default="auto", choices=["auto", "on", "off"])
        p.add_argument("--dir", default="/tmp/scale")
        p.add_argument("--print-only", action="store_true")
        p.add_argument("--phases", default=",".join(PHASES), help="phases to run now (the others: from results.json)")
        p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads of each phase")
    embed = sub.add_parser("embed")
    embed.add_argument("--images", type=int, default=200)
    embed.add_argument("--model", default="vit_small_patch16_224")
    embed.add_argument("--batch-size", type=int, default=16)
    embed.add_argument("--shard-size", type=int, default=32)
    embed.add_argument("--dir", default="/tmp/scale")
    embed.add_argument("--print-only", action="store_true")
    args = parser.parse_args()
    {"index": bench_index, "_phase": bench_phase, "embed": bench_embed}[args.command](args)


if __name__ == "__main__":
    main()
