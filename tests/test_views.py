"""The one result type, the one click-to-patch mapping, and the UI's reading of both (no browser)."""
from __future__ import annotations

import inspect
import io
import json
import typing

import numpy as np
import torch
from conftest import smooth_image
from PIL import Image

from app.views import compare, correspond, gallery, lab, reconstruct
from app.views import inspect as inspect_views
from app.views.result import (
    Click,
    DisplayGrid,
    Table,
    ViewResult,
    display_factor,
    display_hw,
    encoder_display_grid,
    patch_at,
    to_display,
    untrained_warning,
)

VIEW_MODULES = (inspect_views, reconstruct, gallery, compare, correspond, lab)


# ------------------------------------------------------------------------------------------------- click -> patch
def test_a_click_maps_to_the_patch_under_it_on_a_non_square_grid():
    grid = DisplayGrid(np.zeros((96, 160, 3), np.uint8), (3, 5), 32)  # 3 rows, 5 columns of 32 px
    shown = display_hw(grid)
    assert display_factor(grid) == 4 and shown == (384, 640)  # short side enlarged to at least 320, by a whole factor
    step = 32 * 4
    assert patch_at(Click(0, 0, shown), grid.grid_hw) == (0, 0)
    assert patch_at(Click(step - 1, step - 1, shown), grid.grid_hw) == (0, 0)  # the last pixel of the first patch
    assert patch_at(Click(step, 0, shown), grid.grid_hw) == (0, 1)  # the first pixel of the next column
    assert patch_at(Click(4 * step + 5, 2 * step + 5, shown), grid.grid_hw) == (2, 4)  # x is the column, y the row
    assert patch_at(Click(639, 383, shown), grid.grid_hw) == (2, 4)
    assert patch_at(Click(-3, 10**6, shown), grid.grid_hw) == (2, 0)  # clamped into the grid
    tall = (5, 3)  # the same picture turned: rows and columns must not be swapped
    assert patch_at(Click(2 * step + 5, 4 * step + 5, (640, 384)), tall) == (4, 2)


def test_the_same_spot_maps_into_grids_of_any_size_and_display_scale():
    spot = Click(0.3, 0.8, (1, 1))  # a fraction of the picture, as Compare starts with the centre
    assert patch_at(spot, (16, 16)) == (12, 4) and patch_at(spot, (14, 14)) == (11, 4)
    for scale in (1, 2, 3.5):  # the picture shown larger: the same spot, the same patch
        shown = (int(224 * scale), int(336 * scale))
        assert patch_at(Click(0.3 * shown[1], 0.8 * shown[0], shown), (14, 21)) == (11, 6)
    assert patch_at(Click.centre(), (12, 19)) == (6, 9)
    assert Click(50, 150, (300, 200)).fraction == (0.25, 0.5)


