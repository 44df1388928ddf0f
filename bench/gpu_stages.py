"""The stages of `gpu_check.py`: each takes the `Context` and returns rows (dicts) for the report.

A row with a ``passed`` key is a check; rows without are measurements. Sizes come from the context: the GPU
run uses the real ones (ViT-S/16 and ViT-B/16 at 224 px, 10M x 768 search), the smoke run tiny ones on the CPU.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_embed import GFLOPS_PER_IMAGE, ceiling, pipeline, plain_loop, write_jpegs

from ssl_core import load_encoder
from ssl_core.analyses.attention import rollout
from ssl_core.features.encoder import count_params, split_on_oom
from ssl_core.models.registry import all_specs
from ssl_core.search.patch_index import SAME_IMAGE_COSINE
from ssl_core.search.verify import MIN_COSINE

NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}  # dense, SXM where it applies


ZOO_LAB_SECONDS = 60.0  # kept free for the zoo_lab stage when the zoo's budget is cut to meet the check's deadline
ZOO_MIN_SECONDS = 2.0  # per model, however late the zoo starts


@dataclass
class Context:
    smoke: bool
    device: torch.device
    scratch: Path
    out: Path
    zoo_seconds: float
    total_seconds: float | None = None  # the whole check's wall-clock limit; the zoo's budget shrinks to meet it
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def make(cls, smoke: bool, scratch: Path, out: Path, zoo_seconds: float | None,
             total_seconds: float | None = None) -> "Context":
        """The defaults: a 300 s zoo within a 420 s check on a GPU; a 40 s zoo and no deadline in the smoke."""
        device = torch.device("cpu" if smoke else "cuda")
        return cls(smoke, device, scratch, out, zoo_seconds if zoo_seconds is not None else (40.0 if smoke else 300.0),
                   total_seconds if total_seconds is not None or smoke else 420.0)

    def zoo_budget(self) -> float:
        """The zoo's training seconds in all: ``zoo_seconds``, less when the stages before it left too little of
        ``total_seconds`` (the zoo_lab stage after it keeps `ZOO_LAB_SECONDS`)."""
        if self.total_seconds is None:
            return self.zoo_seconds
        left = self.total_seconds - (time.perf_counter() - self.started) - ZOO_LAB_SECONDS
        from ssl_core.models.registry import BUNDLED

        return max(ZOO_MIN_SECONDS * len(BUNDLED), min(self.zoo_seconds, left))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed(fn, context: Context, repeats: int) -> list[float]:
    """Seconds per call of fn over ``repeats`` calls after one warm-up."""
    fn()
    context.sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        context.sync()
        times.append(time.perf_counter() - start)
    return times


def pictures(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((height, width, 3)) * 255).astype(np.uint8) for _ in range(count)]


# --------------------------------------------------------------------------------------------- correctness
def family_representatives(smoke: bool) -> list[str]:
    """The smallest model of each family in the registry (the bundled zoo shares one architecture)."""
    by_family: dict[str, tuple[int, str]] = {}
    for spec in all_specs():
        family = "PatchLens" if spec.arch == "patchlens_vit_tiny_p8" else spec.family
        size = count_params(spec)
        if family not in by_family or size < by_family[family][0]:
            by_family[family] = (size, spec.name)
    chosen = sorted(by_family.values())
    return [name for size, name in chosen if not smoke or size < 25_000_000][: 3 if smoke else None]


def families(context: Context) -> list[dict]:
    """Per family: patch tokens, attention and rollout on the device (bf16 autocast on a GPU) against the CPU."""
    rows = []
    images = pictures(2, 90, 140)
    for name in family_representatives(context.smoke):
        size = 64 if context.smoke else None
        cpu = load_encoder(name, pretrained=False, device="cpu", image_size=size, cache=None)
        dev = load_encoder(name, pretrained=False, device=str(context.device), image_size=size, cache=None)
        reference, result = cpu.extract(images, attention=True), dev.extract(images, attention=True)
        cosine = torch.cat([F.cosine_similarity(a.patch_tokens.flatten(0, 1), b.patch_tokens.flatten(0, 1), dim=-1)
                            for a, b in zip(reference, result)])
        attention = max(float((a.attention - b.attention).abs().max()) for a, b in zip(reference, result))
        rolled = max(float((rollout(a.attention) - rollout(b.attention)).abs().max()) for a, b in zip(reference, result))
        rows.append({"model": name, "family": cpu.spec.family, "grid": "x".join(map(str, reference[0].grid_hw)),
                     "token cosine mean": float(cosine.mean()), "token cosine min": float(cosine.min()),
                     "attention max abs diff": attention, "rollout max abs diff": rolled,
                     "passed": bool(cosine.mean() >= 0.99 and attention < 0.05 and rolled < 0.05)})
        del cpu, dev
    return rows


def analyses(context: Context) -> list[dict]:
    """The pure analyses given tensors on the device give the CPU's answers: k-means parts (seeded starts drawn on
    the CPU), the attention-mass mask, best-buddy correspondences and the attention range (distance, NMI)."""
    from ssl_core.analyses.attention import mass_mask
    from ssl_core.analyses.attention_range import mean_attention_distance, query_key_nmi
    from ssl_core.analyses.correspondence import best_buddies
    from ssl_core.analyses.parts import kmeans

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 64, generator=generator)
    points = centres[torch.randint(6, (600,), generator=generator)] + 0.3 * torch.randn(600, 64, generator=generator)
    grids = torch.randn(2, 12, 16, 64, generator=generator)
    weights = torch.rand(14, 14, generator=generator)
    attention = torch.randn(2, 3, 1 + 12 * 16, 1 + 12 * 16, generator=generator).mul(3).softmax(-1)  # [L, H, T, T]

    def run_on(device: torch.device) -> tuple:
        reach = torch.stack([mean_attention_distance(attention.to(device), 1, (12, 16)),
                             query_key_nmi(attention.to(device), 1)]).cpu()  # [2, L, H]
        return (kmeans(points.to(device), 6, seed=3).labels.cpu(), mass_mask(weights.to(device), 0.6).cpu(),
                best_buddies(grids[0].to(device), grids[1].to(device)), reach)

    (labels, mask, buddies, reach), (labels_dev, mask_dev, buddies_dev, reach_dev) = (run_on(torch.device("cpu")),
                                                                                      run_on(context.device))
    same_labels = float((labels == labels_dev).float().mean())
    same_pairs = bool(np.array_equal(buddies.patches_a, buddies_dev.patches_a)
                      and np.array_equal(buddies.patches_b, buddies_dev.patches_b))
    reach_diff = float((reach - reach_dev).abs().max())
    return [{"k-means labels equal": same_labels, "mass mask equal": bool(torch.equal(mask, mask_dev)),
             "best buddies equal": same_pairs, "attention range max abs diff": reach_diff,
             "passed": bool(same_labels >= 0.99 and torch.equal(mask, mask_dev) and same_pairs and reach_diff < 1e-6)}]


def oom_split(context: Context) -> list[dict]:
    """A batch too large for the memory is split and retried, and gives the tokens of a small unsplit batch."""
    encoder = load_encoder("random-tiny" if context.smoke else "dino-vits16", pretrained=False,
                           device=str(context.device), cache=None)
    size = encoder.policy.short_side
    batch_size = 8 if context.smoke else 1024
    x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    sizes: list[int] = []

    def forward(part: torch.Tensor):
        sizes.append(part.shape[0])
        if context.smoke and part.shape[0] > 2:  # no memory limit to hit on a CPU: an OOM is raised instead
            raise torch.OutOfMemoryError("smoke: simulated out-of-memory")
        return encoder.forward_batch(part, (), True)

    if not context.smoke:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 3 * 2**30 / total))  # 3 GiB: batch 1024 cannot fit
    try:
        split = split_on_oom(forward, x, lambda a, b: a + b)
    finally:
        if not context.smoke:
            torch.cuda.set_per_process_memory_fraction(1.0)
    alone = encoder.forward_batch(x[:2], (), True)
    difference = max(float((a.patch_tokens - b.patch_tokens).abs().max()) for a, b in zip(split[:2], alone))
    splits = sum(1 for s in sizes if s < batch_size)
    return [{"model": encoder.name, "batch": batch_size, "forward calls": len(sizes), "smallest part": min(sizes),
             "max abs diff vs unsplit": difference, "passed": bool(splits > 0 and len(split) == batch_size
                                                                   and difference < 0.05)}]


def jpeg_decode(context: Context) -> list[dict]:
    """Batched torchvision decode (nvJPEG on a GPU) + resize against PIL decode + the encoder's resize."""
    from PIL import Image
    from torchvision.io import read_file

    from ssl_core.data.images import load_image
    from ssl_core.features.pipeline import decode_jpegs

    encoder = load_encoder("random-tiny" if context.smoke else "dino-vits16", pretrained=False,
                           device=str(context.device), cache=None)
    paths = write_jpegs(context.scratch, 8 if context.smoke else 64)
    decoded, failed = decode_jpegs([read_file(p) for p in paths], paths, encoder.policy, context.device)
    diffs = []
    for path, pixels in decoded:
        reference = np.asarray(encoder.policy.apply(load_image(path)), dtype=np.float32)
        ours = pixels.permute(1, 2, 0).cpu().numpy().astype(np.float32)
        diffs.append(float(np.abs(reference - ours).mean()))
    size = Image.open(paths[0]).size
    return [{"check": "batched decode vs PIL", "images": len(paths), "source size": f"{size[0]}x{size[1]}",
             "failed": len(failed),
             "mean abs diff (0-255)": statistics.mean(diffs), "max per-image": max(diffs),
             "passed": bool(not failed and max(diffs) < 6.0)}, mixed_gallery(context, encoder, paths[:4])]


