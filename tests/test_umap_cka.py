"""Patch maps (UMAP / PCA), colourings, click-picking, CKA, and the gallery commands end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from ssl_core.analyses.cka import cka_matrix, compare_encoders, layer_representations, linear_cka
from ssl_core.analyses.maps import CORNER_COLOURS, colour_by_position, colour_patches, map_patches, nearest_point
from ssl_core.features.patch_table import PatchTable
from ssl_core.render.figures import colouring_rgb, map_picture, scatter_picture


def clusters(n: int, dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return (rng.standard_normal((k, dim)) * 3)[labels] + rng.standard_normal((n, dim)), labels


@pytest.fixture
def three_images(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(64, 96), (80, 80), (72, 64)]):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(smooth_image(h, w, seed=20 + i)).save(paths[-1])
    return paths


# ------------------------------------------------------------------------------------------------- maps
@pytest.mark.slow  # the first UMAP in a process compiles numba code (about 15-20 s of CPU here)
def test_umap_is_reproducible_with_a_seed_and_keeps_clusters_apart():
    x, labels = clusters(150, 16, 3)
    a = map_patches(x, "umap", seed=3)
    b = map_patches(x, "umap", seed=3)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert (a.method, a.fitted_on, a.total) == ("umap", 150, 150) and "sample" not in a.describe()
    d2 = ((a.coords[:, None] - a.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert (labels[d2.argmin(1)] == labels).mean() > 0.95  # each point's nearest neighbour on the map is of its cluster


def test_umaps_compiler_never_swaps_the_process_wide_stderr_even_where_colorama_is_importable():
    """numba colours its messages with colorama when it can import it (Ray ships a copy), and colorama's init/deinit
    swap sys.stdout/sys.stderr from the compiling thread: from the UMAP warm-up thread that undid pytest's capture of
    another test (a CI flake). Maps must keep numba's messages plain: its markup leaves a text as it is."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    code = ("import ray, colorama\n"  # Ray's copy of colorama is now importable
            "import ssl_core.analyses.maps\n"
            "import numba.core.errors as errors\n"
            "assert errors.termcolor().errmsg('x') == 'x', repr(errors.termcolor().errmsg('x'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_map_above_the_limit_is_fitted_on_a_seeded_sample_and_says_so():
    from ssl_core.analyses.pca import fit_pca

    x, _ = clusters(300, 12, 4)
    patch_map = map_patches(x, "pca", seed=1, fit_limit=100)
    assert (patch_map.fitted_on, patch_map.total) == (100, 300)
    assert "random sample of 100 of 300 patches" in patch_map.describe() and "projection" in patch_map.describe()
    sample = np.sort(np.random.default_rng(1).choice(300, 100, replace=False))
    unit = torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float32)), dim=-1)
    np.testing.assert_allclose(patch_map.coords, fit_pca(unit[sample], k=2).project(unit).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="map method"):
        map_patches(x, "tsne")


def test_a_click_on_the_scatter_picture_picks_the_point_under_it():
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 10, 10]], np.uint8)
    picture = scatter_picture(coords, colours, size=(200, 160), radius=3)
    assert picture.image.shape == (160, 200, 3)
    for i, (x, y) in enumerate(picture.pixels):
        assert (picture.image[int(round(y)), int(round(x))] == colours[i]).all()
        assert picture.point_at(x + 2, y - 1) == i
    assert picture.pixels[2, 1] < picture.pixels[0, 1]  # larger y in data is higher up in the picture
    assert picture.point_at(199, 2) is None
    assert nearest_point(coords, 0.9, 0.1) == 1 and nearest_point(coords, 5, 5, max_distance=1) is None
    ringed = scatter_picture(coords, colours, size=(200, 160), radius=3, highlight=3)
    assert (ringed.image != picture.image).any()