def test_a_click_on_the_displayed_picture_gives_the_patch_of_the_encoder_grid(tiny_encoder, image_333x517):
    image = Image.fromarray(image_333x517)
    grid = encoder_display_grid(tiny_encoder, image)
    [features] = tiny_encoder.extract([image])
    assert grid.grid_hw == features.grid_hw == (12, 19) and grid.image.shape == features.image.shape
    shown = inspect_views.overview(tiny_encoder, image).pictures["image"]
    assert shown.shape == to_display(features, features.image).shape and shown.shape[:2] == display_hw(features)
    step = features.patch_size * display_factor(features)
    click = Click(7 * step + step // 2, 11 * step + 1, shown.shape[:2])
    assert inspect_views.clicked_patch(tiny_encoder, image, click) == (11, 7)


# ------------------------------------------------------------------------------------------------- the result type
def test_markdown_numbers_file_and_values_by_name():
    result = ViewResult(pictures={"map": np.zeros((2, 2, 3), np.uint8)}, tables={"t": Table(["a"], [[1]])},
                        numbers={"x": np.arange(3)}, notes="notes", warnings=["careful"], name="view")
    assert result.markdown == "careful\n\nnotes" and result.value("t").rows == [[1]] and result.value("nope") is None
    name, data = result.numbers_file()
    assert name == "view.npz" and np.load(io.BytesIO(data))["x"].tolist() == [0, 1, 2]
    name, data = ViewResult(numbers={"a": [1.0], "b": np.ones(1)}, name="lab").numbers_file()
    assert name == "lab.json" and json.loads(data) == {"a": [1.0], "b": [1.0]}  # not all arrays: JSON
    assert result.named("other").name == "other" and result.name == "view"
    assert ViewResult().numbers_file() is None and ViewResult().markdown == ""


def test_one_untrained_warning_names_every_untrained_model(tiny_encoder):
    class Trained:
        trained, name = True, "good"

    [warning] = untrained_warning(tiny_encoder, Trained(), tiny_encoder)
    assert "Untrained" in warning and "untrained" in warning and warning.count("random-tiny") == 1
    assert untrained_warning(Trained()) == []


def _view_functions() -> dict[str, object]:
    """Every public function of the view modules that returns a `ViewResult`, by qualified name."""
    found = {}
    for module in VIEW_MODULES:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_"):
                if typing.get_type_hints(fn).get("return") is ViewResult:
                    found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = fn
    return found


def test_every_view_returns_a_view_result(tiny_encoder, tmp_path):
    from ssl_core.lab import LabConfig
    from ssl_core.mim.mae import build_mae
    from ssl_core.search.patch_index import PatchIndex

    torch.manual_seed(0)
    mae = build_mae(decoder_depth=1).eval()
    images = [Image.fromarray(smooth_image(64, 96, seed=1)), Image.fromarray(smooth_image(80, 80, seed=2))]
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"g{i}.png")
        paths.append(str(tmp_path / f"g{i}.png"))
    index, _ = PatchIndex.build(paths, tiny_encoder)
    index.save(tmp_path / "idx")
    tiny = LabConfig(n_train=20, n_test=10, patch_train_images=6, patch_test_images=4, part_map_images=4,
                     cka_images=4, mim_images=2, max_probe_patches=500)
    drawn = gallery.map_of_images(tiny_encoder, images, ["a", "b"], method="pca")
    calls = {
        "inspect.model_status": lambda: inspect_views.model_status(tiny_encoder),
        "inspect.overview": lambda: inspect_views.overview(tiny_encoder, images[0]),
        "inspect.pca_view": lambda: inspect_views.pca_view(tiny_encoder, images, ["a", "b"], None),
        "inspect.similarity_view": lambda: inspect_views.similarity_view(tiny_encoder, images, ["a", "b"], 0, 1, 1,
                                                                         None),
        "inspect.parts_view": lambda: inspect_views.parts_view(tiny_encoder, images, ["a", "b"], None, k=3),
        "inspect.attention_view": lambda: inspect_views.attention_view(tiny_encoder, images[0], -1, None, False, 0.5),
        "inspect.bagssl_view": lambda: inspect_views.bagssl_view(tiny_encoder, images[0], [32]),
        "reconstruct.reconstruct_view": lambda: reconstruct.reconstruct_view(mae, images[0]),
        "reconstruct.context_drift_view": lambda: reconstruct.context_drift_view(tiny_encoder, images[0]),
        "reconstruct.cae_alignment_view": lambda: reconstruct.cae_alignment_view(None, images[0]),
        "reconstruct.position_view": lambda: reconstruct.position_view(tiny_encoder, images[0], images[1:]),
        "gallery.build_index": lambda: gallery.build_index(tiny_encoder, paths[:1], current=None),
        "gallery.load_index": lambda: gallery.load_index(str(tmp_path / "idx")),
        "gallery.save_index": lambda: gallery.save_index(index, tmp_path / "idx2"),
        "gallery.query_picture": lambda: gallery.query_picture(index, tiny_encoder, images[1]),
        "gallery.mismatch_note": lambda: gallery.mismatch_note(index, tiny_encoder),
        "gallery.search_click": lambda: gallery.search_click(index, tiny_encoder, images[1], Click.centre(), 3),
        "gallery.map_of_images": lambda: drawn,
        "gallery.map_of_index": lambda: gallery.map_of_index(index, method="pca"),
        "gallery.pick_point": lambda: gallery.pick_point(drawn.state, *drawn.state.picture.pixels[0]),
        "gallery.cka_view": lambda: gallery.cka_view(tiny_encoder, tiny_encoder, images, grid_size=2),
        "compare.compare_view": lambda: compare.compare_view([tiny_encoder, tiny_encoder], images[0], k=3),
        "correspond.best_buddies_view": lambda: correspond.best_buddies_view(tiny_encoder, images, ["a", "b"], 5),
        "lab.measure_view": lambda: lab.measure_view({"random-tiny": tiny_encoder}, lab.PROBES[4], tiny),
        "lab.probe_view": lambda: lab.probe_view(tiny_encoder, lab.PROBES[3], tiny),
        "lab.probes_view": lambda: lab.probes_view({"random-tiny": tiny_encoder}, lab.PROBES[3], tiny),
        "lab.cka_view": lambda: lab.cka_view(tiny_encoder, tiny_encoder, tiny),
        "lab.layer_sweep_view": lambda: lab.measure_view({"random-tiny": tiny_encoder}, lab.LAYERS, tiny),
    }
    not_called = {"lab.lab_view", "lab.report_view"}  # the whole Lab: tests/test_lab.py runs it once for all
    assert set(_view_functions()) == set(calls) | not_called  # a new view is added here too
    for name, call in calls.items():
        result = call()
        assert isinstance(result, ViewResult), name
        assert all(p.dtype == np.uint8 and p.ndim == 3 for p in result.pictures.values()), name
        names = [*result.pictures, *result.galleries, *result.figures, *result.tables]
        assert len(names) == len(set(names)) and not {"markdown", "state", "numbers"} & set(names), name


