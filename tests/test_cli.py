"""The command line: model table, and embed with a bad image among good ones."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from app.cli.main import main
from ssl_core.features.export import image_patches, load_features_npz


def test_models_table_lists_curated_names_and_says_untrained(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ["dino-vits16", "dinov2-vitb14-reg", "mae-vitb16", "mocov3-vitb16", "ibot-vitb16", "beitv2-vitb16"]:
        assert name in out
    assert "random-tiny (untrained)" in out
    assert "MAEs with their decoder" in out and "mae-vitb16-visualize  download" in out
    assert "patchlens-mae" in out.split("MAEs with their decoder")[1]
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    dino = next(r for r in rows if r["name"] == "dino-vits16")
    assert dino["params_M"] == 21.7 and dino["offline"] is False
    from ssl_core.models.registry import default_model_name, resolve_spec
    assert [r["name"] for r in rows if r["default"]] == [default_model_name()]
    for row in rows:  # every name is one --model takes
        assert resolve_spec(row["name"]).name == row["name"]
    assert next(r for r in rows if r["name"] == "random-tiny")["trained"] is False
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("patchlens ")


def test_embed_skips_bad_images_and_writes_the_documented_layout(tmp_path, image_file, capsys):
    good_a = image_file("a.png", 64, 96, seed=1)
    good_b = image_file("b.png", 80, 80, seed=2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "feats.npz"
    code = main(["embed", good_a, str(bad), good_b, "--model", "random-tiny", "--layers", "0,-1", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skipped" in err
    data = load_features_npz(out)
    assert list(data["names"]) == [good_a, good_b]
    assert len(data["failed"]) == 1 and "broken.jpg" in data["failed"][0]
    grids = data["grid_hw"]
    assert grids.tolist() == [[12, 18], [12, 12]]
    assert data["patch_offsets"].tolist() == [0, 216, 360]
    assert data["patch_tokens"].shape == (360, 192)
    assert data["layer_0_tokens"].shape == (360, 192) and data["layer_5_tokens"].shape == (360, 192)
    assert data["prefix_tokens"].shape == (2, 1, 192)
    assert data["meta"]["model"] == "random-tiny" and data["meta"]["trained"] is False
    from ssl_core import load_encoder
    [f] = load_encoder("random-tiny", cache=None).extract([good_b])
    np.testing.assert_allclose(image_patches(data, 1), f.patch_tokens.numpy(), atol=1e-5)


def test_console_script_runs_and_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app.cli.main", "embed", str(tmp_path / "missing.png"),
                             "--model", "no-such-model", "--out", str(tmp_path / "x.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown model 'no-such-model'" in result.stderr and "Traceback" not in result.stderr


def test_embed_saves_a_facet(tmp_path, image_file):
    from ssl_core import load_encoder
    from ssl_core.features.facets import capture_qkv

    picture = image_file("c.png", 70, 100, seed=3)
    out = tmp_path / "facet.npz"
    assert main(["embed", picture, "--model", "random-tiny", "--facet", "key", "--facet-block", "2",
                 "--out", str(out)]) == 0
    data = load_features_npz(out)
    encoder = load_encoder("random-tiny", cache=None)
    x = encoder.to_tensor(encoder.prepare(picture))[None]
    with capture_qkv(encoder.model, [2]) as captured:
        encoder.model.forward_features(x)
    key = captured[2][1][0]  # [heads, T, dh]
    expected = key.permute(1, 0, 2).reshape(key.shape[1], -1)[1:]  # patch tokens, heads concatenated
    np.testing.assert_allclose(data["facet_key_2_tokens"], expected.numpy(), atol=1e-5)
    assert data["facet_key_2_prefix"].shape == (1, 1, 192)


def test_layers_command_prints_the_sweep(capsys):
    assert main(["layers", "--model", "random-tiny", "--n-train", "8", "--n-test", "4"]) == 0
    out = capsys.readouterr().out
    assert "| block |" in out and out.count("\n| ") == 8  # header, separator, 6 blocks


def test_heads_writes_each_models_attention_range_as_npz_png_and_html(tmp_path, image_file, capsys):
    from PIL import Image

    from ssl_core import load_encoder
    from ssl_core.analyses.attention_range import attention_range

    paths = [image_file("a.png", 64, 96, seed=1), image_file("b.png", 80, 80, seed=2)]
    out = tmp_path / "heads.npz"
    assert main(["heads", *paths, "--models", "random-tiny", "patchlens-mae", "--out", str(out)]) == 0
    assert "patchlens-mae: last block" in capsys.readouterr().err
    data = np.load(out)
    assert list(data["models"]) == ["random-tiny (untrained)", "patchlens-mae"]
    mae = load_encoder("patchlens-mae", device="cpu", cache=None)
    expected = attention_range(mae.extract(paths, attention=True))  # both images at once, independently
    np.testing.assert_allclose(data["patchlens-mae_nmi"], expected.nmi, rtol=1e-6)
    np.testing.assert_allclose(data["patchlens-mae_distance_px"], expected.distance * 8, rtol=1e-6)
    assert main(["heads", paths[0], "--models", "random-tiny", "--out", str(tmp_path / "heads.png")]) == 0
    assert Image.open(tmp_path / "heads.png").size[0] > 1000  # the two charts side by side
    assert main(["heads", paths[0], "--models", "random-tiny", "--out", str(tmp_path / "heads.html")]) == 0
    assert "plotly" in (tmp_path / "heads.html").read_text()
    assert main(["heads", paths[0], "--models", "random-tiny", "--out", str(tmp_path / "heads.txt")]) == 2


def test_embed_refuses_bad_arguments_with_one_line_messages(tmp_path, image_file, capsys, monkeypatch):
    """An unknown pretrained tag, a device this machine lacks, a batch size below 1, a layer list that is not one,
    and an image size below one patch or above the cap: each a one-line error naming it, nothing written."""
    import pytest
    import torch

    picture, out = image_file("a.png"), str(tmp_path / "x.npz")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    refused = {
        ("--model", "vit_small_patch16_224.nonexistent"): "timm has no pretrained tag 'nonexistent' for "
                                                          "vit_small_patch16_224",
        ("--device", "cuda"): "device 'cuda' is not available: this machine has 0 CUDA GPU(s)",
        ("--layers", "foo"): "layers 'foo': give block indices separated by commas",
        **{("--image-size", size): f"image size {size} px is out of range for random-tiny: the short side must be "
                                   f"from one patch (8 px) to 1024 px" for size in ("0", "-50", "7", "5000")},
    }
    for (flag, value), message in refused.items():
        extra = [] if flag == "--model" else ["--model", "random-tiny"]
        assert main(["embed", picture, *extra, f"{flag}={value}", "--out", out]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", picture, "--model", "random-tiny", "--batch-size", "0", "--out", out])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --batch-size: must be a positive integer, not '0'" in err
    assert not (tmp_path / "x.npz").exists()


def test_embed_with_a_weights_file_and_no_model_names_the_file(tmp_path, image_file, capsys):
    from ssl_core.models.registry import default_model_name, resolve_spec

    weights, out = resolve_spec("patchlens-dino").bundled_path, tmp_path / "w.npz"
    assert main(["embed", image_file("a.png"), "--weights", str(weights), "--out", str(out)]) == 0
    startup = f"{default_model_name()} with weights {weights.name}: "  # the file's name, not its folder
    assert capsys.readouterr().err.startswith(startup)
    meta = load_features_npz(out)["meta"]  # the architecture's name (as in an index manifest) and the file in full
    assert meta["model"] == default_model_name() and meta["weights"] == f"file: {weights}" and meta["trained"] is True


def test_help_shows_the_real_defaults(capsys, monkeypatch):
    import pytest

    def help_of(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width

    reconstruct = help_of("reconstruct")
    assert "(default: patchlens-mae)" in reconstruct and "(default: random:0.75)" in reconstruct
    assert "bundled default model" not in reconstruct
    embed = help_of("embed")
    assert "--batch-size BATCH_SIZE images loaded and embedded at once (default: 16)" in embed
    assert "(default: the bundled default model, " in embed and "(default: None)" not in embed
