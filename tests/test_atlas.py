"""Maps for Embedding Atlas: the block-by-block layout, the table and its thumbnails, the engine choice, the server."""
from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from app.views.atlas import ATLAS_MIN_POINTS, atlas_map, engine_for
from ssl_core.analyses.maps import layout_patches, map_patches
from ssl_core.errors import BadRequest, ImageLoadError
from ssl_core.render.atlas import atlas_table


def clustered(n_per: int = 60, clusters: int = 3, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 4
    labels = np.repeat(np.arange(clusters), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


class CountingReader:
    """Reads rows of an array, remembering how many it was asked for at once."""

    def __init__(self, vectors: np.ndarray):
        self.vectors, self.largest, self.calls = vectors, 0, 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        assert np.all(np.diff(ids) > 0)  # sorted, no repeats
        self.largest, self.calls = max(self.largest, len(ids)), self.calls + 1
        return self.vectors[ids].astype(np.float16)


def numpy_pca_coords(fit_on: np.ndarray, place: np.ndarray) -> np.ndarray:
    """Reference: the first two principal axes of the unit rows of ``fit_on`` (SVD in float64, each axis signed so
    that its largest loading is positive), applied to the unit rows of ``place``."""
    unit = fit_on / np.linalg.norm(fit_on, axis=1, keepdims=True)
    mean = unit.mean(0)
    _, _, vt = np.linalg.svd(unit - mean, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(1)])[:, None]
    placed = place / np.linalg.norm(place, axis=1, keepdims=True)
    return (placed - mean) @ axes.T


def test_pca_layout_fitted_on_a_sample_and_placed_in_blocks_matches_numpy_svd():
    x, _ = clustered()
    x16 = x.astype(np.float16).astype(np.float64)  # what the reader hands over
    reader = CountingReader(x)
    result = layout_patches(reader, len(x), "pca", seed=3, fit_limit=50, block=7)
    sample = np.sort(np.random.default_rng(3).choice(len(x), 50, replace=False))
    np.testing.assert_allclose(result.coords, numpy_pca_coords(x16[sample], x16), atol=2e-4)
    assert (result.fitted_on, result.total, result.coords.dtype) == (50, len(x), np.float32)
    assert reader.largest == 50  # the sample, then blocks of at most 7 rows: never all 180 at once
    assert reader.calls == 1 + -(-len(x) // 7)


def test_pca_layout_does_not_depend_on_the_block_size_and_map_patches_agrees():
    x, _ = clustered()
    small = layout_patches(lambda ids: x[ids], len(x), "pca", fit_limit=100, block=11).coords
    one = layout_patches(lambda ids: x[ids], len(x), "pca", fit_limit=100, block=len(x)).coords
    np.testing.assert_array_equal(small, one)
    np.testing.assert_array_equal(map_patches(x, "pca", fit_limit=100).coords, one)


@pytest.mark.slow
def test_umap_layout_fits_the_sample_and_places_the_rest_block_by_block():
    import umap

    x, labels = clustered(n_per=80)
    sample = np.sort(np.random.default_rng(0).choice(len(x), 120, replace=False))
    rest = np.setdiff1d(np.arange(len(x)), sample)
    reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0, n_jobs=1)
    direct = np.empty((len(x), 2), np.float32)
    direct[sample] = reducer.fit_transform(x[sample])
    direct[rest] = reducer.transform(x[rest])
    one_block = layout_patches(lambda ids: x[ids], len(x), "umap", fit_limit=120, block=len(x)).coords
    np.testing.assert_allclose(one_block, direct, atol=1e-4)  # one block: exactly the direct fit and transform
    blocks = layout_patches(lambda ids: x[ids], len(x), "umap", fit_limit=120, block=16).coords
    np.testing.assert_allclose(blocks[sample], direct[sample], atol=1e-4)
    # placed block by block, each point still lands among the fitted points of its own cluster
    nearest = np.argmin(((blocks[rest][:, None] - blocks[sample][None]) ** 2).sum(-1), axis=1)
    assert (labels[sample][nearest] == labels[rest]).mean() > 0.95


def patchwork(colours: np.ndarray, patch: int = 8) -> np.ndarray:
    """An image whose patch (r, c) is the flat colour colours[r, c] [h, w, 3]."""
    return np.repeat(np.repeat(colours, patch, 0), patch, 1).astype(np.uint8)


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/webp;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), np.float64)


