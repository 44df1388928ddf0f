"""The 2025-26 encoder families on random weights: tokens, prefix split, attention and rollout, at two aspect ratios.

References: timm's own ``forward_features`` for the tokens, and softmax(q·kᵀ) recomputed from each block's input
(`ssl_core.features.facets`, rotary embeddings applied) for the captured attention weights.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_core import load_encoder
from ssl_core.analyses.attention import rollout
from ssl_core.errors import BadRequest
from ssl_core.features.attention_hooks import capture_attention
from ssl_core.features.encoder import Encoder, build_model
from ssl_core.features.facets import attention_from_qkv, capture_qkv, facet_tokens, query_key_value
from ssl_core.models.registry import all_specs, resolve_spec, with_image_size

# the smallest member of each new family, at a small image size (random weights: no download)
FAMILIES = {
    "dinov3-vits16": dict(image_size=64, prefix=5, registers=4, cls=True),
    "siglip2-vitb16-224": dict(image_size=48, prefix=0, registers=0, cls=False),
    "pe-spatial-t16": dict(image_size=64, prefix=1, registers=0, cls=True),
    "pe-core-t16": dict(image_size=64, prefix=1, registers=0, cls=True),
    "eva02-vitt14": dict(image_size=56, prefix=1, registers=0, cls=True),
    "tipsv2-vitb14": dict(image_size=42, prefix=2, registers=1, cls=True),
    "aimv2-vitl14": dict(image_size=56, prefix=0, registers=0, cls=False),
}
# families whose smallest member is large, built as the same timm class with a small width and depth (timm's
# model functions let keyword arguments override their architecture's)
SMALL = {"aimv2-vitl14": dict(depth=3, embed_dim=64, num_heads=2)}
SHAPES = {"wide": (70, 150), "tall": (130, 64)}  # (height, width) before resizing


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    name = request.param
    if name not in SMALL:
        return name, load_encoder(name, pretrained=False, device="cpu", image_size=FAMILIES[name]["image_size"],
                                  cache=None)
    spec = with_image_size(resolve_spec(name), FAMILIES[name]["image_size"])
    spec = replace(spec, create_kwargs={**spec.create_kwargs, **SMALL[name]})
    model, dynamic = build_model(spec)
    return name, Encoder(spec, model, dynamic, None, torch.device("cpu"), cache=None)


def test_small_stand_ins_are_their_family_s_timm_class() -> None:
    import timm

    for name, small in SMALL.items():
        spec = resolve_spec(name)
        with torch.device("meta"):  # the full size's structure, without allocating its weights
            full = timm.create_model(spec.hub_id.split(".")[0], pretrained=False)
        stand_in, _ = build_model(replace(spec, create_kwargs=small))
        assert type(stand_in) is type(full) and len(stand_in.blocks) == small["depth"]
        assert type(stand_in.blocks[0].mlp) is type(full.blocks[0].mlp)  # AIMv2: SwiGLU
        assert type(stand_in.norm) is type(full.norm)  # AIMv2: RmsNorm


def test_every_family_has_short_names() -> None:
    families = {s.family for s in all_specs()}
    for family in ("DINOv3", "SigLIP 2", "Perception Encoder (spatial)", "Perception Encoder (core)", "EVA-02",
                   "AIMv2", "TIPSv2"):
        assert family in families
    assert resolve_spec("dinov3-vitb16").hub_id == "vit_base_patch16_dinov3.lvd1689m"
    assert resolve_spec("siglip2-vitb16-384").image_size == 384


def test_prefix_split(family) -> None:
    name, encoder = family
    expected = FAMILIES[name]
    assert (encoder.num_prefix_tokens, encoder.num_registers, encoder.has_class_token) == (
        expected["prefix"], expected["registers"], expected["cls"])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_tokens_match_timm_forward_features(family, shape: str) -> None:
    name, encoder = family
    image = picture(*SHAPES[shape])
    [features] = encoder.extract([image])
    h, w = features.grid_hw
    assert (h > w) == (shape == "tall")
    x = encoder.to_tensor(encoder.prepare(image))[None]
    with torch.inference_mode():
        reference = encoder.model.forward_features(x)[0]  # [P + h*w, D]
    P = encoder.num_prefix_tokens
    assert features.patch_tokens.shape == (h, w, encoder.embed_dim)
    torch.testing.assert_close(features.patch_tokens.reshape(h * w, -1), reference[P:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features.prefix_tokens, reference[:P], atol=1e-4, rtol=1e-4)
    assert features.register_tokens.shape[0] == encoder.num_registers
    if encoder.has_class_token:
        torch.testing.assert_close(features.cls_token, reference[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_attention_matches_own_softmax_qk(family, shape: str) -> None:
    """The captured weights equal softmax(q·kᵀ·scale) recomputed from each block's input (rotary applied)."""
    name, encoder = family
    image = picture(*SHAPES[shape], seed=1)
    x = encoder.to_tensor(encoder.prepare(image))[None]
    model = encoder.model
    blocks = list(range(len(model.blocks)))
    with torch.inference_mode(), capture_qkv(model, blocks) as qkv, capture_attention(model) as captured:
        model.forward_features(x)
    T = encoder.num_prefix_tokens + (x.shape[-2] // encoder.patch_size) * (x.shape[-1] // encoder.patch_size)
    assert len(captured) == len(blocks)
    for b in blocks:
        q, k, _ = qkv[b]
        own = attention_from_qkv(q, k, model.blocks[b].attn.scale)  # [1, heads, T, T]
        assert own.shape == (1, encoder.num_heads, T, T)
        torch.testing.assert_close(captured[b], own, atol=2e-5, rtol=1e-4)


def test_attention_and_rollout_shapes(family) -> None:
    name, encoder = family
    [features] = encoder.extract([picture(*SHAPES["wide"], seed=2)], attention=True)
    L, T = encoder.depth, encoder.num_prefix_tokens + features.grid_hw[0] * features.grid_hw[1]
    assert features.attention.shape == (L, encoder.num_heads, T, T)
    torch.testing.assert_close(features.attention.sum(-1), torch.ones(L, encoder.num_heads, T))
    rolled = rollout(features.attention)
    assert rolled.shape == (T, T)
    torch.testing.assert_close(rolled.sum(-1), torch.ones(T))


def test_rotary_matters_for_dinov3() -> None:
    """Without the rotary embeddings, the recomputed attention would differ: the reference really applies them."""
    encoder = load_encoder("dinov3-vits16", pretrained=False, device="cpu", image_size=64, cache=None)
    x = encoder.to_tensor(encoder.prepare(picture(*SHAPES["wide"])))[None]
    attn = encoder.model.blocks[0].attn
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0], rope=kw.get("rope")), with_kwargs=True)
    with torch.inference_mode(), capture_attention(encoder.model) as captured:
        encoder.model.forward_features(x)
    hook.remove()
    assert seen["rope"] is not None
    with torch.inference_mode():
        q, k, _ = query_key_value(attn, seen["x"], None)
    assert not torch.allclose(attention_from_qkv(q, k, attn.scale), captured[0], atol=1e-3)


