"""The Compare tab: two to four encoders side by side on the chosen image; one click moves every similarity map."""
from __future__ import annotations

import gradio as gr

from app.ui.app import PatchLensApp
from app.ui.state import LoadedImage
from app.ui.wiring import SharedControls, chain, clicked, find_image, model_choices, readout_plot
from app.views import compare as views
from app.views.resolution import CHOICES as RESOLUTIONS
from app.views.resolution import PATCH_GRID
from app.views.result import Click, ViewResult
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder

HELP = """**Compare encoders side by side.** The same image through two to four encoders, view by view:
each row is one view, each column one encoder, all at the same size even when patch sizes differ. Click the image
on the left and every encoder's similarity map follows the same spot. Below the maps, where each encoder's heads look
block by block: how far (relative to attention spread evenly over the image) and how query-specific (0: every patch
attends to the same places). Download the whole comparison as a PNG or an HTML report."""


class CompareTab:
    def __init__(self, app: PatchLensApp):
        self.app = app

    def encoders(self, models: list[str], model: str, weights_upload: str | None, weights_path: str,
                 image_size: float | None, progress: gr.Progress) -> list[Encoder]:
        """The chosen encoders; the model chosen at the top comes with its weights file and resolution, as in the
        other views."""
        models = [m for m in (models or []) if m]
        if not 2 <= len(models) <= 4:
            raise BadRequest("Choose two to four encoders to compare.")
        main_model = model or self.app.config.default_model
        encoders = []
        for i, name in enumerate(models):
            progress((i, len(models)), desc=f"loading {name}")
            same = name == main_model
            encoders.append(self.app.encoder(name, weights_upload, weights_path, image_size) if same
                            else self.app.pool.get(name))
        progress((len(models), len(models)), desc="computing the views")
        return encoders

    def run(self, images: list[LoadedImage], selected: str | None, models: list[str], k: float, click: Click | None,
            resolution: str, grid: bool, model: str, weights_upload: str | None, weights_path: str, image_size: float | None,
            request: gr.Request, progress: gr.Progress = gr.Progress()) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            raise BadRequest("Add an image first.")
        encoders = self.encoders(models, model, weights_upload, weights_path, image_size, progress)
        return views.compare_view(encoders, image.image, click or Click.centre(), int(k),
                                  title=f"PatchLens: {image.name}", grid=bool(grid),
                                  resolution=resolution).for_image(image.name)

    def build(self, shared: SharedControls) -> CompareTab:
        with gr.Tab("Compare", id="compare"):
            gr.Markdown(HELP)
            with gr.Row():
                models = gr.Dropdown(model_choices(), value=[self.app.config.default_model], multiselect=True,
                                     max_choices=4, label="Encoders (2 to 4)", elem_id="compare-models",
                                     allow_custom_value=True, scale=3)
                k = gr.Slider(2, 12, 5, step=1, label="Parts (k)", scale=1)
                run = gr.Button("Compare", variant="primary", elem_id="compare-run", scale=1)
                stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", scale=1)
            resolution = gr.Radio(list(RESOLUTIONS), value=PATCH_GRID, label="Resolution", elem_id="compare-resolution")
            with gr.Row():
                image = gr.Image(label="Click a spot: every encoder's similarity map follows", interactive=False,
                                 format="png", elem_id="compare-image", scale=1)
                with gr.Column(scale=3):
                    table = gr.Dataframe(label="Numbers", interactive=False, elem_id="compare-table")
                    with gr.Row():
                        png = gr.File(label="Comparison (PNG)", elem_id="compare-png")
                        report = gr.File(label="Report (HTML)", elem_id="compare-html")
                        numbers = gr.File(label="Each column's maps (.npz)", elem_id="compare-export")
            rows = {row: gr.Image(label=row, interactive=False, format="png",
                                  elem_id=f"compare-{row.split()[0].lower()}") for row in views.ROWS}
            reach = gr.Plot(label="Where the heads look, block by block: attention distance and query-key NMI",
                            elem_id="compare-attention-range")
            readout = readout_plot("compare-readout", "each scalar map")
            click = gr.State(Click.centre())  # the spot, on the image as shown

        app = self.app
        compare = app.job("Compare", self.run, [shared.images, shared.selected, models, k, click, resolution,
                                                *shared.grid_and_model],
                          {"image": image, "by_encoder": table, "comparison.png": png, "comparison.html": report,
                           "numbers": numbers, "readout": readout, "attention_range": reach, **rows})
        app.stoppable(compare, run.click, stop)
        app.stoppable(compare, resolution.change, stop)
        chain(app.action(clicked, [image], [click]).on(image.select), compare)
        return self