# ------------------------------------------------------------------------------------------------- the UI's side
def test_the_app_shows_a_view_result_in_its_components(tmp_path):
    import gradio as gr

    from app.ui.app import PatchLensApp
    from app.ui.state import AppConfig

    app = PatchLensApp(AppConfig(default_model="random-tiny"))
    picture = np.full((4, 6, 3), 7, np.uint8)
    result = ViewResult(pictures={"map": picture}, tables={"counts": Table(["image", "part 0"], [["a", 3]])},
                        numbers={"x": np.ones(2)}, files={"report.html": b"<html>"}, notes="done",
                        warnings=["careful"], state={"kept": 1}, name="parts_a", details="tables")
    targets = {"map": gr.Image(), "absent": gr.Image(), "missing": gr.Gallery(), "counts": gr.Dataframe(),
               "markdown": gr.Markdown(), "state": gr.State(), "numbers": gr.File(), "report.html": gr.File(),
               "details": gr.Markdown()}
    shown = app.show(result, targets)
    assert shown[targets["map"]].endswith("/parts_a_map.png")  # a file named after the view and the picture
    assert np.array_equal(np.asarray(Image.open(shown[targets["map"]])), picture)
    assert shown[targets["absent"]] is None and shown[targets["missing"]] == []
    assert shown[targets["counts"]]["value"] == [["a", 3]]
    assert shown[targets["counts"]]["headers"] == ["image", "part 0"]
    assert shown[targets["markdown"]] == "careful\n\ndone" and shown[targets["state"]] == {"kept": 1}
    assert shown[targets["numbers"]].endswith("parts_a.npz") and np.load(shown[targets["numbers"]])["x"].sum() == 2
    assert open(shown[targets["report.html"]], "rb").read() == b"<html>" and shown[targets["details"]] == "tables"
    optional = app.show(result, targets, hidden_when_empty=("map", "absent"))  # shown only with a value
    assert optional[targets["map"]]["visible"] is True and optional[targets["map"]]["value"].endswith("_map.png")
    assert optional[targets["absent"]]["visible"] is False and optional[targets["absent"]]["value"] is None
    assert optional[targets["missing"]] == []  # not named: as before


def test_click_callbacks_get_their_event_and_every_callback_is_typed():
    from gradio.helpers import special_args

    from app.ui.app import build_app
    from app.ui.state import AppConfig
    from app.ui.tabs import compare as compare_tab
    from app.ui.tabs import gallery as gallery_tab
    from app.ui.tabs import inspect as inspect_tab
    from app.ui.tabs import lab as lab_tab
    from app.ui.tabs import reconstruct as reconstruct_tab

    for module in (inspect_tab, reconstruct_tab, gallery_tab, compare_tab, lab_tab):
        [tab] = [cls for _, cls in inspect.getmembers(module, inspect.isclass) if cls.__module__ == module.__name__]
        for name, method in inspect.getmembers(tab, inspect.isfunction):
            hints = typing.get_type_hints(method)  # Gradio reads these to pass the click event: all must resolve
            assert "return" in hints or name == "__init__", f"{tab.__name__}.{name}"
    demo, _ = build_app(AppConfig(default_model="random-tiny"))
    clicks = {}
    for block in demo.fns.values():
        name = getattr(block.fn, "__name__", "")
        if name in ("click_patch", "toggle_patch", "search", "pick_map_point", "clicked"):
            clicks[name] = special_args(block.fn)[2]
    assert set(clicks) == {"click_patch", "toggle_patch", "search", "pick_map_point", "clicked"}
    assert all(index is not None for index in clicks.values()), clicks
    config = demo.get_config_file()
    types = {c["id"]: c["type"] for c in config["components"]}

    def tabs_hold_only_tabs(node: dict) -> bool:  # a State beside the tabs garbles the tab bar in the browser
        children = node.get("children", [])
        return ((types.get(node["id"]) != "tabs" or all(types[c["id"]] == "tabitem" for c in children))
                and all(tabs_hold_only_tabs(c) for c in children))
    assert tabs_hold_only_tabs(config["layout"])


