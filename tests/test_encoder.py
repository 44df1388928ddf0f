"""The encoder core on random-weight models of every curated architecture."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_core import CheckpointError, ModelUnavailable, load_encoder
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder, build_model
from ssl_core.models.registry import CURATED, resolve_spec, with_image_size

ARCHS = sorted({(s.hub_id or s.arch) for s in CURATED})


def random_encoder(name: str, image_size: int = 64) -> Encoder:
    spec = with_image_size(resolve_spec(name), image_size)
    model, dynamic = build_model(spec)
    return Encoder(spec, model, dynamic, None, torch.device("cpu"), cache=None)


@pytest.mark.parametrize("name", [s.name for s in CURATED])
def test_grid_shapes_for_odd_sized_images(name, image_333x517):
    encoder = random_encoder(name, image_size=64)
    [features] = encoder.extract([image_333x517], layers=[0])
    p = encoder.patch_size
    width, height = encoder.policy.target_size(517, 333)
    assert features.grid_hw == (height // p, width // p)
    assert features.image.shape == (height, width, 3)
    assert features.patch_tokens.shape == (height // p, width // p, encoder.embed_dim)
    assert features.layer_tokens[0].shape == features.patch_tokens.shape
    assert features.prefix_tokens.shape == (encoder.num_prefix_tokens, encoder.embed_dim)
    assert torch.isfinite(features.patch_tokens).all()
    assert features.image_embedding.ndim == 1


def test_register_tokens_are_split_from_the_class_token(image_333x517):
    encoder = random_encoder("dinov2-vits14-reg", image_size=56)
    [f] = encoder.extract([image_333x517])
    assert encoder.num_registers == 4 and f.num_prefix == 5
    assert torch.equal(f.cls_token, f.prefix_tokens[0])
    assert f.register_tokens.shape == (4, encoder.embed_dim)
    assert torch.equal(f.register_tokens, f.prefix_tokens[1:5])
    # the final tokens are the model's own forward_features, split [prefix | patches]
    x = encoder.to_tensor(encoder.prepare(image_333x517))[None]
    with torch.inference_mode():
        full = encoder.model.forward_features(x)[0]
    assert torch.allclose(full[:5], f.prefix_tokens, atol=1e-5)
    assert torch.allclose(full[5:].reshape(f.patch_tokens.shape), f.patch_tokens, atol=1e-5)


def test_attention_rows_sum_to_one_and_match_a_step_by_step_block(tiny_encoder, image_333x517):
    [f] = tiny_encoder.extract([image_333x517], layers=[0, 1], attention=True)
    h, w = f.grid_hw
    T = f.num_prefix + h * w
    assert f.attention.shape == (tiny_encoder.depth, tiny_encoder.num_heads, T, T)
    assert torch.allclose(f.attention.sum(-1), torch.ones(()), atol=1e-5)
    # recompute block 1's attention by hand from block 0's output tokens
    block = tiny_encoder.model.blocks[1]
    x = torch.cat([f.layer_prefix_tokens[0], f.layer_tokens[0].reshape(h * w, -1)])[None]  # [1, T, D]
    with torch.no_grad():
        qkv = block.attn.qkv(block.norm1(x)).reshape(1, T, 3, block.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]  # [1, heads, T, d]
        manual = F.softmax(q @ k.transpose(-2, -1) * block.attn.scale, dim=-1)[0]
    assert torch.allclose(manual, f.attention[1], atol=1e-5)


def test_attention_does_not_change_tokens_and_fused_path_is_restored(tiny_encoder, image_333x517):
    [plain] = tiny_encoder.extract([image_333x517])
    [with_attention] = tiny_encoder.extract([image_333x517], attention=True)
    assert torch.allclose(plain.patch_tokens, with_attention.patch_tokens, atol=1e-5)
    assert plain.attention is None
    from timm.layers import use_fused_attn
    assert all(b.attn.fused_attn == use_fused_attn() for b in tiny_encoder.model.blocks)


def test_beit_runs_on_non_square_grids_with_attention(image_333x517):
    encoder = random_encoder("beitv2-vitb16", image_size=48)
    assert not encoder.dynamic
    [f] = encoder.extract([image_333x517], attention=True)
    assert f.grid_hw == (3, 5) and f.attention.shape[-1] == 1 + 15


def _perturbed_tiny_state() -> dict[str, torch.Tensor]:
    model, _ = build_model(resolve_spec("random-tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_and_reload_local_weights_gives_identical_tokens(tmp_path, suffix, image_333x517):
    state = _perturbed_tiny_state()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save({"model": state, "epoch": 3}, path)
    source = random_encoder("random-tiny", 96)
    source.model.load_state_dict(state)
    loaded = load_encoder("random-tiny", weights=path, device="cpu", cache=None)
    assert loaded.trained and loaded.fingerprint != "random-seed0"
    [a] = source.extract([image_333x517])
    [b] = loaded.extract([image_333x517])
    assert torch.equal(a.patch_tokens, b.patch_tokens)


class _Payload:
    """Unpickling this would run a shell command: the classic malicious checkpoint."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/patchlens-pwned",))


