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
# WebGL through SwiftShader: without --disable-gpu, and with software WebGL allowed
ATLAS_FLAGS = [flag for flag in CHROMIUM_FLAGS if flag != "--disable-gpu"] + ["--enable-unsafe-swiftshader"]
TOOLTIP = re.compile(r"(synthetic-(\d{7})\.jpg) · row (\d+), col (\d+)")
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
    page.get_by_text(f"{POINTS:,} points").first.wait_for(timeout=300_000)
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
    text = ""
    for fx, fy in [(0.5, 0.5), (0.45, 0.5), (0.55, 0.45), (0.5, 0.55)]:  # the middle of the cloud: points everywhere
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_timeout(2_000)
        found = page.get_by_text(TOOLTIP).first
        if found.count():
            text = found.inner_text()
            break
    screenshot(page, f"{name}-tooltip")
    match = TOOLTIP.search(text)
    assert match, f"no tooltip naming a synthetic patch: {text!r}"
    image_id, row, col = int(match.group(2)), int(match.group(3)), int(match.group(4))
    assert image_id < -(-POINTS // (GRID[0] * GRID[1])) and row < GRID[0] and col < GRID[1]
    sources = page.evaluate("Array.from(document.querySelectorAll('img')).map(i => i.src)")
    thumbnails = [s for s in sources if s.startswith("data:image/webp;base64,")]
    assert thumbnails, "the tooltip shows no thumbnail"
    shown = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).convert("RGB"), np.float64)
             for s in thumbnails]
    errors = [np.abs(t - expected_thumbnail(image_id, row, col)).mean() for t in shown if t.shape[:2] == (16, 16)]
    assert errors and min(errors) < 12, f"no thumbnail shows patch ({row}, {col}) of image {image_id}: {errors}"
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
        page.wait_for_function("() => document.querySelector('#index-info').innerText.includes('1,000,000')",
                               timeout=300_000)
        page.get_by_label("the index").check()
        page.locator("#map-run").click()
        link = page.locator("#map-info a", has_text="open the map")
        link.wait_for(timeout=900_000)
        url = link.get_attribute("href")
        assert url.startswith("http://127.0.0.1:")
        screenshot(page, "atlas-app-link")
        check_atlas(open_atlas(playwright, url), "atlas-app")
