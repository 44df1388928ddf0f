"""The Gallery view in a real browser: index the examples, click a patch, see k crops; map and pick a point."""
from __future__ import annotations

import numpy as np
import pytest

from browser import LiveApp, gallery_srcs, image_from_element, open_browser, requires_browser, screenshot, wait_for_gallery_change

pytestmark = [pytest.mark.browser, requires_browser]


def test_index_search_and_umap_pick():
    from playwright.sync_api import sync_playwright

    with LiveApp("--model", "random-tiny") as app, sync_playwright() as p:
        browser = open_browser(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1200})
        page.goto(app.url)
        page.locator("#add-examples").click()
        image_from_element(page, "#inspect-image")
        page.get_by_role("tab", name="Gallery").click()
        page.locator("#gallery-build").click()
        page.wait_for_function("() => document.querySelector('#index-info').innerText.includes('patches')",
                               timeout=120_000)
        query = image_from_element(page, "#gallery-query")
        page.locator("#gallery-query img").first.click(position={"x": query.shape[1] // 3, "y": query.shape[0] // 2})
        hits = wait_for_gallery_change(page, "#gallery-hits", [], 8, timeout_ms=60_000)
        assert len(hits) == 8
        assert "nearest" in page.locator("#gallery-hit-info").inner_text()
        screenshot(page, "gallery-search")

        page.locator("#map-run").click()
        picture = image_from_element(page, "#map-picture", timeout_ms=300_000)
        # click the most saturated pixel: a point of the scatter
        rgb = picture.astype(int)
        saturation = rgb.max(-1) - rgb.min(-1)
        y, x = np.unravel_index(np.argmax(saturation), saturation.shape)
        shown = page.locator("#map-picture img").first
        box = shown.bounding_box()
        scale = box["width"] / picture.shape[1]
        shown.click(position={"x": x * scale, "y": y * scale})
        image_from_element(page, "#map-crop", timeout_ms=60_000)
        assert "patch (row" in page.locator("#map-caption").inner_text()
        screenshot(page, "gallery-map")
        browser.close()
