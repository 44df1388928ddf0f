"""Load any timm ViT by a short name and turn images into patch representations.

    encoder = load_encoder("dino-vits16")                  # or a bundled name, a timm id, weights=FILE
    [features] = encoder.extract([image], layers=[3, 7], attention=True)
    features.patch_tokens        # [h, w, D]  last layer, after the model's final norm
    features.layer_tokens[3]     # [h, w, D]  residual stream after block 3 (not normed)
    features.attention           # [L, heads, T, T] with T = prefix + h*w

Images of any size and aspect ratio are resized by `ssl_core.data.images.ResizePolicy` and run with timm's
``dynamic_img_size`` (position embeddings resampled to the grid). Models without dynamic sizes (BEiT) are
rebuilt once per new grid with their relative position tables resampled by timm. On a GPU the forward
runs under bf16 autocast; batches that run out of GPU memory are split in half and retried. Results are
cached in memory by model, weights, image content and settings, so asking again costs no forward pass.
"""
from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from ssl_core.data.images import MAX_SHORT_SIDE, ImageSource, ResizePolicy, image_fingerprint, load_image
from ssl_core.errors import BadRequest
from ssl_core.features.attention_hooks import capture_attention, check_attention
from ssl_core.features.cache import LRUCache
from ssl_core.features.patch_features import FEATURE_CACHE, PatchFeatures
from ssl_core.features.pixels import IMAGENET_MEAN, IMAGENET_STD, normalize_pixels
from ssl_core.features.vit_tokens import set_sincos_positions
from ssl_core.models.registry import ModelSpec, resolve_spec, with_image_size
from ssl_core.models.weights import file_fingerprint, fit_state_dict, read_state_dict, resolve_weights_file
from ssl_core.progress import ProgressFn

T = TypeVar("T")
MAX_ATTENTION_BYTES = 2 * 1024**3  # captured attention per forward pass (float32 [B, L, heads, T, T])


