"""Finding, reading and fitting weights: hub downloads that fail fast offline, safe local files, key remaps.

Untrusted pickles are never unpickled: ``.pth``/``.pt``/``.bin``/``.tar`` files are read with
``torch.load(weights_only=True)``; ``.safetensors`` is preferred wherever there is a choice.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from ssl_core.errors import CheckpointError, ModelUnavailable
from ssl_core.models.registry import MAE_SPEC_ARCH, ModelSpec

CONNECT_TIMEOUT_S = 3.0
TENSOR_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar", ".ckpt")


def offline_hint(name: str, mae: bool = False) -> str:
    """What to do instead of a download: a model that needs none, or a local file. ``mae``: for a reconstruction,
    where only an MAE with its decoder will do, the MAEs that need no download are offered (`offline_mae_names`)."""
    from ssl_core.models.registry import bundled_names

    if mae:
        ready = ", ".join(offline_mae_names()) or "none yet: train one with `patchlens train --method mae`"
        return (f"Use an MAE that needs no download ({ready}), or download the checkpoint elsewhere and pass the "
                f"local file (CLI: --weights FILE; app: the MAE checkpoint box) for '{name}'.")
    bundled = ", ".join(bundled_names()) or "random-tiny (untrained)"
    return (f"Use a bundled model that needs no download ({bundled}), or download the weights elsewhere and "
            f"pass the local file (CLI: --weights FILE; app: the 'Weights file' box) for '{name}'.")


def offline_mae_names() -> list[str]:
    """The named MAEs (`MAE_SOURCES`: with their decoder, so they can reconstruct) that need no download: bundled
    and present, or fetched before."""
    from ssl_core.models.registry import BUNDLED_DIR, MAE_SOURCES

    def ready(source) -> bool:
        if source.kind == "bundled":
            return (BUNDLED_DIR / source.location).is_file()
        if source.kind == "url":
            return _url_cache_path(source.location).is_file()
        return hf_cached_file(source.location, _hub_filenames(None)) is not None \
            and hf_cached_file(source.location, ["config.json"]) is not None  # the weights and the config

    return [source.name for source in MAE_SOURCES.values() if ready(source)]


# --------------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat {key: tensor} dict from a .safetensors or (safely unpickled) torch file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the weights file is empty")
    with open(path, "rb") as f:
        head = f.read(512)
    not_weights = describe_non_checkpoint(head, path.suffix == ".safetensors")
    if not_weights:
        raise CheckpointError(f"{path}: not a checkpoint: {not_weights}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (every reader failure becomes one clear error)
        raise CheckpointError(f"{path}: cannot read weights: {_reader_failure(err)}") from None
    return unwrap_state_dict(obj, str(path))


def describe_non_checkpoint(head: bytes, safetensors: bool) -> str:
    """What a file that cannot be a checkpoint starts like, from its first bytes ("" when it could be one)."""
    from ssl_core.data.images import sniff_format  # the image signatures image loading knows

    if safetensors:
        if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
            return ""
    elif head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05") \
            or head[257:262] == b"ustar":  # torch zip, legacy pickle, legacy tar
        return ""
    image = sniff_format(head)
    if image:
        return f"it starts like a {image} image"
    for magic, kind in ((b"PK\x03\x04", "a zip archive (a PyTorch checkpoint? name it .pth)"),
                        (b"%PDF", "a PDF document"), (b"\x1f\x8b", "gzip-compressed data (unpack it first)"),
                        (b"\x80", "a Python pickle")):
        if head.startswith(magic):
            return f"it starts like {kind}"
    if head[8:9] == b"{" and not safetensors:
        return "it starts like a .safetensors file (name it .safetensors)"
    if head.lstrip()[:1] in (b"<", b"{", b"[") or all(32 <= c < 127 or c in (9, 10, 13) for c in head[:64]):
        return "it is text, not tensors"
    return f"unrecognised bytes (it starts with {head[:8].hex(' ')})"


def _reader_failure(err: Exception) -> str:
    """The useful line of a safetensors or torch.load failure; pickled objects named as such."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    useful = [line for line in lines if not line.startswith(boilerplate)] or lines or [type(err).__name__]
    text = useful[0][:300]
    if "GLOBAL" in str(err) or "Unsupported global" in str(err):
        return f"it holds pickled Python objects, which are not loaded for safety ({text})"
    return f"the file is damaged or not a PyTorch checkpoint ({text})"


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} for other files or unreadable ones)."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001  (unreadable files are reported by read_state_dict)
        return {}


