"""App logic without a browser: inspect results, model pool, allowed folders, uploads."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.access import Access
from app.ui.state import AppConfig, BadRequest, ModelPool, load_uploads
from app.views import inspect as handlers
from app.views.result import DISPLAY_MIN_SIDE, Click, display_factor, display_hw, patch_at
from ssl_core.render.draw import COLORBAR_WIDTH


def test_overview_returns_image_pca_and_attention_at_display_size(tiny_encoder, image_333x517):
    result = handlers.overview(tiny_encoder, Image.fromarray(image_333x517))
    pictures = result.pictures
    assert pictures["image"].shape == pictures["pca"].shape  # the attention map has its colour bar beside it
    assert pictures["attention"].shape == (pictures["image"].shape[0], pictures["image"].shape[1] + COLORBAR_WIDTH, 3)
    assert min(pictures["image"].shape[:2]) >= DISPLAY_MIN_SIDE
    assert pictures["pca"].std() > 5 and pictures["attention"].std() > 1  # not blank
    assert "untrained" in result.markdown
    assert result.numbers["patch_tokens"].shape == (12, 19, 192)


def test_views_return_one_picture_per_image_and_their_numbers(tiny_encoder, image_333x517):
    images = [Image.fromarray(image_333x517), Image.fromarray(image_333x517[:200, :200])]
    names = ["a", "b"]
    sim = handlers.similarity_view(tiny_encoder, images, names, source=1, row=2, col=3, layer=None)
    assert len(sim.galleries["maps"]) == 2 and sim.numbers["similarity_1"][2, 3] == pytest.approx(1.0, abs=1e-5)
    parts = handlers.parts_view(tiny_encoder, images, names, layer=2, k=4)
    assert len(parts.galleries["maps"]) == 2 and parts.tables["counts"].rows[-1][0] == "all images"
    assert sum(parts.tables["counts"].rows[-1][1:]) == 12 * 19 + 12 * 12
    pca = handlers.pca_view(tiny_encoder, images, names, layer=None, joint=True, use_foreground=True)
    assert set(pca.numbers) >= {"pca_rgb_0", "foreground_1"}
    att = handlers.attention_view(tiny_encoder, images[0], layer=-1, head=1, rollout=False, keep_mass=0.5)
    assert len(att.galleries["heads"]) == tiny_encoder.num_heads and att.numbers["mask"].shape == (12, 19)
    nmi = att.numbers["attention_nmi"]  # [blocks, heads], head 1 of the last block in its caption
    assert nmi.shape == (tiny_encoder.depth, tiny_encoder.num_heads) and set(att.figures) == {"readout", "range"}
    assert att.galleries["heads"][1][1].endswith(f"NMI {nmi[-1, 1]:.2f}") and "query-key NMI" in att.markdown
    rolled = handlers.attention_view(tiny_encoder, images[0], layer=3, head=None, rollout=True, keep_mass=0.5)
    assert "rollout over blocks 0–3" in rolled.markdown
    bag = handlers.bagssl_view(tiny_encoder, images[1], crop_sizes=[32, 48])
    assert set(bag.figures) == {"crops", "layers", "readout"}
    assert bag.numbers["bag_of_crops"][-1, 2] == pytest.approx(1.0, abs=1e-5)


def test_patch_at_maps_display_pixels_to_patches(tiny_encoder, image_333x517):
    [f] = tiny_encoder.extract([image_333x517])
    step = f.patch_size * display_factor(f)
    shown = display_hw(f)
    assert patch_at(Click(0, 0, shown), f.grid_hw) == (0, 0)
    assert patch_at(Click(step * 3 + 1, step * 2 + step - 1, shown), f.grid_hw) == (2, 3)
    assert patch_at(Click(10**6, 10**6, shown), f.grid_hw) == (f.grid_hw[0] - 1, f.grid_hw[1] - 1)
    assert handlers.clicked_patch(tiny_encoder, Image.fromarray(image_333x517),
                                  Click(step * 3 + 1, step * 2 + 1, shown)) == (2, 3)


def test_model_pool_loads_once_and_evicts_least_recent():
    pool = ModelPool(max_models=1)
    a = pool.get("random-tiny")
    assert pool.get("random-tiny") is a
    pool.get("random-tiny", image_size=64)
    assert len(pool.loaded()) == 1 and pool.get("random-tiny") is not a


def test_a_model_that_runs_out_of_gpu_memory_loading_makes_room_by_dropping_the_least_recent(monkeypatch):
    """The pool drops its least recently used model only once a new one is in: with the GPU full, loading it runs out
    of memory first. Then the oldest models go one by one until it fits; one that fits in no room is named."""
    import torch

    from ssl_core.errors import ModelUnavailable

    pool = ModelPool(max_models=3)
    for size in (32, 48, 64):
        pool.get("random-tiny", image_size=size)
    pool.get("random-tiny", image_size=32)  # now the most recent: 48 is the oldest
    free_after = 2  # the new model fits once two are gone
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(len(pool.loaded())))

    def load():
        if len(pool.loaded()) > 3 - free_after:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return "the new model"

    assert pool._get(("encoder", "big-model"), load) == "the new model"
    assert [key[-1] for key in pool.loaded()] == [32, "big-model"] and emptied == [2, 1]
    with pytest.raises(ModelUnavailable, match="huge-model does not fit in the GPU's memory"):
        pool._get(("encoder", "huge-model"), lambda: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("OOM")))
    assert pool.loaded() == []


def test_paths_outside_allowed_folders_are_refused(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "w.safetensors").write_bytes(b"x")
    (tmp_path / "secret.pth").write_bytes(b"x")
    access = Access([allowed])
    assert access.readable(allowed / "w.safetensors", "file") == (allowed / "w.safetensors").resolve()
    with pytest.raises(BadRequest, match="outside the allowed folders"):
        access.readable(tmp_path / "secret.pth", "file")
    with pytest.raises(BadRequest, match="outside the allowed folders"):
        access.readable(allowed / ".." / "secret.pth", "file")  # no escaping with ..
    (allowed / "link.pth").symlink_to(tmp_path / "secret.pth")
    with pytest.raises(BadRequest, match="outside the allowed folders"):
        access.readable(allowed / "link.pth", "file")  # nor through a symbolic link


def test_uploads_keep_good_images_and_name_bad_ones(tmp_path, image_file):
    good = image_file("ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)
    loaded, problems = load_uploads([good, str(bad), str(big)], AppConfig(max_upload_mb=0.5))
    assert [i.name for i in loaded] == ["ok.png"]
    assert any("bad.png" in p for p in problems) and any("upload limit" in p for p in problems)


def test_default_model_parts_view_finds_the_ground_truth_parts_of_the_parts_world_examples():
    from ssl_core import default_model_name, load_encoder
    from ssl_core.models.registry import ASSETS_DIR, resolve_spec

    name = default_model_name()
    if not resolve_spec(name).trained:
        pytest.skip("the bundled default model's weights are missing")
    encoder = load_encoder(name, device="cpu", cache=None)
    names = [f"partsworld_{i}.png" for i in range(1, 5)] + ["chelsea.jpg"]
    images = [Image.open(ASSETS_DIR / "examples" / n) for n in names]
    from ssl_core.analyses.parts import agreement_with_truth

    for separate, k, floor in [(False, 8, 0.25), (True, 5, 0.5)]:  # all images at once; each image on its own
        view = handlers.parts_view(encoder, images, names, layer=None, k=k, separate=separate)
        assert "adjusted Rand index" in view.markdown and "chelsea" not in view.markdown.split("ground truth")[-1]
        assert sorted(a for a in view.numbers if a.startswith("ground_truth")) == [f"ground_truth_{i}" for i in range(4)]
        scores = [agreement_with_truth(view.numbers[f"labels_{i}"], view.numbers[f"ground_truth_{i}"]) for i in range(4)]
        assert np.mean([s.ari for s in scores]) > floor  # well above chance; docs/lab.md has the held-out figure
        assert all(abs(s.shuffled) < 0.1 for s in scores)
        assert len(view.tables["counts"].rows) == len(names) + (not separate)  # a total row only when labels mean one thing


def test_parts_of_each_image_on_its_own_need_k_patches_in_every_image(tiny_encoder, image_333x517):
    images = [Image.fromarray(image_333x517[:, :333]), Image.fromarray(image_333x517[:100])]  # square, wide
    square, wide = (f.grid_hw[0] * f.grid_hw[1] for f in tiny_encoder.extract(images))
    k = square + 1
    assert wide > k
    with pytest.raises(ValueError, match=f"square.png: {square} patches .* fewer than k = {k} parts for the image on"):
        handlers.parts_view(tiny_encoder, images, ["square.png", "wide.png"], None, k=k, separate=True)
    assert len(handlers.parts_view(tiny_encoder, images, ["square.png", "wide.png"], None, k=k).galleries["maps"]) == 2


def test_removing_the_position_mean_brings_out_the_bundled_mae_parts():
    from ssl_core import load_encoder
    from ssl_core.analyses.parts import agreement_with_truth
    from ssl_core.models.registry import ASSETS_DIR, bundled_names

    if "patchlens-mae" not in bundled_names():
        pytest.skip("the bundled patchlens-mae weights are missing")
    encoder = load_encoder("patchlens-mae", device="cpu", cache=None)
    names = [f"partsworld_{i}.png" for i in range(1, 5)]
    images = [Image.open(ASSETS_DIR / "examples" / n) for n in names]

    def mean_ari(view):
        return np.mean([agreement_with_truth(view.numbers[f"labels_{i}"], view.numbers[f"ground_truth_{i}"]).ari
                        for i in range(4)])

    plain = handlers.parts_view(encoder, images, names, None, k=8)
    centred = handlers.parts_view(encoder, images, names, None, k=8, remove_position=True)
    assert mean_ari(plain) < 0.2 and mean_ari(centred) > 0.3  # the MAE's tokens cluster by place until it is removed
    assert "mean token removed first (4 of 4 images share a grid)" in centred.markdown
    with pytest.raises(ValueError, match="at least two images with the same patch grid"):
        handlers.parts_view(encoder, images[:1], names[:1], None, k=8, remove_position=True)


def test_model_choices_are_grouped_by_family_and_each_passes_the_model_name_check():
    from app.access import check_model_name
    from app.ui.wiring import model_choices
    from ssl_core.models.registry import resolve_spec

    choices = model_choices()
    families = [resolve_spec(name).family for _, name in choices]
    runs = [f for i, f in enumerate(families) if i == 0 or f != families[i - 1]]
    assert len(runs) == len(set(runs))  # each family in one block
    for label, name in choices:
        assert check_model_name(name) == name
        assert label.startswith(f"{resolve_spec(name).family} · ") and name in label