# ------------------------------------------------------------------------------------------------- resolution, facets
def test_every_resolution_draws_maps_at_one_size_so_clicks_land_on_the_same_patch(tiny_encoder):
    from app.views.resolution import CHOICES, Resolution
    from ssl_core.render.draw import COLORBAR_WIDTH

    image = Image.fromarray(smooth_image(64, 96, seed=3))
    shown = {choice: inspect_views.overview(tiny_encoder, image, resolution=choice).pictures for choice in CHOICES}
    raw = shown["patch grid"]
    grid_hw = encoder_display_grid(tiny_encoder, image).grid_hw
    for choice, pictures in shown.items():
        for name in ("pca", "attention"):
            assert pictures[name].shape == raw[name].shape or (  # a difference of an RGB map adds a colour bar
                Resolution.of(choice).difference and pictures[name].shape[1] == raw[name].shape[1] + COLORBAR_WIDTH)
        click = Click(37.0, 21.0, pictures["attention"].shape[:2])
        assert patch_at(click, grid_hw) == patch_at(Click(37.0, 21.0, raw["attention"].shape[:2]), grid_hw)
    for name in ("pca", "attention"):
        assert not np.array_equal(shown["guided"][name], raw[name])  # guidance redraws the map
        assert not np.array_equal(shown["bilinear"][name], shown["guided"][name])
    difference = shown["difference: guided − patch grid"]["attention"].astype(int)
    assert np.abs(difference - raw["attention"].astype(int)).mean() > 1


def test_resolution_reaches_parts_similarity_and_token_norms_and_bad_choices_are_refused(tiny_encoder):
    import pytest

    from ssl_core.errors import BadRequest

    images = [Image.fromarray(smooth_image(64, 96, seed=1)), Image.fromarray(smooth_image(80, 80, seed=2))]
    for view in (lambda r: inspect_views.parts_view(tiny_encoder, images, ["a", "b"], None, k=3, resolution=r)
                 .galleries["maps"][0][0],
                 lambda r: inspect_views.similarity_view(tiny_encoder, images, ["a", "b"], 0, 1, 1, None, resolution=r)
                 .galleries["maps"][1][0],
                 lambda r: inspect_views.attention_view(tiny_encoder, images[0], 1, None, False, 0.5, resolution=r)
                 .pictures["token_norm"]):
        raw, guided = view("patch grid"), view("guided")
        assert raw.shape == guided.shape and not np.array_equal(raw, guided)
    with pytest.raises(BadRequest, match="resolution"):
        inspect_views.overview(tiny_encoder, images[0], resolution="bicubic")


def test_the_facet_changes_the_tokens_behind_the_maps(tiny_encoder):
    from ssl_core.features.facets import facet_tokens

    images = [Image.fromarray(smooth_image(64, 96, seed=1))]
    output = inspect_views.pca_view(tiny_encoder, images, ["a"], 1).numbers["pca_rgb_0"]
    key = inspect_views.pca_view(tiny_encoder, images, ["a"], 1, facet="key").numbers["pca_rgb_0"]
    assert output.shape == key.shape and not np.allclose(output, key)
    _, [grid] = inspect_views.token_grids(tiny_encoder, images, 1, "value")
    torch.testing.assert_close(grid, facet_tokens(tiny_encoder, images, "value", 1)[0].patch_tokens)
    similarity = inspect_views.similarity_view(tiny_encoder, images, ["a"], 0, 2, 3, None, facet="query")
    assert "query of the last block" in similarity.notes