def mixed_gallery(context: Context, encoder, jpegs: list[str]) -> dict:
    """A gallery embedded with the batched JPEG decode where files of one size take both paths (plain JPEGs: the
    device's decoder; a PNG and an EXIF-rotated JPEG: PIL, on the CPU) and one JPEG is truncated: one batch
    gathers both kinds on the device, the truncated file is listed, and the tokens match the all-PIL route."""
    from PIL import Image

    from ssl_core.features.pipeline import PipelineConfig, embed_files

    square = Image.open(jpegs[0])
    png, rotated, truncated = (context.scratch / name for name in ("mixed.png", "rotated.jpg", "truncated.jpg"))
    square.save(png)
    exif = square.getexif()
    exif[0x0112] = 3  # display turned 180 degrees: still square, so in the JPEGs' bucket
    square.save(rotated, quality=90, exif=exif)
    truncated.write_bytes(Path(jpegs[1]).read_bytes()[:-2000])
    files = [*jpegs, str(png), str(rotated), str(truncated)]
    config = PipelineConfig(batch_size=len(files), workers=0, out_dtype=torch.float32)
    by_jpeg = list(embed_files(encoder, files, PipelineConfig(**{**vars(config), "decode": "jpeg"})))
    by_pil = {i.path: i.tokens for batch in embed_files(encoder, files, config) for i in batch.items}
    embedded = {i.path: i.tokens for batch in by_jpeg for i in batch.items}
    failed = [reason for batch in by_jpeg for reason in batch.failed]
    cosine = min(float(F.cosine_similarity(embedded[p], by_pil[p], dim=-1).mean()) for p in embedded)
    [alone] = encoder.extract([jpegs[0]])  # one image, the other forward: a query (PatchIndex._find_indexed) or
    # a re-embedding (`patchlens index verify --deep`, every patch at least MIN_COSINE)
    as_query = F.cosine_similarity(alone.patch_tokens.flatten(0, 1), by_pil[jpegs[0]], dim=-1)
    return {"check": "gallery: both paths in one batch, one file truncated", "images": len(files),
            "embedded": len(embedded), "failed": len(failed), "min mean cosine vs PIL route": cosine,
            "alone vs in a batch, mean cosine": float(as_query.mean()), "min": float(as_query.min()),
            "passed": bool(sorted(embedded) == sorted(files[:-1]) and len(failed) == 1 and "truncated" in failed[0]
                           and cosine > 0.98 and as_query.mean() >= SAME_IMAGE_COSINE and as_query.min() >= MIN_COSINE)}