def test_atlas_table_has_a_row_per_point_and_thumbnails_of_the_right_patches():
    rng = np.random.default_rng(0)
    colours = [rng.integers(0, 256, (3, 4, 3)), rng.integers(0, 256, (2, 2, 3))]  # two images: 3x4 and 2x2 patches
    image_ids, rows, cols = np.array([1, 0, 0, 1]), np.array([1, 2, 0, 0]), np.array([0, 3, 1, 1])
    coords = rng.normal(size=(4, 2))
    read = []
    table, failed = atlas_table(coords, image_ids, rows, cols, ["/a/first.jpg", "/b/second.png"], [(3, 4), (2, 2)],
                                lambda i: read.append(i) or patchwork(colours[i]), side=12)
    assert failed == [] and sorted(read) == [0, 1]  # each image read once
    assert table.column_names == ["id", "x", "y", "image", "row", "col", "patch", "thumbnail"]
    assert table["id"].to_pylist() == [0, 1, 2, 3]
    np.testing.assert_allclose(np.stack([table["x"].to_numpy(), table["y"].to_numpy()], 1), coords, rtol=1e-6)
    assert table["image"].to_pylist() == ["second.png", "first.jpg", "first.jpg", "second.png"]
    assert table["patch"].to_pylist()[1] == "first.jpg · row 2, col 3"
    assert (table["row"].to_pylist(), table["col"].to_pylist()) == (rows.tolist(), cols.tolist())
    for url, i, r, c in zip(table["thumbnail"].to_pylist(), image_ids, rows, cols):
        thumbnail = decode(url)
        assert thumbnail.shape == (12, 12, 3)
        assert np.abs(thumbnail[3:9, 3:9] - colours[i][r, c]).mean() < 12  # the patch's own colour (lossy WebP)


def test_atlas_table_without_images_or_with_unreadable_ones():
    coords, ids, rows, cols = np.zeros((2, 2)), np.array([0, 1]), np.array([0, 0]), np.array([0, 0])

    def image_of(i: int) -> np.ndarray:
        if i == 1:
            raise ImageLoadError("gone.jpg", "no such file")
        return patchwork(np.zeros((1, 1, 3)))
    table, failed = atlas_table(coords, ids, rows, cols, ["ok.jpg", "gone.jpg"], [(1, 1)] * 2, image_of)
    assert table["thumbnail"].to_pylist()[1] is None and table["thumbnail"].to_pylist()[0] is not None
    assert failed == ["gone.jpg: no such file"]
    assert "thumbnail" not in atlas_table(coords, ids, rows, cols, ["a", "b"], [(1, 1)] * 2, None)[0].column_names
    with pytest.raises(BadRequest, match="coordinates"):
        atlas_table(np.zeros((3, 2)), ids, rows, cols, ["a", "b"], [(1, 1)] * 2)


def test_engine_auto_opens_atlas_above_the_plotly_limit():
    assert engine_for("auto", ATLAS_MIN_POINTS) == "plotly"
    assert engine_for("auto", ATLAS_MIN_POINTS + 1) == "atlas"
    assert engine_for("plotly", 10**7) == "plotly" and engine_for("atlas", 10) == "atlas"
    with pytest.raises(BadRequest, match="engine"):
        engine_for("bokeh", 10)


def query(url: str, sql: str) -> bytes:
    request = urllib.request.Request(url + "data/query", json.dumps({"type": "json", "sql": sql}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def test_served_atlas_answers_on_localhost_with_the_table():
    pytest.importorskip("embedding_atlas")
    from app.atlas import serve_atlas

    x, _ = clustered(n_per=10)
    names = [f"img{i}.png" for i in range(3)]
    atlas = atlas_map(lambda ids: x[ids], np.arange(30) // 10, np.arange(30) % 10 // 5, np.arange(30) % 5, names,
                      [(2, 5)] * 3, lambda i: patchwork(np.full((2, 5, 3), 40 * i)), "pca")
    server = serve_atlas(atlas.table)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "data/metadata.json", timeout=30) as response:
            props = json.load(response)["props"]
        assert props["data"]["projection"] == {"x": "x", "y": "y"} and props["data"]["image"] == "thumbnail"
        rows = json.loads(query(server.url, "SELECT image, \"row\", col, patch FROM dataset WHERE id = 17"))
        assert rows == [{"image": "img1.png", "row": 1, "col": 2, "patch": "img1.png · row 1, col 2"}]
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_atlas_of_an_index_has_every_patch_with_its_thumbnail_and_the_gallery_link(tiny_encoder, image_file):
    from app.views.atlas import atlas_of_index, atlas_result
    from ssl_core.search.patch_index import PatchIndex

    paths = [image_file(f"img{i}.png", 64, 96, seed=i) for i in range(3)]
    index, _ = PatchIndex.build(paths, tiny_encoder, kind="exact", device="cpu")
    atlas = atlas_of_index(index, "pca", side=8)
    table = atlas.table
    assert table.num_rows == len(index) and atlas.missing == []
    np.testing.assert_array_equal(table["row"].to_numpy(), index.patch_positions()[1])
    p = index.manifest.patch_size
    for point in (0, len(index) // 2, len(index) - 1):
        image_id, row, col = (int(a[point]) for a in index.patch_positions())
        patch = index.processed_image(image_id)[row * p:(row + 1) * p, col * p:(col + 1) * p].astype(np.float64)
        assert np.abs(decode(table["thumbnail"][point].as_py()).mean((0, 1)) - patch.mean((0, 1))).max() < 10
    result = atlas_result(atlas, "http://127.0.0.1:5999/")
    assert "[open the map of" in result.notes and "(http://127.0.0.1:5999/)" in result.notes
    np.testing.assert_array_equal(result.numbers["image_ids"], index.patch_positions()[0])
    assert result.numbers["coords"].shape == (len(index), 2)