def test_colourings_by_image_part_position_and_attention(tiny_encoder, three_images):
    table, features = PatchTable.embed(tiny_encoder, three_images, three_images, attention=True)
    by_image = colour_patches(table, "image")
    assert by_image.kind == "categorical" and by_image.values.tolist() == table.image_ids.tolist()
    by_part = colour_patches(table, "part", parts=4, seed=0)
    from ssl_core.analyses.parts import kmeans
    assert by_part.values.tolist() == kmeans(torch.from_numpy(table.vectors), 4, 0).labels.tolist()
    from ssl_core.analyses.maps import attention_per_patch
    by_attention = colour_patches(table, "attention", attention_per_patch(features))
    assert by_attention.kind == "scalar" and by_attention.values.shape == (len(table),)
    rgb = colouring_rgb(by_attention)
    assert rgb.shape == (len(table), 3) and rgb.std() > 0
    with pytest.raises(ValueError, match="needs attention"):
        colour_patches(table, "attention")
    corners = colour_by_position(np.array([0, 0, 9, 9, 4]), np.array([0, 4, 0, 4, 2]), np.full(5, 10), np.full(5, 5))
    np.testing.assert_allclose(corners.values[:4], CORNER_COLOURS)
    np.testing.assert_allclose(corners.values[4], CORNER_COLOURS.mean(0), atol=0.03)


# ------------------------------------------------------------------------------------------------- CKA
def direct_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """CKA from the Gram matrices, as written in Kornblith et al. (biased HSIC) and Song et al. (unbiased)."""
    n = x.shape[0]
    K, L = x @ x.T, y @ y.T

    def hsic(a, b):
        if not debiased:
            H = np.eye(n) - 1 / n
            return np.trace(a @ H @ b @ H) / (n - 1) ** 2
        a, b, one = a - np.diag(np.diag(a)), b - np.diag(np.diag(b)), np.ones(n)
        return (np.trace(a @ b) + one @ a @ one * (one @ b @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ a @ b @ one) / (n * (n - 3))
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_one_with_itself_invariant_and_matches_the_direct_formula(debiased):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 12)) + 2
    y = x @ rng.standard_normal((12, 30)) + 2 * rng.standard_normal((40, 30))  # wider than it has rows: Gram path
    rotation, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    value = linear_cka(x, y, debiased)
    assert 0.2 < value < 0.99
    assert linear_cka(x @ rotation * 7.5, y, debiased) == pytest.approx(value, abs=1e-10)
    assert linear_cka(x, 0.01 * y, debiased) == pytest.approx(value, abs=1e-10)
    assert value == pytest.approx(direct_cka(x, y, debiased), abs=1e-10)
    assert linear_cka(torch.from_numpy(y), torch.from_numpy(x), debiased) == pytest.approx(value, abs=1e-10)


def test_debiased_cka_is_close_to_linear_for_many_samples_and_removes_the_small_sample_pull():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 8))
    y = x @ rng.standard_normal((8, 6)) + rng.standard_normal((3000, 6))
    assert abs(linear_cka(x, y, debiased=True) - linear_cka(x, y)) < 0.01
    a, b = rng.standard_normal((12, 200)), rng.standard_normal((12, 200))  # independent, n << d
    assert linear_cka(a, b) > 0.7 and abs(linear_cka(a, b, debiased=True)) < 0.2
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(a, b[:5])


def test_cka_map_of_an_encoder_against_a_second_copy_is_symmetric_with_ones_on_the_diagonal(three_images):
    from ssl_core import load_encoder

    first = load_encoder("random-tiny", device="cpu", cache=None)
    second = load_encoder("random-tiny", device="cpu", cache=None)
    progress = []
    result = compare_encoders(first, second, three_images, progress=lambda d, t: progress.append((d, t)))
    assert result.matrix.shape == (first.depth, first.depth) and progress[-1] == (6, 6)
    np.testing.assert_allclose(result.matrix, result.matrix.T, atol=1e-9)
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=1e-9)
    assert result.samples == 3 * 16 and result.matrix.min() < 1 - 1e-6  # blocks differ from each other
    reps = layer_representations(first, three_images, pooling="mean")
    assert [tuple(r.shape) for r in reps] == [(3, 192)] * first.depth
    np.testing.assert_allclose(cka_matrix(reps), cka_matrix(reps, reps), atol=1e-9)