def test_pickled_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _perturbed_tiny_state(), "payload": _Payload()}, path)
    if os.path.exists("/tmp/patchlens-pwned"):
        os.remove("/tmp/patchlens-pwned")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_encoder("random-tiny", weights=path, cache=None)
    assert not os.path.exists("/tmp/patchlens-pwned")


def test_wrong_checkpoint_is_refused_with_missing_keys(tmp_path):
    from safetensors.torch import save_file
    other, _ = build_model(resolve_spec("dino-vits16"))
    path = tmp_path / "other.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="16-pixel patches"):  # ViT-S/16 into a patch-8 model
        load_encoder("random-tiny", weights=path, cache=None)
    wider, _ = build_model(resolve_spec("random-tiny"), embed_dim=256, num_heads=4)
    save_file(wider.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="keys of the wrong shape: cls_token"):
        load_encoder("random-tiny", weights=path, cache=None)
    truncated = {k: v for k, v in _perturbed_tiny_state().items() if not k.startswith("blocks.5")}
    save_file(truncated, str(path))
    with pytest.raises(CheckpointError, match="missing keys: blocks.5"):
        load_encoder("random-tiny", weights=path, cache=None)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_encoder("random-tiny", weights=tmp_path / "empty.pth", cache=None)


def test_mocov3_and_ibot_checkpoints_are_remapped_onto_timm(tmp_path, image_333x517):
    from ssl_core.models.weights import fit_state_dict
    state = _perturbed_tiny_state()
    moco = {"epoch": 300, "arch": "vit_base", "state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in state.items()},
        **{f"module.momentum_encoder.{k}": v + 1 for k, v in state.items()},
        "module.base_encoder.head.0.weight": torch.zeros(4, 192), "module.predictor.0.weight": torch.zeros(4, 4)}}
    ibot = {"state_dict": {**{f"backbone.{k}": v for k, v in state.items()},
                           "head.mlp.0.weight": torch.zeros(4, 192), "head.last_layer.weight_g": torch.zeros(4, 1)}}
    for fmt, checkpoint in [("mocov3", moco), ("ibot", ibot)]:
        path = tmp_path / f"{fmt}.pth"
        torch.save(checkpoint, path)
        from ssl_core.models.weights import read_state_dict
        model, _ = build_model(resolve_spec("random-tiny"))
        ignored = fit_state_dict(model, read_state_dict(path), fmt)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items()), fmt
        assert not any(k.startswith("blocks") for k in ignored)


def test_offline_load_without_a_file_fails_fast_with_the_promised_message(monkeypatch):
    for offline, endpoint in [("1", None), ("", "https://patchlens-test.invalid")]:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        if endpoint:
            monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HOME", os.environ.get("PYTEST_EMPTY_HF_HOME", "/nonexistent-patchlens-hf-home"))
        start = time.monotonic()
        with pytest.raises(ModelUnavailable) as info:
            load_encoder("dino-vits16", cache=None)
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert "dino-vits16" in message and "Could not fetch the weights" in message
        assert "bundled model" in message and "--weights FILE" in message


def test_cache_answers_repeat_requests_without_a_forward_pass(image_333x517, monkeypatch):
    from ssl_core.features.cache import LRUCache
    encoder = load_encoder("random-tiny", device="cpu", cache=LRUCache(10**9, lambda f: f.nbytes()))
    calls = []
    original = encoder.forward_batch
    monkeypatch.setattr(encoder, "forward_batch", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    [first] = encoder.extract([image_333x517], layers=[1])
    [again] = encoder.extract([image_333x517.copy()], layers=[1])
    assert again is first and len(calls) == 1
    [more] = encoder.extract([image_333x517], layers=[2], attention=True)  # new settings: one more pass
    assert len(calls) == 2 and {1, 2} <= set(more.layer_tokens) and more.attention is not None
    encoder.extract([image_333x517], layers=[1])
    assert len(calls) == 2


def test_out_of_memory_batches_are_split_and_retried(tiny_encoder, monkeypatch):
    images = [np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8) for i in range(5)]
    expected = [f.patch_tokens for f in tiny_encoder.extract(images)]
    original = tiny_encoder.forward_batch
    tried, ran = [], []

    def small_memory(batch, *args, **kwargs):
        tried.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        ran.append(batch.shape[0])
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(tiny_encoder, "forward_batch", small_memory)
    got = tiny_encoder.extract(images, batch_size=5)
    assert tried[0] == 5 and max(ran) <= 2 and sum(ran) == 5
    assert all(torch.allclose(a, b.patch_tokens, atol=1e-5) for a, b in zip(expected, got))