def test_facets(family) -> None:
    name, encoder = family
    image = picture(*SHAPES["tall"], seed=3)
    [key] = facet_tokens(encoder, [image], "key", block=-1)
    [token] = facet_tokens(encoder, [image], "token", block=-1)
    h, w = key.grid_hw
    assert key.patch_tokens.shape == (h, w, encoder.embed_dim)
    assert key.prefix_tokens.shape == (encoder.num_prefix_tokens, encoder.embed_dim)
    [features] = encoder.extract([image], layers=[-1])
    torch.testing.assert_close(token.patch_tokens, features.layer_tokens[encoder.depth - 1])
    assert not torch.allclose(key.patch_tokens, token.patch_tokens)


def test_naflex_is_refused_clearly(monkeypatch) -> None:
    import ssl_core.features.encoder as encoder_module

    with pytest.raises(BadRequest, match="NaFlexViT"):
        load_encoder("naflexvit_base_patch16_siglip.v2_webli", pretrained=False, device="cpu", cache=None)
    monkeypatch.setattr(encoder_module, "resolve_weights_file", lambda *a: pytest.fail("fetched before refusing"))
    with pytest.raises(BadRequest, match="NaFlexViT"):  # refused before its weights are fetched
        load_encoder("naflexvit_base_patch16_siglip.v2_webli", device="cpu", cache=None)
