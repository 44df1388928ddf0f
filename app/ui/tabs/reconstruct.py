"""The Reconstruct tab: an MAE fills in hidden patches; context drift and the CAE predictor under the same mask."""
from __future__ import annotations

import gradio as gr
import numpy as np

from app.ui.app import PatchLensApp, SharedControls, chain, clicked, find_image, switch
from app.ui.state import LoadedImage
from app.views import reconstruct as views
from app.views.result import ViewResult
from ssl_core.mim.masks import Cell
from ssl_core.models.registry import DEFAULT_MAE, MAE_SOURCES

HELP = {
    "reconstruct": """**Masked image modeling at work.** Hide patches (at random, in blocks as BEiT does, on a grid,
or click patches yourself) and watch an MAE fill them in from what is left — part-to-part reasoning: the model
infers a hidden part from the visible ones. Left to right: what the MAE sees, its prediction for every patch, its
prediction pasted into the hidden patches only, and the error of each hidden patch.""",
    "representation": """**Representation space (CAE's idea), for the model chosen at the top.** Encode the visible
patches alone and the whole image: how far does each visible patch's representation move when the grey patches are
removed? Patches whose tokens lean on the removed context turn dark.""",
}
Hidden = frozenset[Cell]


class ReconstructTab:
    """Callbacks take the image, the MAE or the model inputs, and the mask: kind, ratio, seed, custom hidden cells."""

    def __init__(self, app: PatchLensApp):
        self.app = app

    def reconstruct(self, images: list[LoadedImage], selected: str | None, mae_name: str, mae_weights: str | None,
                    kind: str, ratio: float, seed: float | None, hidden: Hidden | None,
                    progress: gr.Progress = gr.Progress()) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult(notes="Add an image (or the examples) to start.")
        progress(0.3, desc="loading the MAE")
        return views.reconstruct_view(self.app.mae(mae_name, mae_weights), image.image, kind, ratio, int(seed or 0),
                                      hidden or frozenset())

    def mae_status(self, mae_name: str, mae_weights: str | None, loaded: list | None, hidden: Hidden | None) -> tuple:
        """Load the chosen MAE: (its name and checkpoint, what is loaded, the custom mask: kept only on the same
        grid). When it fails, the MAE controls go back to the MAE still loaded (see `switch`)."""
        mae, controls = switch(self.app.mae, [mae_name, mae_weights], loaded[:2] if loaded else None, "MAE")
        if mae is None:
            return (*controls, loaded, hidden)
        grid = list(mae.grid_hw)
        same_grid = bool(loaded) and len(loaded) > 2 and loaded[2] == grid
        return (*controls, [mae_name, mae_weights, grid], hidden if same_grid else frozenset())

    def toggle_patch(self, images: list[LoadedImage], selected: str | None, mae_name: str, mae_weights: str | None,
                     hidden: Hidden | None, masked: np.ndarray | None, evt: gr.SelectData) -> tuple:
        """A click on the masked picture hides or shows that patch, in the custom mask."""
        if find_image(images, selected) is None or evt is None or evt.index is None:
            return hidden, gr.update()
        mae = self.app.mae(mae_name, mae_weights)
        return views.toggle_patch(hidden, clicked(masked, evt), mae.grid_hw), "custom"

    def cae(self, images: list[LoadedImage], selected: str | None, kind: str, ratio: float, seed: float | None,
            hidden: Hidden | None) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult()
        return views.cae_alignment_view(self.app.pool.get_cae(), image.image, kind, ratio, int(seed or 0),
                                        hidden or frozenset())

    def drift(self, images: list[LoadedImage], selected: str | None, kind: str, ratio: float, seed: float | None,
              hidden: Hidden | None, *model_args: object) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult()
        return views.context_drift_view(self.app.encoder(*model_args), image.image, kind, ratio, int(seed or 0),
                                        hidden or frozenset())

    def build(self, shared: SharedControls) -> ReconstructTab:
        with gr.Tab("Reconstruct", id="reconstruct"):
            gr.Markdown(HELP["reconstruct"])
            with gr.Row():
                mae_name = gr.Dropdown([(f"{n} — {src.description}", n) for n, src in MAE_SOURCES.items()],
                                       value=DEFAULT_MAE, label="MAE (with its decoder)", allow_custom_value=True,
                                       elem_id="mae-model", scale=2)
                mae_weights = gr.File(label="…or an MAE checkpoint file", type="filepath", scale=1, elem_id="mae-weights",
                                      file_types=[".safetensors", ".pth", ".pt", ".bin"])
            with gr.Row():
                mask_kind = gr.Radio(["random", "block", "grid", "custom"], value="random", label="Mask",
                                     elem_id="mask-kind")
                mask_ratio = gr.Slider(0.05, 0.95, 0.75, step=0.05, label="Ratio hidden", elem_id="mask-ratio")
                mask_seed = gr.Number(0, precision=0, label="Seed", elem_id="mask-seed")
                mask_clear = gr.Button("Clear custom mask")
            with gr.Row():
                rec_masked = gr.Image(label="Masked input (click patches: custom mask)", interactive=False,
                                      format="png", elem_id="rec-masked")
                rec_output = gr.Image(label="Reconstruction", interactive=False, format="png", elem_id="rec-output")
                rec_pasted = gr.Image(label="Reconstruction + visible patches", interactive=False, format="png",
                                      elem_id="rec-pasted")
                rec_error = gr.Image(label="Error per hidden patch", interactive=False, format="png",
                                     elem_id="rec-error")
            rec_info = gr.Markdown(elem_id="rec-info")
            gr.Markdown(HELP["representation"])
            with gr.Row():
                drift_picture = gr.Image(label="Context drift of the chosen model (same mask)", interactive=False,
                                         format="png", elem_id="drift-map")
                drift_info = gr.Markdown(elem_id="drift-info")
            with gr.Row():
                cae_picture = gr.Image(label="CAE: predicted vs own latent of each hidden patch (cosine)",
                                       interactive=False, format="png", elem_id="cae-map")
                cae_info = gr.Markdown(elem_id="cae-info")
            hidden = gr.State(frozenset())  # custom mask: hidden (row, col) cells
            mae_loaded = gr.State([DEFAULT_MAE, None, None])  # the MAE last loaded: name, checkpoint, grid

        app, images, selected = self.app, shared.images, shared.selected
        mask_inputs = [mask_kind, mask_ratio, mask_seed, hidden]
        reconstruct = app.view(self.reconstruct, [images, selected, mae_name, mae_weights, *mask_inputs], {
            "masked": rec_masked, "reconstruction": rec_output, "pasted": rec_pasted, "error": rec_error,
            "markdown": rec_info})
        drift = app.view(self.drift, [images, selected, *mask_inputs, *shared.model_inputs],
                         {"drift": drift_picture, "markdown": drift_info})
        cae = app.view(self.cae, [images, selected, *mask_inputs], {"alignment": cae_picture, "markdown": cae_info})
        chain(drift.on(selected.change), cae)  # the views that need no MAE go on without one
        reconstruct.on(selected.change)
        checking = app.action(self.mae_status, [mae_name, mae_weights, mae_loaded, hidden],
                              [mae_name, mae_weights, mae_loaded, hidden])
        for control in (mae_name, mae_weights):
            switched = checking.on(control.change)
            chain(switched, reconstruct)
            chain(switched, drift, cae)
        for control in (mask_kind, mask_ratio, mask_seed):
            reconstruct.on(control.change)
        for control in (mask_kind, mask_ratio, mask_seed):
            chain(drift.on(control.change), cae)
        toggled = app.action(self.toggle_patch, [images, selected, mae_name, mae_weights, hidden, rec_masked],
                             [hidden, mask_kind]).on(rec_masked.select)
        cleared = mask_clear.click(lambda: frozenset(), None, hidden)
        for event in (toggled, cleared):
            chain(event, reconstruct)
            chain(event, drift, cae)
        return self
