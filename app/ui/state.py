"""What the app keeps between requests: loaded encoders (shared, LRU), allowed folders, and per-session images."""
from __future__ import annotations

import gc
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from app.access import check_mae_name, check_model_name
from ssl_core.data.images import DEFAULT_MAX_PIXELS, load_image
from ssl_core.errors import BadRequest, ImageLoadError, ModelUnavailable
from ssl_core.features.cache import LRUCache
from ssl_core.features.encoder import Encoder, load_encoder
from ssl_core.mim.cae import CAEModel, load_cae
from ssl_core.mim.mae import MaskedAutoencoder
from ssl_core.mim.mae_checkpoints import open_mae
from ssl_core.models.registry import ASSETS_DIR, DEFAULT_CAE, resolve_spec

log = logging.getLogger("patchlens")
EXAMPLES_DIR = ASSETS_DIR / "examples"


@dataclass
class AppConfig:
    allow_dirs: list[Path] = field(default_factory=list)  # folders clients may name (see app.access)
    max_upload_mb: float = 50.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_models: int = 4
    default_model: str = ""
    upload_dirs: list[Path] = field(default_factory=list)  # where the web server keeps uploads (Gradio's by default)

    def check_upload_size(self, path: str | os.PathLike) -> None:
        self.check_size(Path(path).stat().st_size, Path(path).name)

    def check_size(self, size: int, name: str) -> None:
        if size > self.max_upload_mb * 1024 * 1024:
            raise BadRequest(f"{name} is {size / 2**20:.1f} MB, over the upload limit of {self.max_upload_mb:g} MB.")


class ModelPool:
    """Models (encoders, MAEs) loaded once and kept while room allows (least recently used are dropped first)."""

    def __init__(self, max_models: int = 4):
        self._cache: LRUCache = LRUCache(max_size=max_models)
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str, weights: Path | None = None, image_size: int | None = None) -> Encoder:
        """The encoder ``name`` (a registry name or timm id: `app.access.check_model_name`), with ``weights``: a
        file `app.access.Access` allowed."""
        check_model_name(name)
        return self._get(("encoder", name, str(weights or ""), image_size),
                         lambda: load_encoder(name, weights=weights, image_size=image_size))

    def get_mae(self, name: str | None, weights: Path | None = None) -> MaskedAutoencoder:
        """An MAE by name (`app.access.check_mae_name`), or from ``weights``: a file `app.access.Access` allowed."""
        name = check_mae_name(name, weights is not None)
        return self._get(("mae", name or "", str(weights or "")), lambda: open_mae(name or None, weights or None))

    def get_cae(self) -> CAEModel | None:
        """The bundled CAE (encoder + latent regressor + decoder), or None where it is not installed."""
        path = resolve_spec(DEFAULT_CAE).bundled_path
        return self._get(("cae", str(path)), lambda: load_cae(path)) if path.is_file() else None

    def _get(self, key: tuple, load: Callable[[], object]):
        model = self._cache.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # two sessions asking for the same model load it once
            model = self._cache.get(key)
            if model is None:
                log.info("loading %s", " ".join(map(str, key)))
                model = self._load_with_room(key, load)
                self._cache.put(key, model)
            return model

    def _load_with_room(self, key: tuple, load: Callable[[], object]):
        """``load()``; when the GPU runs out of memory meanwhile, the least recently used models are dropped one by
        one (the pool would drop one once the new model is in, too late) and the load is tried again."""
        while True:
            try:
                return load()
            except torch.cuda.OutOfMemoryError:
                oldest = next(iter(self._cache.keys()), None)
                if oldest is None:
                    raise ModelUnavailable(f"{key[1]} does not fit in the GPU's memory, even with no other model "
                                           "loaded: choose a smaller model, or run the app on the CPU "
                                           "(CUDA_VISIBLE_DEVICES= patchlens serve)") from None
                log.warning("out of GPU memory loading %s: dropping %s", key[1], " ".join(map(str, oldest)))
                self._cache.pop(oldest)
                gc.collect()
                torch.cuda.empty_cache()

    def loaded(self) -> list[tuple]:
        return self._cache.keys()


@dataclass
class LoadedImage:
    name: str
    image: Image.Image  # RGB, as loaded (EXIF applied), before any model's resize


def load_uploads(paths: list[str], config: AppConfig) -> tuple[list[LoadedImage], list[str]]:
    """Load uploaded or example files; bad ones are reported by name and skipped, the rest kept."""
    loaded, problems = [], []
    for path in paths:
        name = Path(path).name
        try:
            config.check_upload_size(path)
            loaded.append(LoadedImage(name, load_image(path, max_pixels=config.max_pixels, name=name)))
        except (BadRequest, ImageLoadError) as err:
            problems.append(str(err))
    return loaded, problems


def load_image_bytes(data: bytes, config: AppConfig, name: str = "uploaded image") -> Image.Image:
    config.check_size(len(data), name)
    return load_image(data, max_pixels=config.max_pixels, name=name)


def write_images(images: list[LoadedImage], folder: Path) -> list[str]:
    """Save loaded images as PNG files (for tools that read files, like the gallery index, and for restoring a
    session) under the names they were loaded with, one numbered folder each: ``folder/0007/rocket.jpg`` (the
    content is PNG whatever the name says); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:04d}" / (Path(image.name).name or f"image-{i}.png")
        path.parent.mkdir(exist_ok=True)
        image.image.save(path, format="PNG")
        paths.append(str(path))
    return paths


def read_images(folder: Path, config: AppConfig) -> list[LoadedImage]:
    """The images `write_images` saved in ``folder``, in order, under their names (unreadable ones skipped)."""
    loaded = []
    for path in sorted(p for p in folder.glob("[0-9][0-9][0-9][0-9]/*") if p.is_file()):
        try:
            loaded.append(LoadedImage(path.name, load_image(path, max_pixels=config.max_pixels, name=path.name)))
        except ImageLoadError as err:
            log.warning("could not restore %s: %s", path, err)
    return loaded


def example_paths() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
