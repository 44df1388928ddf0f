"""The two stages of embedding a shard, as plain functions that Ray tasks and actors (or one process) call.

    decoded = decode_shard(plan.paths, encoder.policy)             # read + decode + resize: CPU, any worker
    shard = embed_shard(encoder, decoded, layer=None)              # batches through the encoder: an accelerator
    write_shard(root, plan, embedding, shard)                      # ssl_core.scale.shards

They reuse the single-process pipeline's pieces (`ssl_core.features.pipeline.decode_file` and `embed_decoded`,
`ssl_core.data.images.load_image`), so a shard holds exactly the tokens ``PatchIndex.add`` would store for the
same files: unit rows in float16, bad files listed with their reason ("path: reason") and skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ssl_core.data.images import DEFAULT_MAX_PIXELS, ResizePolicy, content_fingerprint, read_image_bytes
from ssl_core.errors import ImageLoadError
from ssl_core.features.encoder import Encoder, load_encoder
from ssl_core.features.patch_table import normalize_rows
from ssl_core.features.pipeline import PipelineConfig, decode_file, embed_decoded
from ssl_core.scale.shards import EmbeddedShard
from ssl_core.search.records import IndexedImage

# one decoded file: ("pixels", path, uint8 [3, H, W], content hash) | ("error", path, "path: reason", "")
Decoded = tuple[str, str, "np.ndarray | str", str]


@dataclass(frozen=True)
class EncoderArgs:
    """How a worker loads the build's encoder (picklable: it travels to Ray actors)."""

    model: str
    weights: str | None = None
    image_size: int | None = None

    def load(self, device: str | torch.device | None = None) -> Encoder:
        return load_encoder(self.model, weights=self.weights, device=device, image_size=self.image_size, cache=None)


def decode_shard(paths: Sequence[str], policy: ResizePolicy, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Decoded]:
    """Read (local path or fsspec URL), hash and decode each file, resized by ``policy``."""
    out: list[Decoded] = []
    for path in paths:
        try:
            data = read_image_bytes(path)
        except ImageLoadError as err:
            out.append(("error", path, str(err), ""))
            continue
        except OSError as err:
            out.append(("error", path, f"{path}: cannot read ({err.strerror or err})", ""))
            continue
        kind, _, payload = decode_file(path, policy, "pil", max_pixels, data=data)
        pixels = payload.numpy() if isinstance(payload, torch.Tensor) else payload  # [3, H, W] uint8 | reason
        out.append((kind, path, pixels, content_fingerprint(data) if kind == "pixels" else ""))
    return out


def embed_shard(encoder: Encoder, decoded: Sequence[Decoded], layer: int | None = None,
                batch_size: int = 16) -> EmbeddedShard:
    """Embed a decoded shard in same-size batches: its images, tokens [n, D] float16 unit rows and failures."""
    hashes = {path: digest for _, path, _, digest in decoded}
    items = ((kind, path, torch.from_numpy(payload) if kind == "pixels" else payload)
             for kind, path, payload, _ in decoded)
    config = PipelineConfig(batch_size=batch_size, layer=layer, workers=0)
    images: list[IndexedImage] = []
    blocks: list[np.ndarray] = []
    failed: list[str] = []
    first = 0
    for batch in embed_decoded(encoder, items, len(decoded), config):
        failed += batch.failed
        for item in batch.items:
            vectors = normalize_rows(item.tokens.float().numpy()).astype(np.float16)  # [h*w, D]
            images.append(IndexedImage(item.path, hashes[item.path], tuple(item.grid_hw), first))
            blocks.append(vectors)
            first += vectors.shape[0]
    tokens = np.concatenate(blocks) if blocks else np.zeros((0, encoder.embed_dim), np.float16)
    return EmbeddedShard(images, tokens, failed)


__all__ = ["EncoderArgs", "Decoded", "decode_shard", "embed_shard"]
