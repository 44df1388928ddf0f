"""The Reconstruct tab: an MAE fills in hidden patches; context drift and the CAE predictor under the same mask."""
from __future__ import annotations

import gradio as gr
import numpy as np
from gradio.components import Component

from app.ui.app import PatchLensApp
from app.ui.state import LoadedImage
from app.ui.wiring import SharedControls, chain, clicked, find_image, readout_plot, switch
from app.views import reconstruct as views
from app.views.result import ViewResult, file_stem
from ssl_core.errors import PatchLensError
from ssl_core.mim.masks import Cell
from ssl_core.models.registry import DEFAULT_MAE, MAE_SOURCES

HELP = {
    "reconstruct": """**Masked image modeling at work.** Hide patches (at random, in blocks as BEiT does, on a grid,
or click patches yourself) and watch an MAE fill them in from what is left — part-to-part reasoning: the model
infers a hidden part from the visible ones. Left to right: what the MAE sees, its prediction for every patch, its
prediction pasted into the hidden patches only, and the error of each hidden patch.""",
    "representation": """**Representation space (CAE's idea), for the model chosen at the top.** Encode the visible
patches alone and the whole image: how far does each visible patch's representation move when the grey patches are
removed? Both maps below use the MAE's centre crop and its mask (carried onto the model's grid when that differs).
Patches whose tokens lean on the removed context turn dark; the colour bar shows the fixed scale.""",
    "positions": """**Wrong positions (DILEMMA's idea), for the model chosen at the top.** Some patches (boxed: a
random share, or the masked patches above) trade position embeddings in a cycle. Does each token know it sits at the
wrong place? A linear probe, fitted once per model and loaded images on random swaps of 10-50% of their patches
(whose swaps are known), colours every token by its P(swapped). A model whose tokens carry their own position
(DILEMMA) lights up the boxes; one that ignores positions cannot. Keep the share small: when most patches are
misplaced, their context is wrong too and no token can tell.""",
}
Hidden = frozenset[Cell]


