"""The Gallery view in a real browser: index the examples, click a patch, see k crops; map and pick a point."""
from __future__ import annotations

import numpy as np
import pytest
from browser import LiveApp, build_index_and_search, image_from_element, open_app, requires_browser, screenshot

pytestmark = [pytest.mark.browser, requires_browser]


def test_index_search_and_umap_pick():
    from playwright.sync_api import sync_playwright

    with LiveApp("--model", "random-tiny") as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1200)
        page.locator("#add-examples").click()
        image_from_element(page, "#inspect-image")
        hits = build_index_and_search(page, 1 / 3)
        assert len(hits) == 8
        assert "nearest" in page.locator("#gallery-hit-info").inner_text()
        screenshot(page, "gallery-search")

        page.locator("#map-run").click()
        picture = image_from_element(page, "#map-picture", timeout_ms=300_000)
        # click the most saturated pixel: a point of the scatter
        rgb = picture.astype(int)
        saturation = rgb.max(-1) - rgb.min(-1)
        saturation[:, 720:] = 0  # the points only: the legend's swatches lie right of the 720-px plot
        y, x = np.unravel_index(np.argmax(saturation), saturation.shape)
        shown = page.locator("#map-picture img").first
        box = shown.bounding_box()
        scale = box["width"] / picture.shape[1]
        shown.click(position={"x": x * scale, "y": y * scale})
        image_from_element(page, "#map-crop", timeout_ms=60_000)
        assert "patch (row" in page.locator("#map-caption").inner_text()
        screenshot(page, "gallery-map")
        page.context.browser.close()
