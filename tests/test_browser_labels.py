"""Labels that match the pictures, in a real browser: context drift on the MAE's crop with the MAE's mask and a
fixed, stated colour scale; the grid mask says the ratio does not apply; the Lab's CKA figure is the pair its
finding names, and a measure on several models is one table with the models as rows."""
from __future__ import annotations

import numpy as np
import pytest
from browser import (
    BAR_WIDTH,
    LiveApp,
    bars,
    choose_models,
    image_from_element,
    open_app,
    plot_data,
    requires_browser,
    run_lab,
    screenshot,
    src_of,
    wait_for_new_image,
    wait_for_text,
)

from ssl_core.models.registry import bundled_names

pytestmark = [pytest.mark.browser, requires_browser,
              pytest.mark.skipif(not {"patchlens-mae", "patchlens-sup", "patchlens-dino"} <= set(bundled_names()),
                                 reason="the bundled patchlens-mae, -sup and -dino weights are not installed")]
GREY = np.array([128, 128, 128])


def grey_cells(picture: np.ndarray, grid: int) -> set[tuple[int, int]]:
    """Patches of a displayed square map (colour bar cut off) filled entirely with the mask grey."""
    step = picture.shape[0] // grid
    return {(r, c) for r in range(grid) for c in range(grid)
            if (picture[r * step:(r + 1) * step, c * step:(c + 1) * step].reshape(-1, 3) == GREY).all()}


def lab_tables(page) -> list[list[str]]:
    """The header cells of every table the Lab result shows."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#lab-result table'))
        .map(t => Array.from(t.querySelectorAll('thead th')).map(th => th.innerText.trim()))""")


def test_drift_shares_the_mae_crop_and_mask_and_says_its_fixed_scale(image_file):
    from playwright.sync_api import sync_playwright

    photo = image_file("wide.png", 140, 210, seed=3)  # 2:3 — the encoder alone would see 12 x 18 patches
    with LiveApp("--model", "patchlens-sup", env={"PATCHLENS_UMAP_WARM_UP": "0"}) as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100)
        page.locator("#uploads input[type=file]").set_input_files(photo)
        image_from_element(page, "#inspect-image")
        page.get_by_role("tab", name="Reconstruct").click()
        masked = image_from_element(page, "#rec-masked")
        wait_for_text(page, "#drift-info", "removed", 120_000)
        drift = image_from_element(page, "#drift-map")
        assert "108/144 patches hidden" in page.locator("#rec-info").inner_text()
        info = page.locator("#drift-info").inner_text()
        assert "108/144 patches removed" in info and "the MAE's mask" in info and "centre crop" in info
        assert drift.shape[0] == masked.shape[0] and drift.shape[1] == masked.shape[1] + BAR_WIDTH
        assert grey_cells(drift[:, :-BAR_WIDTH], 12) == grey_cells(masked, 12)  # the same hidden patches
        assert bars(drift[:, -BAR_WIDTH:], "viridis") == 1
        assert "fixed scale from 0" in info
        positions = wait_for_text(page, "#positions-info", "ROC AUC", 120_000)  # a random 15% by default
        assert "22/144 patches (boxed) trade position embeddings in a cycle: a random 15% of the patches" in positions
        page.get_by_label("the masked patches").check()  # now the MAE's mask
        positions = wait_for_text(page, "#positions-info", "the masked patches", 120_000)
        assert "108/144 patches (boxed)" in positions and "the MAE's mask" in positions
        [trace] = plot_data(page, "#drift-readout")
        assert (trace["zmin"], trace["zmax"]) == (0, 1)  # the scale is fixed, whatever the values

        previous = src_of(page, "#rec-masked")
        page.get_by_label("grid", exact=True).check()
        wait_for_new_image(page, "#rec-masked", previous)
        wait_for_text(page, "#rec-info", "grid")
        assert "the ratio slider does not apply to the grid mask" in page.locator("#rec-info").inner_text()
        assert page.locator("#mask-ratio input[type=range]").is_disabled()
        assert "not used by the grid mask" in page.locator("#mask-ratio").inner_text()
        screenshot(page, "labels-reconstruct")
        page.context.browser.close()
    assert "unexpected error" not in app.output()


def test_lab_tables_cross_models_and_its_cka_figure_is_the_pair_its_finding_names():
    from playwright.sync_api import sync_playwright

    with LiveApp("--model", "patchlens-sup", env={"PATCHLENS_UMAP_WARM_UP": "0"}) as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100)
        # sup, mae, dino: the CKA pairs are sup-mae, then sup-dino
        page.get_by_role("tab", name="Lab").click()
        choose_models(page, ["patchlens-sup", "patchlens-mae"], ["patchlens-dino"])
        for box, value in (("Scenes to fit on", "16"), ("Scenes to score on", "8")):
            page.get_by_label(box).fill(value)
        run_lab(page, "object vs part probes", "Chance levels")
        [table] = [t for t in lab_tables(page) if t and t[0] == "encoder"]  # one table, the models as rows
        assert "object bal. acc." in table
        rows = page.evaluate("""() => Array.from(document.querySelectorAll('#lab-result table'))
            .filter(t => t.querySelector('thead th').innerText.trim() === 'encoder')
            .map(t => Array.from(t.querySelectorAll('tbody tr')).map(r => r.cells[0].innerText.trim()))""")
        assert rows == [["patchlens-sup", "patchlens-mae", "patchlens-dino"]]
        assert not page.locator("#lab-location").is_visible() and not page.locator("#lab-cka").is_visible()
        details = page.locator("#lab-details").inner_text()  # each encoder's own table, below the cross-model one
        assert "Per encoder" in details and "patchlens-dino" in details

        text = run_lab(page, "the whole Lab", "What holds here")
        finding = next(line for line in text.splitlines() if line.startswith("CKA"))
        assert finding.index("patchlens-sup vs patchlens-mae") < finding.index("patchlens-sup vs patchlens-dino")
        page.locator("#lab-cka .js-plotly-plot").wait_for(timeout=60_000)
        title = page.evaluate("() => document.querySelector('#lab-cka .js-plotly-plot').layout.title.text")
        assert "patchlens-sup and patchlens-mae" in title  # the figure is the finding's first pair
        assert "The CKA figure shows patchlens-sup vs patchlens-mae" in text
        # the findings, then the pictures and the CKA figure, then the long tables: no scrolling past tables
        image_from_element(page, "#lab-location")
        top = {name: page.locator(f"#lab-{name}").bounding_box()["y"] for name in ("result", "location", "cka",
                                                                                    "details")}
        assert top["result"] < top["location"] < top["cka"] < top["details"]
        assert "Per encoder" in page.locator("#lab-details").inner_text() and "Per encoder" not in text
        screenshot(page, "labels-lab")
        page.context.browser.close()
    assert "unexpected error" not in app.output()
