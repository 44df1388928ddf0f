"""A map of a million synthetic patches opens in Embedding Atlas, in headless Chromium, from `patchlens umap --engine
atlas` and from the Gallery: the points are drawn, and a point's tooltip shows its image, patch and thumbnail.

The gallery is bench/bench_atlas.py's `synthetic_index` (1,000,000 32-dimensional vectors, 5,103 JPEG images of
14x14 patches), built once for the module. Embedding Atlas draws with WebGL 2 here (Chromium's SwiftShader: no
WebGPU adapter in a headless browser without a GPU). The page may fetch nothing but its own server.
"""
from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, CHROMIUM_FLAGS, LiveApp, open_app, requires_browser, screenshot
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_atlas import GRID, PATCH, synthetic_image, synthetic_index  # noqa: E402

from ssl_core.render.atlas import THUMBNAIL_SIDE  # noqa: E402

pytestmark = [requires_browser, pytest.mark.browser, pytest.mark.slow]
POINTS = 1_000_000
PATCHES = -(-POINTS // (GRID[0] * GRID[1])) * GRID[0] * GRID[1]  # whole images: 5,103 x 196 = 1,000,188
# WebGL through SwiftShader: without --disable-gpu, and with software WebGL allowed
ATLAS_FLAGS = [flag for flag in CHROMIUM_FLAGS if flag != "--disable-gpu"] + ["--enable-unsafe-swiftshader"]
TOOLTIP = re.compile(r"(synthetic-(\d{7})\.jpg) · row (\d+), col (\d+)")
# the tooltip: the smallest element holding a patch caption, the word "thumbnail" (its field names; the table's rows
# have none) and a WebP thumbnail; its text and the thumbnail's data URL
TOOLTIP_JS = """(pattern) => {
    const re = new RegExp(pattern);
    const found = Array.from(document.querySelectorAll('div')).filter(d => d.innerText && re.test(d.innerText)
        && d.innerText.includes('thumbnail') && d.querySelector('img[src^="data:image/webp"]'));
    found.sort((a, b) => a.innerText.length - b.innerText.length);
    return found.length ? {text: found[0].innerText, src: found[0].querySelector('img[src^="data:image/webp"]').src}
                        : null;
}"""
pytest.importorskip("embedding_atlas")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """The folder holding the synthetic index (``index``) and its images (``images``)."""
    folder = tmp_path_factory.mktemp("atlas-gallery")
    synthetic_index(folder, POINTS, 32)
    return folder


def open_atlas(playwright, url: str):
    """A page on the atlas at ``url``, every request outside its server refused and recorded."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ATLAS_FLAGS, headless=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.outside = []
    origin = re.match(r"https?://[^/]+", url).group(0)

    def refuse(route) -> None:
        page.outside.append(route.request.url)
        route.abort()
    page.route(re.compile(rf"^(?!{re.escape(origin)}|data:|blob:).*"), refuse)
    page.goto(url)
    return page


def expected_thumbnail(image_id: int, row: int, col: int) -> np.ndarray:
    """Independent of ssl_core.render.atlas: the synthetic image's patch, averaged down to the thumbnail side."""
    patch = synthetic_image(image_id)[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH].astype(np.float64)
    step = PATCH // THUMBNAIL_SIDE
    return patch.reshape(THUMBNAIL_SIDE, step, THUMBNAIL_SIDE, step, 3).mean((1, 3))


def check_atlas(page, name: str) -> None:
    """The atlas shows all the points, draws them, and a hovered point's tooltip names and shows its patch."""
    page.get_by_text(f"{PATCHES:,} points").first.wait_for(timeout=300_000)
    canvas = page.locator("canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(5_000)  # the density and point layers draw over a few frames
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(np.int64)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]  # the commonest colour
    drawn = (np.abs(pixels - background).sum(-1) > 30).mean()
    screenshot(page, f"{name}-points")
    assert drawn > 0.05, f"only {drawn:.1%} of the map's pixels differ from its background"
    box = canvas.bounding_box()
    tooltip = None
    for fx, fy in [(0.5, 0.5), (0.45, 0.5), (0.55, 0.45), (0.5, 0.55)]:  # the middle of the cloud: points everywhere
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_timeout(2_000)
        tooltip = page.evaluate(TOOLTIP_JS, TOOLTIP.pattern)
        if tooltip:
            break
    screenshot(page, f"{name}-tooltip")
    assert tooltip, "hovering the map shows no tooltip with a patch and its thumbnail"
    image_id, row, col = (int(v) for v in TOOLTIP.search(tooltip["text"]).group(2, 3, 4))
    assert image_id < PATCHES // (GRID[0] * GRID[1]) and row < GRID[0] and col < GRID[1]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(tooltip["src"].split(",", 1)[1]))).convert("RGB"))
    assert shown.shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    error = np.abs(shown - expected_thumbnail(image_id, row, col)).mean()
    assert error < 12, f"the tooltip's thumbnail is not patch ({row}, {col}) of image {image_id}: error {error:.1f}"
    assert page.outside == [], f"the atlas fetched from outside its server: {page.outside[:5]}"


def test_patchlens_umap_engine_atlas_serves_a_million_patch_map(gallery):
    from playwright.sync_api import sync_playwright

    command = [sys.executable, "-m", "app.cli.main", "umap", "--index", str(gallery / "index"), "--engine", "atlas",
               "--method", "pca"]
    env = {**os.environ, "PATCHLENS_UMAP_WARM_UP": "0", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url, deadline = None, time.monotonic() + 900
        while url is None and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            found = re.search(r"Embedding Atlas: (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url, f"patchlens umap printed no atlas URL (exit code {process.poll()})"
        with sync_playwright() as playwright:
            check_atlas(open_atlas(playwright, url), "atlas-cli")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_gallery_map_of_a_million_patch_index_opens_in_embedding_atlas(gallery):
    from playwright.sync_api import sync_playwright

    with LiveApp("--model", "random-tiny", "--allow-dir", str(gallery), env={"PATCHLENS_UMAP_WARM_UP": "0"}) as app, \
            sync_playwright() as playwright:
        page = open_app(playwright, app)
        page.get_by_role("tab", name="Gallery").click()
        page.get_by_label("Index folder to load or save (under --allow-dir)").fill(str(gallery / "index"))
        page.get_by_role("button", name="Load index").click()
        page.wait_for_function("(n) => document.querySelector('#index-info').innerText.includes(n)",
                               arg=f"{PATCHES:,} patches", timeout=300_000)
        page.get_by_label("the index").check()
        page.locator("#map-method").get_by_label("pca").check()  # UMAP's transform of a million points: minutes
        page.locator("#map-run").click()
        link = page.locator("#map-info a", has_text="open the map")
        link.wait_for(timeout=900_000)
        url = link.get_attribute("href")
        assert url.startswith("http://127.0.0.1:")
        screenshot(page, "atlas-app-link")
        check_atlas(open_atlas(playwright, url), "atlas-app")
