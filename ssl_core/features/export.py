"""Writing patch features to files others can read: ``.npz`` (numpy) and Parquet (one row per patch).

``.npz`` layout written by `save_features_npz` (N images, T patches in all, D channels, P prefix tokens):

==================== ============== ==============================================================
key                  shape          meaning
==================== ============== ==============================================================
names                [N] str        image names, in input order (failed images are left out)
grid_hw              [N, 2] int     patch grid (rows, columns) of each image
patch_offsets        [N+1] int      image i's patches are rows ``patch_offsets[i]:patch_offsets[i+1]``,
                                    in row-major order (patch (r, c) is row ``r * w + c``)
patch_tokens         [T, D] f32     last-layer patch tokens, after the model's final norm
prefix_tokens        [N, P, D] f32  class token first, then register tokens (last layer, normed)
image_embedding      [N, D] f32     the model's image embedding (class token or pooled, pre-logits)
layer_{k}_tokens     [T, D] f32     residual stream after block k (0-based), not normed; per --layers
layer_{k}_prefix     [N, P, D] f32  prefix tokens after block k
patch_size           []             patch size in pixels of the processed image
image_hw             [N, 2] int     processed image size (H, W) = grid * patch size
failed               [M] str        "name: reason" for every input that was skipped
meta                 [] str (JSON)  model name, timm architecture, weights, fingerprint, image size,
                                    registers, class token, versions
==================== ============== ==============================================================
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ssl_core.features.encoder import Encoder, PatchFeatures
from ssl_core.features.facets import FacetTokens


def features_meta(encoder: Encoder) -> dict:
    """What the ``meta`` entry records: model, weights and their fingerprint, image size, prefix tokens, versions."""
    import timm

    return {
        "model": encoder.name, "arch": encoder.spec.arch, "weights": encoder.weights_label,
        "fingerprint": encoder.fingerprint, "model_key": encoder.key, "image_size": encoder.spec.image_size,
        "num_registers": encoder.num_registers, "has_class_token": encoder.has_class_token,
        "trained": encoder.trained, "torch": torch.__version__, "timm": timm.__version__, "format": 1,
    }


def save_features_npz(path: str | os.PathLike, names: Sequence[str], features: Sequence[PatchFeatures],
                      encoder: Encoder, layers: Sequence[int] = (), failed: Sequence[str] = (),
                      facets: Sequence[FacetTokens] = ()) -> Path:
    """Write features in the documented layout (see the module docstring); atomic (temp file, rename).

    ``facets``: one `FacetTokens` per image (the same facet and block for all), saved as
    ``facet_{facet}_{block}_tokens`` [T, D] and ``facet_{facet}_{block}_prefix`` [N, P, D]."""
    path = Path(path)
    grids = np.array([f.grid_hw for f in features], dtype=np.int64).reshape(-1, 2)
    offsets = np.concatenate([[0], np.cumsum(grids.prod(1))]).astype(np.int64)
    dim = encoder.embed_dim
    arrays: dict[str, np.ndarray] = {
        "names": np.array(list(names), dtype=str),
        "grid_hw": grids,
        "patch_offsets": offsets,
        "patch_tokens": _stack_tokens([f.patch_tokens for f in features], dim),
        "prefix_tokens": _stack_prefix([f.prefix_tokens for f in features], dim),
        "image_embedding": np.stack([f.image_embedding.numpy() for f in features]) if features else np.zeros((0, dim), np.float32),
        "patch_size": np.array(encoder.patch_size),
        "image_hw": np.array([f.image.shape[:2] for f in features], dtype=np.int64).reshape(-1, 2),
        "failed": np.array(list(failed), dtype=str),
        "meta": np.array(json.dumps(features_meta(encoder))),
    }
    for k in layers:
        arrays[f"layer_{k}_tokens"] = _stack_tokens([f.tokens(k) for f in features], dim)
        arrays[f"layer_{k}_prefix"] = _stack_prefix([f.layer_prefix_tokens[k] for f in features], dim)
    if facets:
        key = f"facet_{facets[0].facet}_{facets[0].block}"
        arrays[f"{key}_tokens"] = _stack_tokens([f.patch_tokens for f in facets], dim)
        arrays[f"{key}_prefix"] = _stack_prefix([f.prefix_tokens for f in facets], dim)
    return write_npz(path, arrays)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to a .npz file atomically (a temp file, then one rename: readers see old or new, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _stack_tokens(grids: Sequence[torch.Tensor], dim: int) -> np.ndarray:
    """Token grids [h, w, D] of the images -> all their patches, row-major per image: [T, D] float32."""
    if not grids:
        return np.zeros((0, dim), np.float32)
    return np.concatenate([g.reshape(-1, g.shape[-1]).numpy() for g in grids]).astype(np.float32)


def _stack_prefix(prefixes: Sequence[torch.Tensor], dim: int) -> np.ndarray:
    """Prefix tokens [P, D] of the images -> [N, P, D] float32."""
    if not prefixes:
        return np.zeros((0, 0, dim), np.float32)
    return np.stack([p.numpy() for p in prefixes]).astype(np.float32)


def load_features_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file written by `save_features_npz` (meta parsed from JSON): {key: array}, shapes as in the
    module docstring (e.g. patch_tokens [T, D], grid_hw [N, 2])."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


def image_patches(data: dict[str, np.ndarray], index: int, key: str = "patch_tokens") -> np.ndarray:
    """Image ``index``'s patch tokens from a loaded file, as a grid [h, w, D]."""
    start, stop = data["patch_offsets"][index], data["patch_offsets"][index + 1]
    h, w = data["grid_hw"][index]
    return data[key][start:stop].reshape(h, w, -1)


def save_patch_table(path: str | os.PathLike, names: Sequence[str], grids: Sequence, extra: dict | None = None) -> Path:
    """One row per patch in Parquet: image, row, col, embedding (list of floats) and extra per-patch columns.

    grids: per image a [h, w, D] array/tensor. extra: {column: per image a [h, w] array}.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, rows, cols, vectors = [], [], [], []
    columns: dict[str, list] = {k: [] for k in (extra or {})}
    for i, (name, grid) in enumerate(zip(names, grids)):
        g = np.asarray(grid, dtype=np.float32)
        h, w, d = g.shape
        images += [name] * (h * w)
        rr, cc = np.divmod(np.arange(h * w), w)
        rows += rr.tolist()
        cols += cc.tolist()
        vectors.append(g.reshape(-1, d))
        for k, per_image in (extra or {}).items():
            columns[k] += np.asarray(per_image[i]).reshape(-1).tolist()
    flat = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1] if flat.size else 1)
    table = pa.table({"image": images, "row": rows, "col": cols, **columns, "embedding": embedding})
    path = Path(path)
    pq.write_table(table, path)
    return path