def compiled(context: Context) -> list[dict]:
    """torch.compile'd forward_features against eager (inductor on a GPU; the eager backend in the smoke run)."""
    encoder = load_encoder("random-tiny" if context.smoke else "vit_base_patch16_224", pretrained=False,
                           device=str(context.device), cache=None)
    size = encoder.policy.short_side
    x = torch.randn(4 if context.smoke else 64, 3, size, size, device=context.device)
    fn = torch.compile(encoder.model.forward_features, dynamic=False, backend="eager" if context.smoke else "inductor")
    eager = encoder.forward_patch_tokens(x)
    context.sync()  # the eager pass's queued kernels are not the compile's time
    start = time.perf_counter()
    ours = encoder.forward_patch_tokens(x, forward_features=fn)
    context.sync()
    first = time.perf_counter() - start
    cosine = F.cosine_similarity(eager.float().flatten(0, 1), ours.float().flatten(0, 1), dim=-1)
    return [{"model": encoder.name, "compile + first call s": first, "cosine min": float(cosine.min()),
             "passed": bool(cosine.min() >= 0.999)}]


# --------------------------------------------------------------------------------------------- speed
def peak_tflops(context: Context) -> tuple[float, float | None]:
    """(measured bf16 matmul TFLOP/s, nominal dense bf16 peak of this GPU or None)."""
    if context.device.type != "cuda":
        return 0.0, None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = statistics.median(timed(lambda: a @ a, context, 20))
    name = torch.cuda.get_device_name(0)
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    return 2 * n ** 3 / seconds / 1e12, nominal