def unwrap_state_dict(obj: object, name: str) -> dict[str, torch.Tensor]:
    """Descend into training checkpoints ({'model': ...}, {'state_dict': ...}, {'teacher': ...})."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        for key in ("model", "state_dict", "teacher", "module", "target_encoder", "encoder"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    raise CheckpointError(f"{name}: no state dict of tensors found (top-level keys: {_list(obj)})")


def _list(obj: object, n: int = 8) -> str:
    keys = list(obj.keys()) if isinstance(obj, Mapping) else [type(obj).__name__]
    return ", ".join(map(str, keys[:n])) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def file_fingerprint(path: str | os.PathLike) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- remapping
def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def remap_mocov3(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MoCo v3: keep the base encoder (``module.base_encoder.``), drop its projection head."""
    for prefix in ("module.base_encoder.", "base_encoder.", "module."):
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = _strip_prefix(state_dict, prefix)
            break
    return {k: v for k, v in state_dict.items() if not k.startswith("head.")}


def remap_ibot(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """iBOT: teacher backbone (``module.``/``backbone.`` prefixes), no DINO/iBOT heads, no mask token."""
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if not k.startswith("head.") and k != "masked_embed"}


REMAPS = {"timm": lambda sd: sd, "mocov3": remap_mocov3, "ibot": remap_ibot}


def fit_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], checkpoint_format: str = "timm",
                   name: str = "checkpoint") -> list[str]:
    """Load ``state_dict`` into ``model`` or refuse it whole; returns the checkpoint keys that were ignored.

    The model's own timm ``checkpoint_filter_fn`` runs first (it converts DINOv2, OpenAI CLIP, BEiT ...
    layouts and resamples position embeddings). Every parameter and persistent buffer of the model must
    then be present with the right shape, else `CheckpointError` names what is missing or mismatched and
    the model is left untouched.
    """
    state_dict = REMAPS[checkpoint_format](dict(state_dict))
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = _strip_prefix(state_dict, "module.")
    check_patch_size(model, state_dict, name)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{name}: does not fit {type(model).__name__}: {err}") from None
    expected = model.state_dict()
    check_fits(expected, state_dict, f"{name} does not fit this model ({type(model).__name__})")
    own_parts = {k.split(".")[0] for k in expected}
    foreign = [k for k in state_dict if k not in expected and k.split(".")[0] in own_parts]
    if foreign:  # e.g. blocks.6-11 of a deeper model: loading would silently drop half of it
        raise CheckpointError(f"{name} does not fit this model ({type(model).__name__}): it has {len(foreign)} weights "
                              f"for parts this model does not have: {', '.join(foreign[:6])}"
                              + (" ..." if len(foreign) > 6 else "") + " (a larger architecture?)")
    ignored = [k for k in state_dict if k not in expected]
    model.load_state_dict({k: state_dict[k] for k in expected}, strict=True)
    return ignored


def check_patch_size(model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse weights made for another patch size (timm would silently resample the patch embedding)."""
    kernel = state_dict.get("patch_embed.proj.weight")
    own = getattr(getattr(getattr(model, "patch_embed", None), "proj", None), "weight", None)
    if kernel is not None and own is not None and kernel.ndim == 4 and kernel.shape[-2:] != own.shape[-2:]:
        raise CheckpointError(f"{name} was trained with {kernel.shape[-1]}-pixel patches; this model "
                              f"({type(model).__name__}) uses {own.shape[-1]}-pixel patches")


def check_fits(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise `CheckpointError` ("<what>: N missing keys: ...; keys of the wrong shape: ...") unless every
    expected key is in ``state_dict`` with the expected shape."""
    missing = [k for k in expected if k not in state_dict]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (model wants {tuple(v.shape)})"
             for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {', '.join(missing[:12])}" + (" ..." if len(missing) > 12 else ""))
    if wrong:
        parts.append(f"{len(wrong)} keys of the wrong shape: {', '.join(wrong[:5])}" + (" ..." if len(wrong) > 5 else ""))
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts))


