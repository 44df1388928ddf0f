"""The Compare view: aligned columns, one spot for every encoder, and the top model's own weights file."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from app.ui.state import AppConfig, LoadedImage
from app.views import compare as handlers_compare
from app.views.result import Click
from ssl_core import load_encoder


def _saved_tiny_weights(path):
    encoder = load_encoder("random-tiny", device="cpu", cache=None)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(1)) * 0.05)
    save_file(encoder.model.state_dict(), str(path))
    return path


def test_columns_share_one_spot_and_say_which_weights(tmp_path, image_333x517):
    weights = _saved_tiny_weights(tmp_path / "mine.safetensors")
    random = load_encoder("random-tiny", device="cpu", cache=None)
    mine = load_encoder("random-tiny", weights=weights, device="cpu", cache=None)
    wide = load_encoder("random-tiny", image_size=160, device="cpu", cache=None)  # another grid
    comparison = handlers_compare.compare([random, mine, wide], Image.fromarray(image_333x517),
                                          click=Click(0.25, 0.75, (1, 1)))
    descriptions = [c.description for c in comparison.columns]
    assert "weights: random init" in descriptions[0] and "weights: mine.safetensors" in descriptions[1]
    for row in handlers_compare.ROWS:  # every row: panels of one size, whatever each model's grid
        assert len({c.pictures[row].shape for c in comparison.columns}) == 1
        assert comparison.row_picture(row).shape[2] == 3
    spots = [(c.numbers["clicked patch row"], c.numbers["clicked patch col"]) for c in comparison.columns]
    grids = [e.extract([Image.fromarray(image_333x517)])[0].grid_hw for e in (random, wide)]
    for (row, col), (h, w) in zip([spots[0], spots[2]], grids):  # the same spot as a fraction of each grid
        assert abs((row + 0.5) / h - 0.75) <= 1 / h and abs((col + 0.5) / w - 0.25) <= 1 / w
    assert not np.array_equal(comparison.columns[0].pictures["PCA"], comparison.columns[1].pictures["PCA"])


def test_the_model_chosen_at_the_top_is_compared_with_its_weights_file(tmp_path, image_333x517):
    from app.ui.app import PatchLensApp
    from app.ui.tabs.compare import CompareTab

    weights = _saved_tiny_weights(tmp_path / "mine.safetensors")
    app = PatchLensApp(AppConfig(allow_dirs=[tmp_path], default_model="random-tiny"))
    images = [LoadedImage("photo.png", Image.fromarray(image_333x517))]
    result = CompareTab(app).run(images, "photo.png", ["random-tiny", "patchlens-sup"], 4, Click.centre(), "patch grid", False,
                                 "random-tiny", None, str(weights), 0, None, progress=lambda *args, **kwargs: None)
    rows = result.tables["by_encoder"].rows
    assert "weights: mine.safetensors" in rows[0][1]  # the top model: its weights file, as in the other views
    assert "weights: patchlens-sup.safetensors" in rows[1][1]  # the others: their own (bundled) weights


def test_the_resolution_redraws_every_map_row_at_the_same_size(image_333x517):

    tiny = load_encoder("random-tiny", device="cpu", cache=None)
    image = Image.fromarray(image_333x517)
    raw = handlers_compare.compare([tiny, tiny], image, k=3).columns[0]
    guided = handlers_compare.compare([tiny, tiny], image, k=3, resolution="guided").columns[0]
    difference = handlers_compare.compare([tiny, tiny], image, k=3,
                                          resolution="difference: guided − patch grid").columns[0]
    for row in handlers_compare.ROWS:
        assert guided.pictures[row].shape == raw.pictures[row].shape, row
        assert not np.array_equal(guided.pictures[row], raw.pictures[row]), row
        assert not np.array_equal(difference.pictures[row], raw.pictures[row]), row
    np.testing.assert_array_equal(guided.maps["attention"], raw.maps["attention"])  # the readout stays on the grid


def test_every_column_carries_its_attention_range_in_the_figure_the_numbers_and_the_report(image_333x517):
    from ssl_core.analyses.attention_range import attention_range

    tiny = load_encoder("random-tiny", device="cpu", cache=None)
    mae = load_encoder("patchlens-mae", device="cpu", cache=None)
    image = Image.fromarray(image_333x517)
    view = handlers_compare.compare_view([tiny, mae], image, k=3)
    [f] = mae.extract([image], attention=True)
    expected = attention_range([f])
    np.testing.assert_allclose(view.numbers["c1_attention_nmi"], expected.nmi, rtol=1e-6)
    np.testing.assert_allclose(view.numbers["c1_attention_distance_px"], expected.distance * 8, rtol=1e-6)
    assert view.numbers["c0_attention_relative_distance"].shape == (tiny.depth, 3)
    figure = view.figures["attention_range"]
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["random-tiny (untrained)"] * 2 + ["patchlens-mae"] * 2  # left, right panel
    np.testing.assert_allclose(lines[3].y, expected.nmi.mean(1), rtol=1e-6)  # the MAE's NMI, right panel
    heads = [t for t in figure.data if t.mode == "markers"]
    assert len(heads) == 4 and len(heads[0].y) == tiny.depth * 3  # a dot per block and head
    row = next(r for r in view.tables["by_encoder"].rows if r[0] == "patchlens-mae")
    assert f"{expected.nmi[-1].mean():.3f}" in row
    report = view.files["comparison.html"].decode()
    assert "Where the heads look" in report and report.count("<img src=\"data:image/png") == 1 + 6 * 2 + 2