class ReconstructTab:
    """Callbacks take the image, the MAE or the model inputs, the mask (kind, ratio, seed, custom hidden cells) and
    the patch-grid toggle."""

    def __init__(self, app: PatchLensApp):
        self.app = app

    def reconstruct(self, images: list[LoadedImage], selected: str | None, mae_name: str, mae_weights: str | None,
                    kind: str, ratio: float, seed: float | None, hidden: Hidden | None, grid: bool,
                    progress: gr.Progress = gr.Progress()) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult(notes="Add an image (or the examples) to start.")
        progress(0.3, desc="loading the MAE")
        mae = self.app.mae(mae_name, mae_weights)
        result = views.reconstruct_view(mae, image.image, kind, ratio, int(seed or 0), hidden or frozenset(),
                                        bool(grid))
        return result.named(file_stem(mae_name or "mae", "reconstruction")).for_image(image.name)

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

    def mae_grid(self, mae_name: str, mae_weights: str | None) -> tuple[int, int] | None:
        """The MAE's patch grid, whose mask the other views share; None where the MAE does not load (its own view
        says why)."""
        try:
            return tuple(self.app.mae(mae_name, mae_weights).grid_hw)
        except PatchLensError:
            return None

    def cae(self, images: list[LoadedImage], selected: str | None, mae_name: str, mae_weights: str | None, kind: str,
            ratio: float, seed: float | None, hidden: Hidden | None, grid: bool) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult()
        return views.cae_alignment_view(self.app.pool.get_cae(), image.image, kind, ratio, int(seed or 0),
                                        hidden or frozenset(), self.mae_grid(mae_name, mae_weights),
                                        bool(grid)).for_image(image.name)

    def positions(self, images: list[LoadedImage], selected: str | None, mae_name: str, mae_weights: str | None,
                  kind: str, ratio: float, seed: float | None, hidden: Hidden | None, source: str, share: float,
                  grid: bool, *model_args: object, progress: gr.Progress = gr.Progress()) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult()
        encoder = self.app.encoder(*model_args)
        others = [loaded.image for loaded in images if loaded is not image]

        def fitting(done: int, total: int) -> None:
            progress(done / total, desc="fitting the position probe")
        return views.position_view(encoder, image.image, others, share, source, kind, ratio, int(seed or 0),
                                   hidden or frozenset(), self.mae_grid(mae_name, mae_weights), bool(grid),
                                   fitting).for_image(image.name)

    def drift(self, images: list[LoadedImage], selected: str | None, mae_name: str, mae_weights: str | None,
              kind: str, ratio: float, seed: float | None, hidden: Hidden | None, grid: bool,
              *model_args: object) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult()
        return views.context_drift_view(self.app.encoder(*model_args), image.image, kind, ratio, int(seed or 0),
                                        hidden or frozenset(), self.mae_grid(mae_name, mae_weights),
                                        bool(grid)).for_image(image.name)

    @staticmethod
    def ratio_control(kind: str) -> dict:
        """The ratio slider applies to random and block masks only, and says so."""
        applies = kind in ("random", "block")
        return gr.update(interactive=applies, label="Ratio hidden" if applies else
                         f"Ratio hidden (not used by the {kind} mask)")

    def build(self, shared: SharedControls) -> ReconstructTab:
        with gr.Tab("Reconstruct", id="reconstruct"):
            gr.Markdown(HELP["reconstruct"])
            with gr.Row():
                mae_name = gr.Dropdown([(f"{n} — {src.description}", n) for n, src in MAE_SOURCES.items()],
                                       value=DEFAULT_MAE, label="MAE (with its decoder)", allow_custom_value=True,
                                       elem_id="mae-model", scale=2)
                mae_weights = gr.File(label="…or an MAE checkpoint file", type="filepath", scale=1,
                                      elem_id="mae-weights", file_types=[".safetensors", ".pth", ".pt", ".bin"])
            with gr.Row():
                mask_kind = gr.Radio(["random", "block", "grid", "custom"], value="random", label="Mask",
                                     elem_id="mask-kind")
                mask_ratio = gr.Slider(0.05, 0.95, 0.75, step=0.05, label="Ratio hidden", elem_id="mask-ratio")
                mask_seed = gr.Number(0, precision=0, label="Seed", elem_id="mask-seed")
                mask_clear = gr.Button("Clear custom mask")
            with gr.Row():
                rec = {name: gr.Image(label=label, interactive=False, format="png", elem_id=f"rec-{elem}")
                       for name, label, elem in RECONSTRUCT_PICTURES}
            rec_info = gr.Markdown(elem_id="rec-info")
            with gr.Row():
                rec_readout = readout_plot("rec-readout", "the error of each hidden patch")
                rec_numbers = gr.File(label="Reconstruction (.npz)", elem_id="rec-export")
            gr.Markdown(HELP["representation"])
            drift = self._map_row("drift", "Context drift of the chosen model (the MAE's centre crop and mask)")
            cae = self._map_row("cae", "CAE: predicted vs own latent of each hidden patch (cosine)")
            gr.Markdown(HELP["positions"])
            with gr.Row():
                swap_source = gr.Radio(list(views.SWAP_SOURCES), value=views.SWAP_SOURCES[0], label="Patches swapped",
                                       elem_id="swap-source")
                swap_share = gr.Slider(0.05, 0.5, 0.15, step=0.05, label="Share swapped (random; seed above)",
                                       elem_id="swap-share")
            positions = self._map_row("positions", "Wrong positions of the chosen model: P(swapped), swaps boxed")
            hidden = gr.State(frozenset())  # custom mask: hidden (row, col) cells
            mae_loaded = gr.State([DEFAULT_MAE, None, None])  # the MAE last loaded: name, checkpoint, grid
        self._wire(shared, mae_name, mae_weights, mae_loaded, [mask_kind, mask_ratio, mask_seed, hidden], mask_clear,
                   rec, {"markdown": rec_info, "error_readout": rec_readout, "numbers": rec_numbers}, drift, cae,
                   positions, [swap_source, swap_share])
        return self

    def _map_row(self, elem: str, label: str) -> dict[str, Component]:
        """A map with its notes, hover readout and numbers."""
        with gr.Row():
            picture = gr.Image(label=label, interactive=False, format="png", elem_id=f"{elem}-map")
            info = gr.Markdown(elem_id=f"{elem}-info")
        with gr.Row():
            readout = readout_plot(f"{elem}-readout")
            numbers = gr.File(label=f"{label.split(' (')[0]} (.npz)", elem_id=f"{elem}-export")
        return {"picture": picture, "markdown": info, "readout": readout, "numbers": numbers}

    def _wire(self, shared: SharedControls, mae_name: gr.Dropdown, mae_weights: gr.File, mae_loaded: gr.State,
              mask_inputs: list[Component],
              mask_clear: gr.Button, rec: dict[str, gr.Image], rec_outputs: dict[str, Component],
              drift_row: dict[str, Component], cae_row: dict[str, Component],
              positions_row: dict[str, Component], swap_controls: list[Component]) -> None:
        app, images, selected, grid = self.app, shared.images, shared.selected, shared.grid
        mask_kind, mask_ratio, mask_seed, hidden = mask_inputs
        reconstruct = app.view(self.reconstruct, [images, selected, mae_name, mae_weights, *mask_inputs, grid],
                               {**rec, **rec_outputs})
        mae_inputs = [images, selected, mae_name, mae_weights, *mask_inputs]
        drift = app.view(self.drift, [*mae_inputs, *shared.grid_and_model], {
            "drift": drift_row["picture"], "markdown": drift_row["markdown"],
            "drift_readout": drift_row["readout"], "numbers": drift_row["numbers"]})
        cae = app.view(self.cae, [*mae_inputs, grid], {
            "alignment": cae_row["picture"], "markdown": cae_row["markdown"],
            "alignment_readout": cae_row["readout"], "numbers": cae_row["numbers"]})
        positions = app.view(self.positions, [*mae_inputs, *swap_controls, *shared.grid_and_model], {
            "positions": positions_row["picture"], "markdown": positions_row["markdown"],
            "positions_readout": positions_row["readout"], "numbers": positions_row["numbers"]})
        mask_kind.change(self.ratio_control, [mask_kind], [mask_ratio])
        chain(drift.on(selected.change), cae, positions)  # the views that need no MAE go on without one
        shared.on_model.extend([drift, positions])  # the two maps of the model chosen at the top
        for control in swap_controls:
            positions.on(control.change)
        reconstruct.on(selected.change)
        checking = app.action(self.mae_status, [mae_name, mae_weights, mae_loaded, hidden],
                              [mae_name, mae_weights, mae_loaded, hidden])
        for control in (mae_name, mae_weights):  # a failed switch puts the controls back (`mae_status`)
            switched = checking.on(control.change)
            chain(switched, reconstruct)
            chain(switched, drift, cae, positions)
        for control in (mask_kind, mask_ratio, mask_seed, grid):
            reconstruct.on(control.change)
            chain(drift.on(control.change), cae, positions)
        toggled = app.action(self.toggle_patch, [images, selected, mae_name, mae_weights, hidden, rec["masked"]],
                             [hidden, mask_kind]).on(rec["masked"].select)
        cleared = mask_clear.click(lambda: frozenset(), None, hidden)
        for event in (toggled, cleared):
            chain(event, reconstruct)
            chain(event, drift, cae, positions)


RECONSTRUCT_PICTURES = (("masked", "Masked input (click patches: custom mask)", "masked"),
                        ("reconstruction", "Reconstruction", "output"),
                        ("pasted", "Reconstruction + visible patches", "pasted"),
                        ("error", "Error per hidden patch", "error"))