# --------------------------------------------------------------------------------------------------- fetching
def _hub_endpoint_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _offline_env() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "PATCHLENS_OFFLINE"))


def check_reachable(host: str, port: int = 443, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host opens within the timeout, else the reason it did not."""
    if _offline_env():
        return "offline mode is set (HF_HUB_OFFLINE / PATCHLENS_OFFLINE)"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot reach {host} ({err.strerror or type(err).__name__})"


def fetch_hub_weights(spec: ModelSpec) -> Path:
    """The local path of a timm hub model's weights: from the Hugging Face cache, else downloaded."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.hub_id)
    if cfg is None:
        raise ModelUnavailable(f"'{spec.hub_id}' has no pretrained weights in timm. {offline_hint(spec.name)}")
    if cfg.hf_hub_id:
        return _fetch_from_hf(spec, cfg.hf_hub_id, cfg.hf_hub_filename)
    if cfg.url:
        return fetch_url(spec, cfg.url)
    raise ModelUnavailable(f"timm names no download for '{spec.hub_id}'. {offline_hint(spec.name)}")


def _hub_filenames(filename: str | None) -> list[str]:
    """The files timm would read from a hub repository, safetensors first."""
    return [filename] if filename else ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"]


def hf_cached_file(repo_id: str, filenames: list[str]) -> Path | None:
    """The first of ``filenames`` that the Hugging Face cache holds for ``repo_id`` (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):
            return Path(cached)
    return None


def _fetch_from_hf(spec: ModelSpec, repo_id: str, filename: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    candidates = _hub_filenames(filename)
    cached = hf_cached_file(repo_id, candidates)
    if cached is not None:
        return cached
    reason = check_reachable(_hub_endpoint_host())
    if reason is None:
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
        errors = []
        for candidate in candidates:
            try:
                return Path(hf_hub_download(repo_id, candidate))
            except Exception as err:  # noqa: BLE001
                errors.append(f"{candidate}: {type(err).__name__}")
        reason = "download failed (" + "; ".join(errors) + ")"
    raise ModelUnavailable(
        f"Could not fetch the weights of '{spec.name}' ({spec.hub_id}) from the Hugging Face Hub "
        f"(repository {repo_id}): {reason}. {offline_hint(spec.name, mae=spec.arch == MAE_SPEC_ARCH)}"
    )


def _url_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def fetch_url(spec: ModelSpec, url: str) -> Path:
    """Download a checkpoint URL into torch's hub cache (or find it there)."""
    target = _url_cache_path(url)
    if target.is_file() and target.stat().st_size > 0:
        return target
    reason = check_reachable(urlparse(url).hostname or "", 443)
    if reason is None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), progress=True)
            return target
        except Exception as err:  # noqa: BLE001
            reason = f"download failed ({type(err).__name__}: {err})"
    raise ModelUnavailable(
        f"Could not fetch the weights of '{spec.name}' from {url}: {reason}. "
        f"{offline_hint(spec.name, mae=spec.arch == MAE_SPEC_ARCH)}"
    )


def resolve_weights_file(spec: ModelSpec, weights: str | os.PathLike | None) -> Path | None:
    """Which file holds the weights: the user's file, the bundled file, a cached/downloaded one, or none."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"weights file not found: {path}")
        return path
    if spec.source == "random":
        return None
    if spec.source == "bundled":
        if spec.bundled_path and spec.bundled_path.is_file():
            return spec.bundled_path
        raise ModelUnavailable(
            f"the bundled weights of '{spec.name}' are missing ({spec.bundled_path}); reinstall PatchLens "
            f"or train them with `patchlens train`."
        )
    if spec.source == "url":
        return fetch_url(spec, spec.url)
    return fetch_hub_weights(spec)


def available_offline(spec: ModelSpec) -> bool:
    """Whether a spec's weights can be had without the network (bundled, random, or already cached)."""
    if spec.source == "random":
        return True
    if spec.source == "bundled":
        return spec.trained
    if spec.source == "url":
        return _url_cache_path(spec.url).is_file()
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.hub_id)
    if cfg is None or not cfg.hf_hub_id:
        return False
    return hf_cached_file(cfg.hf_hub_id, _hub_filenames(cfg.hf_hub_filename)) is not None
