"""Readable maps without a browser: colour bars, the patch grid, hover readouts, one mask for every Reconstruct map,
download names, the numbers behind each view, session restore, the UMAP warm-up's waiting and stages, the Lab's
cross-model tables and CKA figure, and the messages the app passes on from the core."""
from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image
from test_lab_findings import cka, lab, report

from app.ui.restore import SessionStore
from app.ui.state import AppConfig, LoadedImage, read_images, write_images
from app.views.result import ViewResult, file_stem
from ssl_core.analyses.maps import UmapWarmUp, map_patches
from ssl_core.lab import LabResults, summary_sections
from ssl_core.mim.masks import random_mask, resample_mask
from ssl_core.render import draw
from ssl_core.render.draw import COLORBAR_WIDTH, Scale
from ssl_core.render.figures import readout_figure


# ------------------------------------------------------------------------------------------------ pictures
def test_a_colour_bar_runs_from_the_top_of_the_scale_down_to_its_bottom():
    scale = Scale(-0.5, 2.0, "viridis", "cosine")
    picture = draw.with_colorbar(np.full((200, 300, 3), 9, np.uint8), scale)
    assert picture.shape == (200, 300 + COLORBAR_WIDTH, 3) and (picture[:, :300] == 9).all()
    lut = draw.colormap_lut("viridis")
    strip = picture[8:192, 300 + 12]  # the middle of the gradient strip
    assert (strip[0] == lut[-1]).all() and (strip[-1] == lut[0]).all()
    assert draw.tick_label(2.0) == "2" and draw.tick_label(0.00731) == "0.00731"


def test_a_scale_reads_the_finite_values_unless_told():
    values = np.array([[np.nan, 0.2], [0.7, np.inf]])
    assert Scale.of(values) == Scale(0.2, 0.7)
    assert Scale.of(values, "viridis", "x", vmax=1.0) == Scale(0.2, 1.0, "viridis", "x")
    assert Scale.of(np.full((2, 2), np.nan)) == Scale(0.0, 1.0)


def test_the_patch_grid_lightens_the_patch_boundaries_only():
    picture = np.zeros((40, 60, 3), np.uint8)
    lined = draw.patch_grid(picture, (4, 6))
    rows, cols = np.flatnonzero(lined[:, 5, 0]), np.flatnonzero(lined[5, :, 0])
    assert list(rows) == [10, 20, 30] and list(cols) == [10, 20, 30, 40, 50]
    assert lined[5, 5].tolist() == [0, 0, 0] and lined[10, 5, 0] == 128


def test_the_readout_hovers_row_col_and_value_on_the_map_scale():
    values = np.arange(12, dtype=float).reshape(3, 4)
    values[0, 0] = np.nan
    scale = Scale(0.0, 11.0, "inferno", "norm")
    fig = readout_figure([("a.png", values, scale), ("b.png", values, scale)])
    first = fig.data[0]
    assert first.hovertemplate == "a.png<br>row %{y}, col %{x}: %{z:.3f}<extra></extra>"
    assert (first.zmin, first.zmax) == (0.0, 11.0) and first.z[0][0] is None and first.z[2][3] == 11.0
    assert first.showscale and not fig.data[1].showscale  # one colour bar for a shared scale
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis2.scaleanchor == "x2"
    assert len(readout_figure([("m", values, scale)] * 40).data) == 16


# ------------------------------------------------------------------------------------------------ one mask
def test_a_mask_carried_onto_the_same_grid_is_the_same_and_onto_a_finer_one_covers_the_same_area():
    mask = random_mask((12, 12), 0.75, seed=3)
    assert np.array_equal(resample_mask(mask, (12, 12)), mask)
    finer = resample_mask(mask, (24, 24))
    assert np.array_equal(finer, np.kron(mask, np.ones((2, 2), bool)))
    assert resample_mask(mask, (6, 6)).shape == (6, 6)