# ------------------------------------------------------------------------------------------------- app and CLI
def test_gallery_map_and_cka_handlers(tiny_encoder, three_images):
    from app.views import gallery as handlers_gallery

    images = [Image.open(p).convert("RGB") for p in three_images]
    drawn = handlers_gallery.map_of_images(tiny_encoder, images, ["a", "b", "c"], method="pca", colour_by="position")
    view = drawn.state
    assert (drawn.pictures["map"] == view.picture.image).all() and "scatter" in drawn.figures
    assert len(view.table) == view.patch_map.total and view.picture.image.ndim == 3
    point = 17
    x, y = view.picture.pixels[point]
    picked = handlers_gallery.pick_point(view, x, y)
    picture, crop, source, caption = (*(picked.pictures.get(p) for p in ("map", "crop", "source")), picked.notes)
    image_id = int(view.table.image_ids[point])
    assert caption.startswith(["a", "b", "c"][image_id]) and f"(row {view.table.rows[point]}, col {view.table.cols[point]})" in caption
    assert crop is not None and source is not None and (picture != view.picture.image).any()
    assert map_picture(view.patch_map, view.colouring).image.shape == view.picture.image.shape
    result = handlers_gallery.cka_view(tiny_encoder, tiny_encoder, images, pooling="grid", grid_size=2)
    np.testing.assert_allclose(np.diag(result.numbers["cka"]), 1.0)
    assert "cka" in result.figures and "debiased" in result.markdown


def test_gallery_commands_end_to_end(three_images, tmp_path, capsys):
    import json

    from app.cli.main import main

    first, second, third = three_images
    out = tmp_path / "idx"
    model = ["--model", "random-tiny", "--device", "cpu"]
    assert main(["index", "build", first, second, *model, "--out", str(out), "--kind", "exact"]) == 0
    assert main(["index", "add", str(out), third, second]) == 0
    assert "1 images added" in capsys.readouterr().err
    assert main(["index", "search", str(out), second, "--patch", "2,3", "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and (hits[0]["image"], hits[0]["row"], hits[0]["col"]) == (second, 2, 3)
    assert main(["index", "search", str(out), first, "--k", "2", "--exclude-self"]) == 0
    printed = capsys.readouterr().out
    assert "votes" in printed and first not in printed.split("\n", 1)[1]
    assert main(["index", "info", str(out)]) == 0 and "of 3 images" in capsys.readouterr().out

    assert main(["umap", *three_images, *model, "--method", "pca", "--colour", "position", "--out", str(tmp_path / "map.html")]) == 0
    assert "plotly" in (tmp_path / "map.html").read_text()[:100_000].lower() and "fitting PCA on" in capsys.readouterr().err
    assert main(["cka", *three_images, "--model-a", "random-tiny", "--device", "cpu", "--out", str(tmp_path / "cka.png")]) == 0
    assert Image.open(tmp_path / "cka.png").size[0] > 200
    assert main(["umap", first, "--model", "random-tiny", "--out", str(tmp_path / "map.txt")]) == 2
    assert "must end in .html" in capsys.readouterr().err


def test_umap_refuses_options_that_cannot_work_before_embedding_anything(tmp_path, capsys, monkeypatch):
    import app.cli.maps as maps
    from app.cli.main import main

    image = str(tmp_path / "a.png")
    Image.new("RGB", (32, 32)).save(image)
    monkeypatch.setattr(maps, "load_model_from_args", lambda args: pytest.fail("embedded before refusing"))
    cases = [
        ([image], "--out FILE (.html or .png) is needed for a plotly map"),
        ([image, "--out", str(tmp_path / "map.svg")], "with --engine plotly the file must end in .html or .png"),
        ([image, "--engine", "atlas", "--out", str(tmp_path / "map.html")], "must end in .parquet"),
        (["--index", str(tmp_path), "--colour", "attention", "--out", str(tmp_path / "m.png")], "needs images"),
        (["--index", str(tmp_path), "--model", "random-tiny", "--out", str(tmp_path / "m.png")], "apply to images"),
        (["--out", str(tmp_path / "m.png")], "give images or --index"),
    ]
    for arguments, message in cases:
        assert main(["umap", *arguments]) == 2, arguments
        assert message in capsys.readouterr().err, arguments
    assert not list(tmp_path.glob("m*"))