def test_any_timm_vit_id_is_accepted():
    spec = resolve_spec("vit_small_patch16_224.augreg_in21k")
    assert spec.source == "hub" and spec.arch == "vit_small_patch16_224"
    assert resolve_spec("vit_tiny_patch16_224").hub_id == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    with pytest.raises(BadRequest, match="unknown model"):
        resolve_spec("not_a_model")


def test_a_checkpoint_of_a_deeper_or_differently_patched_model_is_refused(tmp_path):
    from safetensors.torch import save_file
    deeper, _ = build_model(resolve_spec("random-tiny"), depth=8)  # blocks 6 and 7 would be dropped silently
    save_file(deeper.state_dict(), str(tmp_path / "deeper.safetensors"))
    with pytest.raises(CheckpointError, match="parts this model does not have: blocks.6"):
        load_encoder("random-tiny", weights=tmp_path / "deeper.safetensors", cache=None)
    other_patch, _ = build_model(resolve_spec("random-tiny"), patch_size=16)  # timm would resample 16 -> 8
    save_file(other_patch.state_dict(), str(tmp_path / "p16.safetensors"))
    with pytest.raises(CheckpointError, match="16-pixel patches"):
        load_encoder("random-tiny", weights=tmp_path / "p16.safetensors", cache=None)


def test_attention_memory_is_checked_before_a_high_resolution_forward():
    from ssl_core.errors import BadRequest

    encoder = load_encoder("random-tiny", device="cpu", image_size=480, cache=None)  # a 60x60 grid: T = 3601
    image = np.zeros((480, 480, 3), np.uint8)
    per_image = encoder.depth * encoder.num_heads * 3601 ** 2 * 4
    encoder.max_attention_bytes = per_image * 2 + 1
    assert encoder.attention_batch((480, 480), 16) == 2  # batches shrink to what fits
    [features] = encoder.extract([image])  # tokens alone: no limit
    assert features.grid_hw == (60, 60)
    encoder.max_attention_bytes = per_image - 1
    with pytest.raises(BadRequest, match="attention maps of a 60x60 patch grid need"):
        encoder.extract([image], attention=True)


def test_building_a_model_leaves_the_callers_random_streams_alone(monkeypatch):
    """A random-init model is the same every time, drawn from a forked CPU generator: the caller's CPU stream goes on
    where it was and no GPU generator is reseeded (torch.manual_seed would reseed them all, outside the fork, and a
    training run's seed would stop applying to its GPU draws, such as DILEMMA's token swaps)."""
    reseeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    torch.manual_seed(7)
    reseeded.clear()
    expected_next = torch.rand(3, generator=torch.Generator().manual_seed(7))
    first, _ = build_model(resolve_spec("random-tiny"))
    assert torch.equal(torch.rand(3), expected_next) and reseeded == []
    second, _ = build_model(resolve_spec("random-tiny"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_the_sincos_baseline_is_random_tiny_with_maes_position_table_and_its_own_key(tmp_path):
    from safetensors.torch import save_file

    from ssl_core.features.vit_tokens import sincos_pos_embed_2d

    plain = load_encoder("random-tiny", cache=None)
    sincos = load_encoder("random-tiny-sincos", cache=None)
    assert not sincos.trained and sincos.key != plain.key  # caches and index manifests tell them apart
    expected = sincos_pos_embed_2d(sincos.embed_dim, (12, 12), 1)  # 96 px / 8: the class token's row is zeros
    torch.testing.assert_close(sincos.model.pos_embed.detach(), expected.reshape(sincos.model.pos_embed.shape))
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), sincos.model.state_dict().items()):
        assert torch.equal(a, b) == (name != "pos_embed"), name  # the same seeded weights but for the positions
    image = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    assert not np.allclose(plain.extract([image])[0].patch_tokens, sincos.extract([image])[0].patch_tokens)
    path = tmp_path / "w.safetensors"  # a weights file replaces the table
    save_file(plain.model.state_dict(), str(path))
    assert torch.equal(load_encoder("random-tiny-sincos", weights=path, cache=None).model.pos_embed,
                       plain.model.pos_embed)