def split_on_oom(fn: Callable[[torch.Tensor], T], batch: torch.Tensor, join: Callable[[T, T], T]) -> T:
    """``fn(batch)``; on GPU out-of-memory, split the batch in half, retry each half, and join the results.

    The halves run after the ``except`` clause has ended: while it runs, the exception's traceback keeps every
    frame of the failed attempt alive, and with them its tensors (inputs, activations, captured attention), which
    would leave the halves no more memory than the whole had."""
    try:
        return fn(batch)
    except torch.OutOfMemoryError:
        if batch.shape[0] == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = batch.shape[0] // 2
    return join(split_on_oom(fn, batch[:half], join), split_on_oom(fn, batch[half:], join))


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device a user names (None: `default_device`); `BadRequest` for a name that is not a device or a device
    this machine does not have (cuda without a GPU, cuda:2 with two, mps off a Mac), before anything is moved."""
    if device is None or device == "":
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadRequest(f"device {device!r} is not a device (cpu, cuda, cuda:1, mps ...)") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise BadRequest(f"device {str(device)!r} is not available: this machine has {count} CUDA GPU(s)")
    elif resolved.type not in ("cpu", "meta"):
        backend = getattr(torch.backends, resolved.type, None) or getattr(torch, resolved.type, None)
        if not getattr(backend, "is_available", lambda: False)():
            raise BadRequest(f"device {str(device)!r} is not available on this machine")
    return resolved


def check_image_size(spec: ModelSpec) -> None:
    """`BadRequest` unless the spec's short side is at least one patch and at most `MAX_SHORT_SIDE` px (larger
    images take `ssl_core.features.tiling`); the patch size is read off the architecture, built without weights."""
    with torch.device("meta"):
        model, _ = build_model(spec)
    patch_embed = getattr(model, "patch_embed", None)
    patch = int(patch_embed.patch_size[0]) if patch_embed is not None and hasattr(patch_embed, "patch_size") else 1
    if not patch <= spec.image_size <= MAX_SHORT_SIDE:
        raise BadRequest(f"image size {spec.image_size} px is out of range for {spec.name}: the short side must be "
                         f"from one patch ({patch} px) to {MAX_SHORT_SIDE} px (larger images: `patchlens tile`)")


def build_model(spec: ModelSpec, **overrides: object) -> tuple[nn.Module, bool]:
    """Create the timm model of a spec with random weights; returns (model, supports dynamic image size)."""
    name = spec.hub_id or spec.arch
    kwargs = dict(pretrained=False, num_classes=0, **spec.create_kwargs, **overrides)
    with torch.random.fork_rng(devices=[]):  # forks the CPU generator, the only one a model's creation draws from
        torch.default_generator.manual_seed(0)  # random-init models are the same every time (torch.manual_seed would
        # also reseed every GPU's generator, outside the fork: a run's seed would stop applying to what follows)
        try:
            return timm.create_model(name, dynamic_img_size=True, **kwargs), True
        except TypeError as err:
            if "dynamic_img_size" not in str(err):
                raise
            return timm.create_model(name, **kwargs), False


def check_readable(spec: ModelSpec, model: nn.Module) -> None:
    """`BadRequest` unless the model is a ViT with a fixed patch grid that PatchLens reads (checked on the random-init
    model, before any weights are fetched)."""
    if not all(hasattr(model, part) for part in ("patch_embed", "blocks", "forward_intermediates")):
        raise BadRequest(f"'{spec.name}' ({type(model).__name__}) is not a ViT with a fixed patch grid that "
                         f"PatchLens can read (it needs patch_embed, blocks and forward_intermediates); "
                         f"NaFlexViT ids are not supported: use the fixed-grid id of the same weights")


class Encoder:
    """One loaded ViT with one way to extract features (see the module docstring)."""

    def __init__(self, spec: ModelSpec, model: nn.Module, dynamic: bool, weights_file: Path | None,
                 device: torch.device, cache: LRUCache[PatchFeatures] | None = FEATURE_CACHE,
                 weights_given: bool = False):
        check_readable(spec, model)
        self.spec = spec
        self.model = model.eval().to(device)
        self.dynamic = dynamic
        self.weights_file = weights_file
        self.weights_given = weights_given and weights_file is not None  # a file the user chose, not the spec's own
        self.device = device
        self.cache = cache
        self.fingerprint = file_fingerprint(weights_file) if weights_file else \
            "random-seed0" + ("-sincos" if spec.sincos_positions else "")  # the index and cache keys tell them apart
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.depth = len(model.blocks)
        self.embed_dim = int(model.embed_dim)
        self.num_heads = int(getattr(model.blocks[0].attn, "num_heads", 0))
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.has_class_token = bool(getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None))
        # timm's Eva models (DINOv3, EVA-02, PE) have no num_reg_tokens: registers are the prefix past the class token
        self.num_registers = self.num_prefix_tokens - int(self.has_class_token)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(3, 1, 1)  # the model's own, else ImageNet's
        self.std = torch.tensor(cfg.get("std", IMAGENET_STD)).view(3, 1, 1)
        self.max_attention_bytes = MAX_ATTENTION_BYTES
        self.policy = ResizePolicy(short_side=spec.image_size, patch_size=self.patch_size)
        self._grid_models: dict[tuple[int, int], nn.Module] = {}
        self.lock = threading.RLock()

    # ----------------------------------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        """Identifies model and weights (not the device): cache keys and index manifests use it."""
        return f"{self.spec.hub_id or self.spec.arch}@{self.fingerprint}"

    @property
    def trained(self) -> bool:
        return self.weights_file is not None

    @property
    def display_name(self) -> str:
        return self.name if self.trained else f"{self.name} (untrained)"

    @property
    def weights_label(self) -> str:
        if self.weights_file is None:
            return "random init (untrained)"
        return f"{'file' if self.weights_given else self.spec.source}: {self.weights_file}"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        positions = ", 2D sin-cos position embeddings" if self.spec.sincos_positions else ""
        state = "" if self.trained else f" — UNTRAINED (random weights{positions})"
        chosen = f" with weights {self.weights_file.name}" if self.weights_given else ""  # the file, not its folder
        return (f"{self.display_name}{chosen}: {self.spec.arch}, patch {self.patch_size}, {self.depth} blocks, "
                f"dim {self.embed_dim}, {self.num_params / 1e6:.1f}M params, images at {self.spec.image_size} px "
                f"short side, on {self.device.type}{state}")

    # ----------------------------------------------------------------------------------------- inputs
    def prepare(self, source: ImageSource | Image.Image) -> Image.Image:
        """Load (if needed) and resize an image the way this encoder sees it."""
        image = source if isinstance(source, Image.Image) and source.mode == "RGB" else load_image(source)
        return self.policy.apply(image)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """A processed RGB image as a normalised float tensor [3, H, W]."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, H, W]
        return self.normalize(pixels[None])[0]

    def resolve_layers(self, layers: Sequence[int] | str | None) -> tuple[int, ...]:
        """Block indices (negative counts from the end; "all" is every block) as sorted non-negative ints."""
        if layers is None:
            return ()
        if isinstance(layers, str):
            if layers != "all":
                raise BadRequest(f"layers must be a list of block indices or 'all', not {layers!r}")
            return tuple(range(self.depth))
        out = set()
        for layer in layers:
            index = int(layer) + self.depth if int(layer) < 0 else int(layer)
            if not 0 <= index < self.depth:
                raise BadRequest(f"layer {layer} is out of range for a {self.depth}-block model")
            out.add(index)
        return tuple(sorted(out))

    # ----------------------------------------------------------------------------------------- extraction
    def extract(self, images: Sequence[ImageSource | Image.Image], layers: Sequence[int] | str | None = (),
                attention: bool = False, batch_size: int = 16, progress: ProgressFn | None = None,
                ) -> list[PatchFeatures]:
        """Features for each image (see `PatchFeatures`), from the cache where possible.

        Raises `ImageLoadError` for an input that is not a readable image (nothing is computed then).
        """
        processed = [self.prepare(image) for image in images]
        wanted = self.resolve_layers(layers)
        results: list[PatchFeatures | None] = [None] * len(processed)
        todo: dict[tuple[int, int], list[int]] = defaultdict(list)  # processed size -> image indices
        plans: dict[int, tuple[tuple[int, ...], bool]] = {}
        for i, image in enumerate(processed):
            key = (self.key, image_fingerprint(image))
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None and cached.covers(wanted, attention):
                results[i] = cached
                continue
            if cached is not None:  # extend what is cached rather than lose it
                plans[i] = (tuple(sorted(set(wanted) | set(cached.layer_tokens))), attention or cached.attention is not None)
            todo[image.size].append(i)
        total, done = sum(len(v) for v in todo.values()), 0
        for size, indices in todo.items():
            step = self.attention_batch(size, batch_size) if attention or plans else batch_size
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                chunk_layers = tuple(sorted(set().union(*(plans.get(i, (wanted, attention))[0] for i in chunk))))
                chunk_attention = any(plans.get(i, (wanted, attention))[1] for i in chunk)
                batch = torch.stack([self.to_tensor(processed[i]) for i in chunk])  # [B, 3, H, W]
                for i, feats in zip(chunk, self._forward_split(batch, chunk_layers, chunk_attention)):
                    feats.image = np.asarray(processed[i], dtype=np.uint8)
                    results[i] = feats
                    if self.cache is not None:
                        self.cache.put((self.key, image_fingerprint(processed[i])), feats)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        return results  # type: ignore[return-value]

    def attention_batch(self, size: tuple[int, int], batch_size: int) -> int:
        """How many images of ``size`` (width, height) fit one forward pass with attention captured (float32
        ``[L, heads, T, T]`` per image) within ``max_attention_bytes``; refuses a single image that does not fit."""
        tokens = self.num_prefix_tokens + (size[0] // self.patch_size) * (size[1] // self.patch_size)
        per_image = self.depth * max(1, self.num_heads) * tokens * tokens * 4
        if per_image > self.max_attention_bytes:
            raise BadRequest(f"the attention maps of a {size[1] // self.patch_size}x{size[0] // self.patch_size} patch "
                             f"grid need {per_image / 2**30:.1f} GiB for {self.name} (limit "
                             f"{self.max_attention_bytes / 2**30:.1f} GiB): choose a smaller image size, or turn "
                             f"attention off (tokens alone are far smaller)")
        return max(1, min(batch_size, self.max_attention_bytes // per_image))

    def _forward_split(self, batch: torch.Tensor, layers: tuple[int, ...], attention: bool) -> list[PatchFeatures]:
        return split_on_oom(lambda part: self.forward_batch(part, layers, attention), batch, lambda a, b: a + b)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def running(self, grid_hw: tuple[int, int]) -> Iterator[nn.Module]:
        """The model for a grid, held for one use: the encoder's lock (attention and facet hooks attach to shared
        modules, so no other thread may run it meanwhile), inference mode and autocast. Every forward pass of a
        shared encoder goes through here."""
        with self.lock, torch.inference_mode(), self.autocast():
            yield self.model_for_grid(grid_hw)

    def forward_batch(self, batch: torch.Tensor, layers: tuple[int, ...] = (), attention: bool = False,
                      ) -> list[PatchFeatures]:
        """One forward pass over same-size images. batch: [B, 3, H, W] normalised."""
        B, _, H, W = batch.shape
        p = self.patch_size
        grid = (H // p, W // p)
        P = self.num_prefix_tokens
        indices = list(layers) if layers else [self.depth - 1]
        with self.running(grid) as model:
            x = batch.to(self.device, non_blocking=True)
            capture = capture_attention(model) if attention else contextlib.nullcontext([])
            with capture as maps:
                final, intermediates = model.forward_intermediates(
                    x, indices=indices, return_prefix_tokens=P > 0, norm=False, output_fmt="NLC",
                    intermediates_only=False)
            embedding = model.forward_head(final, pre_logits=True)  # [B, D]
            attn = check_attention(maps, self.depth, P + grid[0] * grid[1]) if attention else None  # [B, L, H, T, T]
        final = final.float().cpu()  # [B, P + h*w, D]
        embedding = embedding.float().cpu()
        per_layer = {}
        for layer, item in zip(indices, intermediates):
            tokens, prefix = item if P > 0 else (item, None)
            per_layer[layer] = (tokens.float().cpu(), None if prefix is None else prefix.float().cpu())
        own = (lambda t: t.clone()) if B > 1 else (lambda t: t)  # each image its own storage: a cached item must
        out = []                                                    # not keep its whole batch alive
        for b in range(B):
            out.append(PatchFeatures(
                patch_tokens=own(final[b, P:]).reshape(grid[0], grid[1], -1),
                prefix_tokens=own(final[b, :P]),
                image_embedding=own(embedding[b]),
                grid_hw=grid,
                patch_size=p,
                has_class_token=self.has_class_token,
                num_registers=self.num_registers,
                image=np.zeros((H, W, 3), np.uint8),
                layer_tokens={l: own(t[b]).reshape(grid[0], grid[1], -1) for l, (t, _) in per_layer.items()
                              if l in layers},
                layer_prefix_tokens={l: (own(pt[b]) if pt is not None else final.new_zeros(0, t.shape[-1]))
                                     for l, (t, pt) in per_layer.items() if l in layers},
                attention=own(attn[b].cpu()) if attn is not None else None,
                model_key=self.key,
            ))
        return out

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] (on any device) -> normalised float input on that device."""
        return normalize_pixels(pixels.float() / 255.0, self.mean, self.std)

    def forward_patch_tokens(self, x: torch.Tensor, layer: int | None = None,
                             forward_features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Only the patch tokens of one layer, with timm's fused attention: the gallery's fast path.

        x: [B, 3, H, W] normalised, on the device. layer None is the final normed output. Returns
        [B, h*w, D] on the device. ``forward_features`` replaces the model's own (e.g. a compiled one).
        """
        with self.running((x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)) as model:
            if layer is None:
                return (forward_features or model.forward_features)(x)[:, self.num_prefix_tokens:]
            [tokens] = model.forward_intermediates(x, indices=[layer], norm=False, output_fmt="NLC",
                                                   intermediates_only=True)
            return tokens  # prefix tokens already stripped by timm

    def model_for_grid(self, grid_hw: tuple[int, int]) -> nn.Module:
        """The model to run on a grid: itself when it takes any size, else a copy built for that grid."""
        native = tuple(self.model.patch_embed.grid_size)
        if self.dynamic or tuple(grid_hw) == native:
            return self.model
        with self.lock:
            model = self._grid_models.get(tuple(grid_hw))
            if model is None:
                size = (grid_hw[0] * self.patch_size, grid_hw[1] * self.patch_size)
                model, _ = build_model(self.spec, img_size=size)
                fit_state_dict(model, self.model.state_dict(), name=f"{self.name} resized to {size}")
                if len(self._grid_models) >= 4:
                    self._grid_models.pop(next(iter(self._grid_models)))
                self._grid_models[tuple(grid_hw)] = model = model.eval().to(self.device)
            return model


def load_encoder(name: str, weights: str | Path | None = None, device: str | torch.device | None = None,
                 image_size: int | None = None, cache: LRUCache[PatchFeatures] | None = FEATURE_CACHE,
                 pretrained: bool = True) -> Encoder:
    """Load an encoder by short name or timm id, with weights from the hub, a local file or assets/.

    ``pretrained=False`` gives the architecture with seeded random weights (tests, speed benchmarks).
    Raises `ModelUnavailable` (offline, within seconds) or `CheckpointError` (weights that do not fit).
    """
    spec = with_image_size(resolve_spec(name), image_size)
    if image_size is not None:
        check_image_size(spec)
    target = resolve_device(device)
    model, dynamic = build_model(spec)
    if spec.sincos_positions:  # weights read below replace it
        set_sincos_positions(model)
    check_readable(spec, model)  # before any download
    weights_file = resolve_weights_file(spec, weights) if pretrained or weights is not None else None
    if weights_file is not None:
        fit_state_dict(model, read_state_dict(weights_file), spec.checkpoint_format, name=str(weights_file))
    return Encoder(spec, model, dynamic, weights_file, target, cache, weights_given=weights is not None)


def grid_for(encoder: Encoder, width: int, height: int) -> tuple[int, int]:
    """The patch grid (h, w) an image of this size gets."""
    w, h = encoder.policy.target_size(width, height)
    return h // encoder.patch_size, w // encoder.patch_size


def count_params(spec: ModelSpec) -> int:
    """Parameters of a spec's architecture, counted without allocating weights."""
    with torch.device("meta"):
        model, _ = build_model(spec)
    return sum(p.numel() for p in model.parameters())


__all__ = ["Encoder", "PatchFeatures", "load_encoder", "build_model", "default_device", "resolve_device",
           "check_image_size", "FEATURE_CACHE", "grid_for", "count_params"]