def throughput(context: Context) -> list[dict]:
    """Plain fp32 loop / timm bf16 ceiling / PatchLens pipeline (PIL workers, then batched JPEG decode)."""
    import timm

    models = [("random-tiny", "patchlens_vit_tiny_p8")] if context.smoke else [
        ("vit_small_patch16_224", "vit_small_patch16_224"), ("vit_base_patch16_224", "vit_base_patch16_224")]
    count, batch = (16, 8) if context.smoke else (2048, 256)
    measured, nominal = peak_tflops(context)
    rows = []
    with tempfile.TemporaryDirectory(dir=context.scratch) as folder:
        paths = write_jpegs(Path(folder), count)
        for name, arch in models:
            encoder = load_encoder(name, pretrained=False, device=str(context.device), cache=None)
            plain_model = timm.create_model(arch, pretrained=False).eval().to(context.device)
            plain = plain_loop(plain_model, paths[: max(batch, count // 4)], 32, context.device)
            top = ceiling(plain_model, batch, context.device, 4 if context.smoke else 20, encoder.policy.short_side)
            pipeline(encoder, paths[:batch], batch, None, "pil", False)  # warm-up
            ours = pipeline(encoder, paths, batch, None, "pil", False)
            jpeg = pipeline(encoder, paths, batch, None, "jpeg", False)
            row = {"model": name, "plain fp32 loop img/s": plain, "timm bf16 ceiling img/s": top,
                   "PatchLens (PIL workers) img/s": ours, "PatchLens (batched JPEG decode) img/s": jpeg,
                   "best / plain": max(ours, jpeg) / plain}
            gflops = GFLOPS_PER_IMAGE.get(arch)
            if gflops and measured:
                row["MFU vs measured matmul"] = max(ours, jpeg) * gflops / 1000 / measured
                if nominal:
                    row["MFU vs nominal peak"] = max(ours, jpeg) * gflops / 1000 / nominal
            rows.append(row)
    rows.append({"model": "bf16 matmul 8192^3", "measured TFLOP/s": measured, "nominal TFLOP/s": nominal or "unknown"})
    return rows


def exact_search(context: Context) -> list[dict]:
    """Exhaustive top-10 over N x D float16 vectors on the device: 1 query and 196 queries (one image's patches)."""
    from ssl_core.search.vectors import exact_search_torch

    n, d = (100_000, 64) if context.smoke else (10_000_000, 768)
    dtype = torch.float32 if context.smoke else torch.float16
    database = torch.empty(n, d, device=context.device, dtype=dtype)
    generator = torch.Generator(device=context.device).manual_seed(0)
    for start in range(0, n, 1_000_000):  # generated in slices: no float32 copy of the whole set
        block = torch.randn(min(1_000_000, n - start), d, device=context.device, generator=generator)
        database[start:start + block.shape[0]] = F.normalize(block, dim=1).to(dtype)
    rows = []
    for q in (1, 196):
        ids = torch.randint(0, n, (q,), device=context.device, generator=generator)
        queries = database[ids]
        chunk = max(65_536, min(n, int(8 * 2**30 // (q * 4))))  # score blocks of at most 8 GiB
        times = timed(lambda: exact_search_torch(database, queries, 10, chunk_rows=chunk), context, 20)
        _, found = exact_search_torch(database, queries, 10, chunk_rows=chunk)
        rows.append({"vectors": n, "dim": d, "queries": q, "median ms": 1000 * statistics.median(times),
                     "p95 ms": 1000 * float(np.percentile(times, 95)), "top-1 is the query itself":
                     float((found[:, 0] == ids).float().mean()), "passed": bool((found[:, 0] == ids).all())})

    return rows


def faiss_gpu(context: Context) -> list[dict]:
    try:
        import faiss
    except ImportError:
        return [{"faiss": "not installed (its GPU wheel needs ~0.5 GB of CUDA libraries): skipped"}]
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return [{"faiss": faiss.__version__, "GPUs seen by FAISS": gpus}]


# --------------------------------------------------------------------------------------------- the zoo
def zoo(context: Context) -> list[dict]:
    """Train the five bundled objectives within `Context.zoo_budget` seconds in all (``zoo_seconds``, or less to meet
    the check's deadline), each packed into ``zoo-NAME.tar`` as soon as it is trained (the zoo_lab stage scores
    them). One archive per model: each stays far under the 16 MiB a file may have to come back from a lent GPU
    machine (the five together are ~32 MB), and a run killed half-way still leaves the models trained before."""
    import tarfile

    from ssl_core.models.registry import BUNDLED
    from ssl_core.train import train

    folder = context.scratch / "zoo"  # zoo_lab reads it
    batch, image_size = (4, 32) if context.smoke else (256, 96)
    budget = context.zoo_budget() / len(BUNDLED)
    rows = []
    for spec in BUNDLED:
        result = train(spec.method, out_dir=folder, steps=1_000_000, batch_size=batch, seed=0,
                       device=str(context.device), name=spec.name, image_size=image_size,
                       max_seconds=budget, log_every=10)
        rows.append({"model": spec.name, "method": spec.method, "budget s": budget, "steps": result.steps,
                     "seconds": result.wall_s,
                     "images seen": result.steps * batch,
                     "final losses": ", ".join(f"{k} {v:.3g}" for k, v in result.final_losses.items())})
        partial = context.out / f".zoo-{spec.name}.tar.partial"
        with tarfile.open(partial, "w") as archive:
            for path in (result.weights_path, result.card_path, result.log_path):
                archive.add(path, arcname=path.name)
        partial.replace(context.out / f"zoo-{spec.name}.tar")
    return rows


def zoo_lab(context: Context) -> list[dict]:
    """Object probe and k-NN (class token) of each new model and of the untrained baselines (timm's random positions,
    and the 2D sin-cos table the MAE, CAE, DINO and DILEMMA start from), on held-out scenes."""
    from ssl_core.lab import LabConfig, encode_scenes, knn_probe, object_probe
    from ssl_core.models.registry import BUNDLED

    folder, image_size = context.scratch / "zoo", 32 if context.smoke else 96
    config = LabConfig(n_train=40 if context.smoke else 300, n_test=20 if context.smoke else 150)
    rows = []
    baselines = [("random-tiny", None), ("random-tiny-sincos", None)]
    for name, weights in baselines + [(s.name, folder / f"{s.name}.safetensors") for s in BUNDLED]:
        encoder = load_encoder(name, weights=weights, pretrained=weights is not None, device=str(context.device),
                               image_size=image_size, cache=None)
        scenes = encode_scenes(encoder, config)
        knn = knn_probe(encoder, scenes, config)
        rows.append({"model": encoder.display_name, "object probe (balanced)": object_probe(scenes, config)
                     .balanced_accuracy, "k-NN class token": knn.class_token, "k-NN chance": knn.chance_accuracy})
    return rows


STAGES = {"families": families, "analyses": analyses, "oom_split": oom_split, "jpeg_decode": jpeg_decode,
          "compile": compiled, "throughput": throughput, "exact_search": exact_search, "faiss_gpu": faiss_gpu,
          "zoo": zoo, "zoo_lab": zoo_lab}