def test_token_norms_follow_the_block_and_box_the_outliers(tiny_encoder):
    from ssl_core.analyses.token_norm import token_norms

    image = Image.fromarray(smooth_image(64, 96, seed=1))
    shown = []
    for block in (0, tiny_encoder.depth - 1):
        result = inspect_views.attention_view(tiny_encoder, image, block, None, False, 0.5)
        [f] = tiny_encoder.extract([image], layers=[block])
        np.testing.assert_allclose(result.numbers["token_norm"], token_norms(f, [block]).patch_norms[0], rtol=1e-5)
        assert f"after block {block}" in result.notes
        shown.append(result.numbers["token_norm"])
    assert not np.allclose(*shown)


def test_the_layer_sweep_view_has_one_point_per_block_and_png_and_html_downloads(tiny_encoder):
    import pytest

    from ssl_core.errors import BadRequest
    from ssl_core.lab import LabConfig

    tiny = LabConfig(n_train=8, n_test=4, patch_train_images=8, patch_test_images=4, part_map_images=4)
    result = lab.measure_view({"random-tiny": tiny_encoder}, lab.LAYERS, tiny)
    traces = result.figures["layers"].data
    assert len(traces) == 6 and all(list(t.x) == list(range(tiny_encoder.depth)) for t in traces)
    png = Image.open(io.BytesIO(result.files["layer_sweep.png"]))
    assert png.format == "PNG" and len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 4
    assert b"plotly" in result.files["layer_sweep.html"] and "best block for parts" in result.notes
    with pytest.raises(BadRequest, match="one encoder"):
        lab.measure_view({"a": tiny_encoder, "b": tiny_encoder}, lab.LAYERS, tiny)


def test_best_buddies_view_shows_the_top_pairs_their_count_and_mean_cosine(tiny_encoder):
    from PIL import ImageOps

    from ssl_core.analyses.correspondence import best_buddies

    image = Image.fromarray(smooth_image(64, 96, seed=4))
    mirrored = ImageOps.mirror(image)
    result = correspond.best_buddies_view(tiny_encoder, [image, mirrored], ["a.png", "b.png"], 7, facet="key")
    [fa, fb] = [t.patch_tokens for t in inspect_views.facet_tokens(tiny_encoder, [image, mirrored], "key", -1)]
    reference = best_buddies(fa, fb, top=7)
    assert result.numbers["similarity"].tolist() == reference.similarity.tolist()
    assert f"**{reference.count} best buddies shown** (of {reference.total})" in result.notes
    assert f"{reference.mean_similarity:.3f}" in result.notes and "key of the last block" in result.notes
    assert result.pictures["lines"].shape[0] == 384 and reference.count == 7


def test_marked_patches_are_boxed_at_their_place_at_every_resolution():
    from app.views.resolution import CHOICES, MARK_BOX, Resolution, scalar_picture
    from ssl_core.render.draw import COLORBAR_WIDTH, Scale

    geometry = DisplayGrid(np.zeros((64, 96, 3), np.uint8), (4, 6), 16)
    marks = np.zeros((4, 6), bool)
    marks[1, 2] = True
    for choice in CHOICES:
        picture = scalar_picture(geometry, np.zeros((4, 6)), Scale(0, 1), Resolution.of(choice), marks=marks)
        factor = display_factor(geometry)
        assert picture.shape == (64 * factor, 96 * factor + COLORBAR_WIDTH, 3)
        assert (picture[16 * factor, 32 * factor + 4] == MARK_BOX).all(), choice  # the box's top edge
        assert not (picture[8 * factor, 8 * factor] == MARK_BOX).all(), choice


def test_a_patch_of_the_wider_image_is_compared_with_a_narrower_one(tiny_encoder):
    """The clicked patch's column may not exist in another image's grid: only its own image is boxed."""
    images = [Image.fromarray(smooth_image(64, 160, seed=1)), Image.fromarray(smooth_image(96, 64, seed=2))]
    result = inspect_views.similarity_view(tiny_encoder, images, ["wide", "narrow"], 0, 0, 29, None)
    assert result.numbers["similarity_0"].shape == (12, 30) and result.numbers["similarity_1"].shape[1] < 30
    assert result.numbers["similarity_0"][0, 29] == result.numbers["similarity_0"].max()
