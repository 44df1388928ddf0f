"""The first UMAP of a server comes as fast as the next ones: the server compiles UMAP's numba code in a
low-priority thread as it starts, so once that warm-up is done a first map takes seconds, not minutes."""
from __future__ import annotations

import time

import pytest
from browser import LiveApp, image_from_element, open_app, requires_browser, screenshot

pytestmark = [pytest.mark.browser, requires_browser]
WARM_UP_S = 600  # compiling on a busy 2-core CPU
FIRST_MAP_S = 20  # a map of the examples' ~600 patches, compiled: about 7 s here (uncompiled: 30 s to minutes)


def test_the_first_map_after_the_warm_up_is_fast():
    from playwright.sync_api import sync_playwright

    with LiveApp("--model", "random-tiny") as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1200)
        page.locator("#add-examples").click()
        image_from_element(page, "#inspect-image")
        assert "UMAP warm-up started" in app.output()  # at server start
        deadline = time.monotonic() + WARM_UP_S
        while "UMAP warm-up finished" not in app.output():
            assert time.monotonic() < deadline, f"no UMAP warm-up finished within {WARM_UP_S} s:\n{app.output()}"
            time.sleep(2)
        assert "nothing" not in app.output().split("UMAP warm-up finished")[1].splitlines()[0]

        page.get_by_role("tab", name="Gallery").click()
        start = time.monotonic()
        page.locator("#map-run").click()  # UMAP, the default
        image_from_element(page, "#map-picture", timeout_ms=FIRST_MAP_S * 1000)
        assert "UMAP" in page.locator("#map-info").inner_text()
        print(f"first map after the warm-up: {time.monotonic() - start:.1f} s")
        screenshot(page, "umap-after-warm-up")
        page.context.browser.close()
    assert "unexpected error" not in app.output()