# ------------------------------------------------------------------------------------------------ downloads
def test_download_names_say_model_view_image_and_picture():
    result = ViewResult(galleries={"maps": [(np.zeros((2, 2, 3), np.uint8), "c")] * 2},
                        item_names={"maps": ["my cat.jpg"]}, name=file_stem("dinov2-vits14", "similarity"))
    assert result.for_image("my photo (1).JPG").name == "dinov2-vits14_similarity_my-photo-1"
    assert result.picture_file_name("maps", 0) == "dinov2-vits14_similarity_maps_my-cat.png"
    assert result.picture_file_name("maps", 1) == "dinov2-vits14_similarity_maps_02.png"
    assert file_stem("../../etc", "passwd") == "etc_passwd"


def test_the_numbers_of_hits_maps_and_cka_save_as_npz(tiny_encoder, tmp_path):
    from app.views import gallery
    from ssl_core.search.patch_index import PatchIndex

    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 96, 3), np.uint8)) for i in range(2)]
    paths = write_images([LoadedImage(f"photo {i}.jpg", image) for i, image in enumerate(images)], tmp_path)
    index, _ = PatchIndex.build(paths, tiny_encoder)
    hits = gallery.search_click(index, tiny_encoder, images[0], gallery.Click(10, 10, (64, 96)), k=3)
    drawn = gallery.map_of_images(tiny_encoder, images, ["a.png", "b.png"], method="pca", colour_by="position")
    compared = gallery.cka_view(tiny_encoder, tiny_encoder, images)
    for result, keys in ((hits, {"scores", "image_names", "rows", "cols"}),
                         (drawn, {"coords", "image_ids", "image_names", "colours"}),
                         (compared, {"cka", "labels_a", "labels_b", "models"})):
        name, data = result.numbers_file()
        assert name.endswith(".npz")
        saved = np.load(io.BytesIO(data))  # no pickles
        assert keys <= set(saved.files)
    assert set(np.load(io.BytesIO(hits.numbers_file()[1]))["image_names"]) <= {"photo 0.jpg", "photo 1.jpg"}
    assert "photo" in hits.galleries["hits"][0][1] and "0000" not in hits.galleries["hits"][0][1]


# ------------------------------------------------------------------------------------------------ session
def test_a_session_comes_back_under_its_names_and_a_forged_token_restores_nothing(tmp_path):
    store = SessionStore(tmp_path / "sessions")
    (tmp_path / "sessions").mkdir()
    images = [LoadedImage("b photo.png", Image.new("RGB", (20, 10), "red")),
              LoadedImage("a.jpg", Image.new("RGB", (8, 8), "blue"))]
    saved = store.remember_images(images, None)
    saved = store.remember_choices("a.jpg", "patchlens-dino", saved)
    restored = store.restore(saved, AppConfig())
    assert [i.name for i in restored.images] == ["b photo.png", "a.jpg"]
    assert restored.images[0].image.size == (20, 10)
    assert (restored.selected, restored.model) == ("a.jpg", "patchlens-dino")
    assert store.remember_images(images[:1], saved)["token"] == saved["token"]  # the same folder, rewritten
    assert [i.name for i in store.restore(saved, AppConfig()).images] == ["b photo.png"]
    for forged in ({"token": "../" + saved["token"]}, {"token": "0" * 32}, {"token": 7}, {}, None):
        assert store.restore(forged, AppConfig()) is None
    assert read_images(tmp_path / "nowhere", AppConfig()) == []


def test_a_session_write_is_all_or_nothing_and_two_tabs_writing_at_once_leave_one_whole_set(tmp_path, monkeypatch):
    import app.ui.restore as restore

    store = SessionStore(tmp_path)
    first = [LoadedImage(f"a{i}.png", Image.new("RGB", (8, 8), "red")) for i in range(3)]
    saved = store.remember_images(first, None)
    folder = tmp_path / saved["token"]

    def crash_after_one(images, target):  # the disk fills up after the first image
        write_images(images[:1], target)
        raise OSError("No space left on device")

    monkeypatch.setattr(restore, "write_images", crash_after_one)
    with pytest.raises(OSError):
        store.remember_images([LoadedImage("b.png", Image.new("RGB", (8, 8), "blue"))] * 2, saved)
    monkeypatch.undo()
    assert [i.name for i in store.restore(saved, AppConfig()).images] == ["a0.png", "a1.png", "a2.png"]
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1  # the half-written set was removed

    sets = {c: [LoadedImage(f"{c}{i}.png", Image.new("RGB", (8, 8), "red")) for i in range(6)] for c in "xyz"}
    writers = [threading.Thread(target=store.remember_images, args=(images, saved)) for images in sets.values()]
    for writer in writers:
        writer.start()
    seen = [[i.name for i in store.restore(saved, AppConfig()).images] for _ in range(20)]
    for writer in writers:
        writer.join()
    whole_sets = [[i.name for i in images] for images in (first, *sets.values())]
    assert all(names in whole_sets for names in seen)
    assert [i.name for i in store.restore(saved, AppConfig()).images] in whole_sets[1:]
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1  # each write deleted the set it replaced


