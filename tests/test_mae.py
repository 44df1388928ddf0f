"""The MAE: official and Hugging Face layouts load whole and match a forward written out by hand; bad files refused."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core import CheckpointError, load_encoder
from ssl_core.mim.mae import MAEConfig, build_mae, mae_from_config, official_state_dict, patchify, save_mae, unpatchify
from ssl_core.mim.mae_checkpoints import load_mae

# ViT-Ti width so the head counts come from the table of released sizes, as they do for real official files.
TINY = MAEConfig(embed_dim=192, depth=2, num_heads=3, patch_size=8, img_size=32, decoder_dim=128, decoder_depth=1,
                 decoder_heads=4)
HF_EPS = 1e-12


def random_mae(config: MAEConfig = TINY, seed: int = 0):
    torch.manual_seed(seed)
    mae = mae_from_config(config).eval()
    with torch.no_grad():  # nothing left at its (often zero) initial value: every key matters
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return mae


def reference_forward(sd: dict[str, torch.Tensor], imgs: torch.Tensor, hidden: torch.Tensor, heads: int,
                      decoder_heads: int, eps: float) -> torch.Tensor:
    """MAE written out with torch.nn.functional from an official-layout state dict. hidden: [N, L] bool."""
    def block(x, pre, num_heads):
        N, T, D = x.shape
        h = F.layer_norm(x, (D,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], eps)
        q, k, v = F.linear(h, sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"]).reshape(
            N, T, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // num_heads), dim=-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(N, T, D), sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        h = F.layer_norm(x, (D,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], eps)
        h = F.linear(F.gelu(F.linear(h, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
                     sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
        return x + h

    p = sd["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(imgs, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    tokens = tokens + sd["pos_embed"][:, 1:]
    cls = sd["cls_token"] + sd["pos_embed"][:, :1]
    preds = []
    for n in range(imgs.shape[0]):
        x = torch.cat([cls[0], tokens[n][~hidden[n]]])[None]
        for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
            x = block(x, f"blocks.{i}.", heads)
        x = F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps)
        y = F.linear(x, sd["decoder_embed.weight"], sd["decoder_embed.bias"])[0]
        full = sd["mask_token"][0].repeat(hidden.shape[1], 1)
        full[~hidden[n]] = y[1:]
        z = torch.cat([y[:1], full])[None] + sd["decoder_pos_embed"]
        for i in range(len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})):
            z = block(z, f"decoder_blocks.{i}.", decoder_heads)
        z = F.layer_norm(z, (z.shape[-1],), sd["decoder_norm.weight"], sd["decoder_norm.bias"], eps)
        preds.append(F.linear(z, sd["decoder_pred.weight"], sd["decoder_pred.bias"])[0, 1:])
    return torch.stack(preds)


def to_hf_layout(sd: dict[str, torch.Tensor], decoder_layers: str = "decoder.decoder_layers") -> dict[str, torch.Tensor]:
    """Official -> Hugging Face ViTMAEForPreTraining keys, as transformers' convert_vit_mae_to_pytorch does
    (transformers 5 saves the decoder blocks as ``decoder.decoder_encoder.layer.N``)."""
    out = {}
    for key, value in sd.items():
        if ".attn.qkv." in key:
            stack, index, *_, kind = key.split(".")
            prefix = f"vit.encoder.layer.{index}" if stack == "blocks" else f"{decoder_layers}.{index}"
            for name, part in zip(["query", "key", "value"], value.chunk(3, dim=0)):
                out[f"{prefix}.attention.attention.{name}.{kind}"] = part.clone()
            continue
        name = key
        for old, new in [("decoder_pos_embed", "decoder.decoder_pos_embed"), ("mask_token", "decoder.mask_token"),
                         ("cls_token", "vit.embeddings.cls_token"), ("patch_embed.proj", "vit.embeddings.patch_embeddings.projection"),
                         ("decoder_blocks", decoder_layers), ("attn.proj", "attention.output.dense"),
                         ("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                         ("mlp.fc2", "output.dense"), ("decoder_embed", "decoder.decoder_embed"),
                         ("decoder_norm", "decoder.decoder_norm"), ("decoder_pred", "decoder.decoder_pred")]:
            name = name.replace(old, new)
        if name == "pos_embed":
            name = "vit.embeddings.position_embeddings"
        elif name.startswith("blocks."):
            name = "vit.encoder.layer." + name[len("blocks."):]
        elif name in ("norm.weight", "norm.bias"):
            name = "vit.layernorm." + name.split(".")[1]
        out[name] = value.clone()
    return out


def fixed_mask(n: int = 2, num_patches: int = 16, hidden: int = 12, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_patches, generator=g) < hidden for _ in range(n)])


def test_patchify_unpatchify_round_trip_exactly_in_mae_order():
    imgs = torch.randn(2, 3, 16, 24)
    x = patchify(imgs, 8)
    assert x.shape == (2, 6, 192)
    assert torch.equal(unpatchify(x, 8, (2, 3)), imgs)
    # patch (0, 1) holds pixels [0:8, 8:16] in (row, col, channel) order, as MAE's einsum 'nchpwq->nhwpqc'
    assert torch.equal(x[0, 1], imgs[0, :, 0:8, 8:16].permute(1, 2, 0).reshape(-1))


def test_official_layout_file_loads_whole_and_matches_a_hand_run_forward(tmp_path):
    mae = random_mae()
    sd = {k: v.clone() for k, v in official_state_dict(mae).items()}
    path = tmp_path / "mae_visualize_tiny.pth"
    torch.save({"model": sd, "epoch": 3}, path)  # as the MAE release: state dict under "model"
    loaded = load_mae(path)
    assert (loaded.norm_pix_loss, loaded.patch_size, loaded.img_size) == (False, 8, 32)
    imgs, hidden = torch.randn(2, 3, 32, 32), fixed_mask()
    with torch.no_grad():
        loss, pred, mask = loaded(imgs, mask=hidden)
        expected = reference_forward(sd, imgs, hidden, heads=3, decoder_heads=4, eps=1e-6)
    assert torch.equal(mask.bool(), hidden)
    torch.testing.assert_close(pred, expected, atol=1e-5, rtol=1e-5)
    target = patchify(imgs, 8)
    torch.testing.assert_close(loss, ((expected - target) ** 2).mean(-1)[hidden].mean(), atol=1e-5, rtol=1e-5)


def write_hf_repo(folder, decoder_layers: str = "decoder.decoder_layers") -> dict[str, torch.Tensor]:
    """A tiny ViTMAEForPreTraining repository as the Hub serves it (model.safetensors + config.json); its weights
    in the official layout are returned."""
    from safetensors.torch import save_file

    mae = random_mae(MAEConfig(**{**TINY.__dict__, "norm_eps": HF_EPS}), seed=1)
    sd = {k: v.clone() for k, v in official_state_dict(mae).items()}
    folder.mkdir(parents=True)
    save_file(to_hf_layout(sd, decoder_layers), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "vit_mae", "hidden_size": 192, "num_attention_heads": 3, "decoder_hidden_size": 128,
        "decoder_num_attention_heads": 4, "layer_norm_eps": HF_EPS, "norm_pix_loss": False}))
    return sd


@pytest.mark.parametrize("decoder_layers", ["decoder.decoder_layers", "decoder.decoder_encoder.layer"])
def test_hugging_face_layout_loads_with_its_eps_and_matches_a_hand_run_forward(tmp_path, decoder_layers):

    sd = write_hf_repo(tmp_path / "vit-mae-tiny", decoder_layers)
    loaded = load_mae(tmp_path / "vit-mae-tiny" / "model.safetensors")
    assert loaded.encoder.norm.eps == HF_EPS and loaded.decoder_blocks[0].norm1.eps == HF_EPS
    imgs, hidden = torch.randn(2, 3, 32, 32), fixed_mask(seed=5)
    with torch.no_grad():
        _, pred, _ = loaded(imgs, mask=hidden)
        expected = reference_forward(sd, imgs, hidden, heads=3, decoder_heads=4, eps=HF_EPS)
    torch.testing.assert_close(pred, expected, atol=1e-5, rtol=1e-5)
    for key, value in sd.items():  # q, k, v went back into qkv rows in order
        torch.testing.assert_close(official_state_dict(loaded)[key], value, atol=0, rtol=0)


def test_a_hub_mae_in_the_hugging_face_cache_counts_as_offline_and_loads_from_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from ssl_core.models.weights import offline_mae_names

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("PATCHLENS_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--facebook--vit-mae-base"
    assert "mae-vitb16-hf" not in offline_mae_names()
    sd = write_hf_repo(repo / "snapshots" / "0123abc")
    assert "mae-vitb16-hf" not in offline_mae_names()  # no ref to the snapshot yet: the cache does not hold it
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    assert "mae-vitb16-hf" in offline_mae_names() and "mae-vitl16-hf" not in offline_mae_names()
    (repo / "snapshots" / "0123abc" / "config.json").unlink()  # the weights alone cannot be read: not offline
    assert "mae-vitb16-hf" not in offline_mae_names()
    write_hf_repo(tmp_path / "again")
    (repo / "snapshots" / "0123abc" / "config.json").write_bytes((tmp_path / "again" / "config.json").read_bytes())
    loaded = load_mae("mae-vitb16-hf")  # offline, from the cache
    for key, value in sd.items():
        torch.testing.assert_close(official_state_dict(loaded)[key], value, atol=0, rtol=0)


def test_truncated_or_decoderless_checkpoints_are_refused_naming_the_keys(tmp_path):
    sd = official_state_dict(random_mae())
    cut = {k: v for k, v in sd.items() if not k.startswith("decoder_blocks.0.mlp") and k != "blocks.1.norm2.bias"}
    torch.save({"model": cut}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError) as err:
        load_mae(tmp_path / "cut.pth")
    assert "decoder_blocks.0.mlp.fc1.weight" in str(err.value)
    del cut["decoder_pred.weight"]
    torch.save({"model": cut}, tmp_path / "cut2.pth")
    with pytest.raises(CheckpointError, match="decoder_pred.weight"):
        load_mae(tmp_path / "cut2.pth")
    encoder_only = {k: v for k, v in sd.items() if not (k.startswith("decoder") or k == "mask_token")}
    torch.save({"model": encoder_only}, tmp_path / "encoder.pth")
    with pytest.raises(CheckpointError, match="has no MAE decoder.*decoder_embed.weight"):
        load_mae(tmp_path / "encoder.pth")
    wrong = dict(sd, **{"blocks.1.norm2.bias": torch.zeros(7)})
    torch.save({"model": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"blocks.1.norm2.bias \(7,\)"):
        load_mae(tmp_path / "wrong.pth")
    (tmp_path / "short.pth").write_bytes((tmp_path / "wrong.pth").read_bytes()[:5000])  # a truncated file
    with pytest.raises(CheckpointError, match="short.pth"):
        load_mae(tmp_path / "short.pth")


def test_bundled_layout_records_its_config_and_loads_as_a_plain_encoder(tmp_path):
    mae = build_mae(decoder_depth=1).eval()
    assert not mae.encoder.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    path = save_mae(mae, tmp_path / "patchlens-mae.safetensors")
    loaded = load_mae(path)
    assert loaded.arch == "patchlens_vit_tiny_p8" and loaded.norm_pix_loss is True
    imgs, hidden = torch.randn(1, 3, 96, 96), fixed_mask(1, 144, 108)
    with torch.no_grad():
        torch.testing.assert_close(loaded(imgs, mask=hidden)[1], mae(imgs, mask=hidden)[1], atol=0, rtol=0)
    encoder = load_encoder("random-tiny", weights=path, cache=None)  # the decoder keys are ignored
    assert encoder.trained
    for key, value in encoder.model.state_dict().items():
        assert torch.equal(value, mae.encoder.state_dict()[key]), key


def test_random_masking_keeps_the_ratio_and_a_given_mask_overrides_it():
    mae = build_mae(decoder_depth=1).eval()
    imgs = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        _, pred, mask = mae(imgs, mask_ratio=0.75)
        assert pred.shape == (2, 144, 192) and mask.sum(1).tolist() == [108, 108]
        hidden = fixed_mask(2, 144, 20)
        assert torch.equal(mae(imgs, mask=hidden)[2].bool(), hidden)
    with pytest.raises(ValueError, match="same number"):
        mae(imgs, mask=torch.stack([fixed_mask(1, 144, 20)[0], fixed_mask(1, 144, 21)[0]]))
