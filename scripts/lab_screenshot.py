"""The README's screenshot of the Lab tab: the whole Lab on the bundled models, in the real app, in headless Chromium.

    python scripts/lab_screenshot.py [--out docs/screenshots/lab.png] [--n-train 300] [--n-test 150]

It starts ``patchlens serve`` on a free local port and runs the Lab's "whole Lab" measure on the default encoders
(every bundled model) as the browser tests do (`tests/browser.py`: `LiveApp`, `run_lab`), then saves the page from
the top to the end of the CKA figure: the findings, the location-probe and part-map pictures, the CKA figure. Needs
Chromium and Playwright (``pip install -e '.[dev]'``); takes a few minutes on a CPU.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import LiveApp, image_from_element, open_app, run_lab  # noqa: E402

from app.views.lab import EVERYTHING  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/screenshots/lab.png")
    parser.add_argument("--n-train", type=int, default=300, help="scenes to fit on")
    parser.add_argument("--n-test", type=int, default=150, help="scenes to score on")
    args = parser.parse_args()
    with LiveApp() as app, sync_playwright() as p:
        page = open_app(p, app, 1500, 1100)
        page.get_by_role("tab", name="Lab").click()
        for label, value in (("Scenes to fit on", args.n_train), ("Scenes to score on", args.n_test)):
            page.get_by_label(label).fill(str(value))
        run_lab(page, EVERYTHING, "What holds here")
        for picture in ("#lab-location", "#lab-parts"):  # the browser loads a picture once it is scrolled to
            image_from_element(page, picture)
        page.locator("#lab-cka .js-plotly-plot").wait_for(state="visible")
        bottom = page.evaluate("() => { const r = document.querySelector('#lab-cka').getBoundingClientRect();"
                               " return r.bottom + window.scrollY; }")
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shot.crop((0, 0, shot.width, min(shot.height, int(bottom) + 16))).save(args.out, optimize=True)
        print(f"wrote {args.out} ({shot.width} px wide)")


if __name__ == "__main__":
    main()