# ------------------------------------------------------------------------------------------------ UMAP warm-up
def test_a_map_waits_for_the_warm_up_stages_it_needs_and_says_so(monkeypatch):
    warm = UmapWarmUp()
    assert warm.needed(600, False) == ["small maps"]
    assert warm.needed(5000, False) == warm.needed(600, True) == ["small maps", "large maps and transform"]
    warm.wait_for(600, False, lambda text: pytest.fail("no warm-up started: nothing to wait for"))
    warm.thread, warm.started_at, warm.current = threading.Thread(target=lambda: None), 0.0, "small maps"
    heard: list[str] = []

    def finish_later() -> None:
        warm._set(finished="small maps", current="large maps and transform")

    timer = threading.Timer(0.3, finish_later)
    timer.start()
    warm.wait_for(600, False, heard.append)  # returns once its stage is compiled, the other still compiling
    assert heard and heard[0].startswith("compiling UMAP once per server start (small maps;")
    assert warm.running and warm.finished == ["small maps"]


def test_a_map_reports_its_stages():
    heard: list[str] = []
    vectors = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    map_patches(vectors, "pca", stage=heard.append)
    assert heard == ["fitting PCA on 50 of 50 patches", "placing 50 patches with the fit's projection"]


# ------------------------------------------------------------------------------------------------ Lab
def test_cross_model_tables_have_the_models_as_rows():
    full = lab("my-sup", "supervised", obj=0.9)
    text = "\n".join(summary_sections([full, LabResults("partial", object_probe=full.object_probe,
                                                                    part_probe=full.part_probe)]))
    probes = text.split("### ")[1]
    assert "| encoder | object acc." in probes and "| my-sup |" in probes and "| partial |" in probes
    assert text.count("| partial |") == 1  # only the measure it has


def test_the_lab_cka_figure_is_the_first_pair_of_the_cka_finding():
    from app.views.lab import report_view

    run = report(lab("s", "supervised"), lab("m", "mim"), lab("d", "joint-embedding"),
                 pairs=(cka("s", "m", [0.9, 0.2]), cka("s", "d", [0.8, 0.7])))
    view = report_view(run)
    assert "s and m" in view.figures["cka"].layout.title.text
    assert "The CKA figure shows s vs m, the first pair of the CKA finding" in view.notes
    assert view.notes.index("s vs m (20 scenes)") < view.notes.index("s vs d (20 scenes)")


# ------------------------------------------------------------------------------------------------ messages
def test_the_app_shows_the_core_messages_for_random_weights_and_bombs(tmp_path):
    import gradio as gr

    from app.ui.app import PatchLensApp
    from app.ui.state import load_uploads
    from app.ui.wiring import ui_errors

    junk = tmp_path / "weights.pth"
    junk.write_bytes(b"\x07" + os.urandom(4000))
    app = PatchLensApp(AppConfig(allow_dirs=[tmp_path], default_model="random-tiny"))
    with pytest.raises(gr.Error) as err:
        ui_errors(app.encoder)("random-tiny", None, str(junk))  # a weights file under --allow-dir
    assert "not a checkpoint: unrecognised bytes" in str(err.value) and "pickled" not in str(err.value)
    Image.new("1", (9000, 8000)).save(tmp_path / "bomb.png")
    [problem] = load_uploads([str(tmp_path / "bomb.png")], app.config)[1]
    assert "over the limit of 64,000,000" in problem
