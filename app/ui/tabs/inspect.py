"""The Inspect tab: the image as the model sees it, PCA, similarity to a clicked patch, parts, attention, BagSSL."""
from __future__ import annotations

import base64
import hashlib

import gradio as gr
import numpy as np
from gradio.components import Component

from app.ui.app import PatchLensApp
from app.ui.state import LoadedImage, load_image_bytes
from app.ui.wiring import Runner, SharedControls, chain, clicked, find_image, progress_callback, readout_plot, switch
from app.views import inspect as views
from app.views.resolution import CHOICES as RESOLUTIONS
from app.views.resolution import PATCH_GRID
from app.views.result import ViewResult
from ssl_core.errors import BadRequest
from ssl_core.render import draw

HELP = {
    "inspect": """**What am I looking at?** Left: the image as the model sees it (resized so both sides are whole
patches) — **click a patch** to see which patches of every loaded image resemble it (the *Similarity* tab below).
Middle: each patch token projected on the first three principal components, shown as R, G, B: patches with similar
colours have similar embeddings, so the parts of an object share a colour. Right: how much the class token attends
to each patch in the last layer (heads averaged) — often the object the image embedding is about. **Resolution**
draws every map of this tab on the raw patch grid, bilinear, or guided by the image's edges; a *difference* shows
what the upsampling drew that the patch grid does not have. **Facet** takes the similarity, PCA and parts maps from
the block's output or from its attention's keys, queries or values.""",
    "similarity": "Cosine similarity between the clicked patch and every patch of every loaded image, on one colour scale "
                  "(bright = similar). The clicked patch is boxed. Features are cached: a click costs no forward pass.",
    "pca": "PCA-to-RGB maps of all loaded images. Fitted jointly, a colour means the same thing in every image. "
           "The foreground mask keeps the patches whose first component is above the threshold (DINOv2's figure) "
           "and refits the PCA on them, so the colours then show the object's parts.",
    "parts": "k-means over the patch tokens of all loaded images at once (co-segmentation): the same colour is the same "
             "part in every image. Contrastive models tend to group whole objects; MIM models' tokens keep more of "
             "their place in the grid, so their parts are local. Tick *Each image on its own* to cluster every image "
             "separately: its parts are then not crowded out by the other images, but colours match only within it. "
             "*Remove each position's mean token* subtracts what the tokens of one place share across the images of "
             "the same grid (location, not content) before clustering: try it on an MAE.",
    "attention": "Where the class token looks, per head and averaged, in any block; *rollout* multiplies the attention "
                 "of blocks 0..b (with the residual path) to follow information through the network. The mask keeps the "
                 "patches that hold the chosen share of the attention mass (DINO's figure). Register tokens are left out. "
                 "Below, where each block's heads look: how far, against attention spread evenly (1), and how "
                 "query-specific (NMI 0: every patch attends to the same places). MIM models keep local heads to the "
                 "last block; DINO and supervised ones turn global.",
    "bagssl": "BagSSL: is the image embedding the average of its parts? Top left: the image embedding against the mean of "
              "the patch tokens, block by block. Top right: crops of each size embedded on their own and averaged, "
              "against the full image (a crop of the whole image gives 1). Below: each patch token's cosine to the image "
              "embedding — which patches the embedding is made of.",
}
ClickedPatch = tuple[str, int, int, tuple[int, int]]  # (image name, row, col, the grid it was clicked on)


def _pictures(images: list[LoadedImage]) -> tuple[list, list[str]]:
    return [i.image for i in images], [i.name for i in images]


class InspectTab:
    """Callbacks take the tab's controls, then the model inputs (`SharedControls.model_inputs`)."""

    def __init__(self, app: PatchLensApp):
        self.app = app
        self.runners: dict[str, Runner] = {}  # by view, for the events of other tabs and the app
        self.layer: gr.Dropdown | None = None  # "Tokens from": the Gallery tab indexes and maps that layer too
        self.facet: gr.Dropdown | None = None  # block output, or its attention's key / query / value
        self.resolution: gr.Radio | None = None  # how every map of the tab is drawn (`app.views.resolution`)
        self.shared: SharedControls | None = None
        self.after_model: list[Runner] = []  # the views a switch of model refreshes, in order

    # ------------------------------------------------------------------------------------- callbacks
    def model_status(self, model: str, weights_upload: str | None, weights_path: str, image_size: float | None,
                     loaded: list | None) -> tuple:
        """The model's description, the layer, block and head choices it offers, and what is now loaded; when the
        switch fails, the model controls go back to the model still loaded (see `switch`)."""
        values = [model, weights_upload, weights_path, image_size]
        encoder, controls = switch(self.app.encoder, values, loaded, "model")
        if encoder is None:
            return (*controls, *[gr.update()] * 4, loaded)
        heads = ["mean", *map(str, range(encoder.num_heads))]
        return (*controls, views.model_status(encoder).markdown,
                gr.update(choices=views.layer_choices(encoder), value=views.FINAL_LAYER),
                gr.update(maximum=encoder.depth - 1, value=encoder.depth - 1),
                gr.update(choices=heads, value="mean"), values)

    def overview(self, images: list[LoadedImage], selected: str | None, resolution: str, grid: bool, model: str,
                 weights_upload: str | None, weights_path: str, image_size: float | None,
                 progress: gr.Progress = gr.Progress()) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult(notes="Add an image (or the examples) to start.")
        progress(0.2, desc="loading model")
        encoder = self.app.encoder(model, weights_upload, weights_path, image_size)
        progress(0.5, desc="forward pass")
        return views.overview(encoder, image.image, bool(grid), resolution).for_image(image.name)

    def click_patch(self, images: list[LoadedImage], selected: str | None, shown: np.ndarray | None, model: str,
                    weights_upload: str | None, weights_path: str, image_size: float | None,
                    evt: gr.SelectData) -> ClickedPatch | None:
        image = find_image(images, selected)
        if image is None or evt is None or evt.index is None:
            return None
        encoder = self.app.encoder(model, weights_upload, weights_path, image_size)
        grid = views.patch_grid(encoder, image.image)
        row, col = views.clicked_patch(encoder, image.image, clicked(shown, evt))
        return image.name, row, col, grid

    def similarity(self, images: list[LoadedImage], click: ClickedPatch | None, layer: str, facet: str,
                   resolution: str, grid: bool, *model_args: object) -> ViewResult:
        image = find_image(images, click[0]) if images and click else None
        encoder = self.app.encoder(*model_args) if image is not None else None
        if image is None or len(click) != 4 or views.patch_grid(encoder, image.image) != tuple(click[3]):
            return ViewResult(notes="Click a patch on the image above.")  # none yet, or one of another grid
        pictures, names = _pictures(images)
        return views.similarity_view(encoder, pictures, names, names.index(click[0]), click[1], click[2],
                                     views.parse_layer(layer), bool(grid), resolution, facet)

    def pca(self, images: list[LoadedImage], layer: str, facet: str, joint: bool, use_foreground: bool,
            threshold: float, invert: bool, resolution: str, grid: bool, *model_args: object) -> ViewResult:
        if not images:
            return ViewResult()
        pictures, names = _pictures(images)
        return views.pca_view(self.app.encoder(*model_args), pictures, names, views.parse_layer(layer), joint,
                              use_foreground, threshold, invert, bool(grid), resolution, facet)

    def parts(self, images: list[LoadedImage], layer: str, facet: str, k: float, seed: float | None,
              use_foreground: bool, threshold: float, separate: bool, remove_position: bool, resolution: str,
              grid: bool, *model_args: object) -> ViewResult:
        if not images:
            return ViewResult()
        pictures, names = _pictures(images)
        return views.parts_view(self.app.encoder(*model_args), pictures, names, views.parse_layer(layer), int(k),
                                int(seed or 0), use_foreground, threshold, separate=bool(separate),
                                remove_position=bool(remove_position), grid=bool(grid), resolution=resolution,
                                facet=facet)

    def attention(self, images: list[LoadedImage], selected: str | None, block: float, head: str | None,
                  rollout: bool, keep_mass: float, resolution: str, grid: bool, *model_args: object) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            return ViewResult()
        head_index = None if head in (None, "mean") else int(head)
        return views.attention_view(self.app.encoder(*model_args), image.image, int(block), head_index, rollout,
                                    float(keep_mass), bool(grid), resolution).for_image(image.name)

    def bagssl(self, images: list[LoadedImage], selected: str | None, crop_text: str, grid: bool, model: str,
               weights_upload: str | None, weights_path: str, image_size: float | None, request: gr.Request,
               progress: gr.Progress = gr.Progress()) -> ViewResult:
        image = find_image(images, selected)
        if image is None:
            raise BadRequest("Add an image first.")
        sizes = views.parse_crop_sizes(crop_text)
        encoder = self.app.encoder(model, weights_upload, weights_path, image_size)
        result = views.bagssl_view(encoder, image.image, sizes, progress_callback(progress, "embedding crops"),
                                   bool(grid), limits=self.app.limits)
        return result.for_image(image.name)

    # ------------------------------------------------------------------------------------- scripted API
    def api_patch_features(self, image_base64: str, model: str = "", layer: int = -1) -> dict:
        """Patch features of one image (base64-encoded file bytes) for scripts: grid, tokens summary, PCA map
        (the HTTP route ``/patch_features``).

        The answer carries a hash of the bytes received, so a client can check it answers its own request.
        """
        try:
            data = base64.b64decode(image_base64, validate=True)
        except ValueError:
            raise gr.Error("image_base64 is not valid base64", print_exception=False) from None
        image = load_image_bytes(data, self.app.config)
        encoder = self.app.encoder(model or self.app.config.default_model)
        chosen = None if layer == -1 else int(layer)
        [features] = views.extract(encoder, [image], chosen)
        tokens = features.tokens(chosen)
        result = views.overview(encoder, image)
        return {
            "bytes_blake2b": hashlib.blake2b(data, digest_size=16).hexdigest(),
            "model": encoder.name, "model_key": encoder.key, "trained": encoder.trained,
            "grid_hw": list(features.grid_hw), "patch_size": features.patch_size,
            "mean_token": tokens.reshape(-1, tokens.shape[-1]).mean(0).tolist(),
            "pca_png_base64": base64.b64encode(draw.to_png_bytes(result.pictures["pca"])).decode(),
        }

    # ------------------------------------------------------------------------------------- layout and events
    def build(self, shared: SharedControls) -> InspectTab:
        self.shared = shared
        app, images, selected, model_inputs = self.app, shared.images, shared.selected, shared.model_inputs
        with gr.Tab("Inspect", id="inspect"):
            gr.Markdown(HELP["inspect"])
            with gr.Row():
                self.layer = layer = gr.Dropdown([views.FINAL_LAYER], value=views.FINAL_LAYER, label="Tokens from",
                                                 elem_id="layer")
                self.facet = facet = gr.Dropdown(list(views.FACETS), value=views.BLOCK_OUTPUT, elem_id="facet",
                                                 label="Facet (the per-patch maps: similarity, PCA, parts)")
                self.resolution = resolution = gr.Radio(list(RESOLUTIONS), value=PATCH_GRID, label="Resolution",
                                                        elem_id="resolution", scale=2)
            with gr.Row():
                shown = gr.Image(label="Image (click a patch)", interactive=False, format="png", elem_id="inspect-image")
                pca = gr.Image(label="PCA of patch tokens (RGB)", interactive=False, format="png", elem_id="inspect-pca")
                attention = gr.Image(label="Class-token attention (last layer)", interactive=False, format="png",
                                     elem_id="inspect-attention")
            overview_info = gr.Markdown(elem_id="inspect-info")
            overview_readout = readout_plot("inspect-readout", "the class-token attention")
            overview_file = gr.File(label="Numbers behind these maps (.npz)", elem_id="overview-export")
            click = gr.State(None)  # (image name, row, col) of the last clicked patch (states live inside a tab)
            with gr.Tabs():
                self.runners = runners = {"similarity": self._similarity_tab(click), "pca": self._pca_tab(),
                                          "parts": self._parts_tab()}
                runners["attention"], block, head = self._attention_tab()
                runners["bagssl"] = self._bagssl_tab()
        runners["status"] = app.action(self.model_status, [*model_inputs, shared.loaded],
                                       [*model_inputs, shared.model_info, layer, block, head, shared.loaded])
        runners["overview"] = app.view(self.overview, [images, selected, resolution, *shared.grid_and_model], {
            "image": shown, "pca": pca, "attention": attention, "attention_readout": overview_readout,
            "markdown": overview_info, "numbers": overview_file})
        everything = [runners[name] for name in ("overview", "pca", "parts", "attention", "similarity")]
        self.after_model = everything  # refreshed after a switch of model (wired by the app)
        clicking = app.action(self.click_patch, [images, selected, shown, *model_inputs], [click])
        chain(clicking.on(shown.select), runners["similarity"])
        chain(runners["pca"].on(layer.change), runners["parts"], runners["similarity"])
        chain(runners["overview"].on(selected.change), runners["attention"])
        chain(runners["overview"].on(shared.grid.change), *everything[1:])
        chain(runners["overview"].on(resolution.change), *everything[1:])
        chain(runners["pca"].on(facet.change), runners["parts"], runners["similarity"])
        return self

    def _similarity_tab(self, click: gr.State) -> Runner:
        with gr.Tab("Similarity", id="similarity"):
            gr.Markdown(HELP["similarity"])
            maps = gr.Gallery(label="Similarity to the clicked patch", columns=4, height=380, format="png",
                              elem_id="similarity-gallery")
            info = gr.Markdown(elem_id="similarity-info")
            readout = readout_plot("similarity-readout")
            numbers = gr.File(label="Similarity maps (.npz)", elem_id="similarity-export")
        return self.app.view(self.similarity, [self.shared.images, click, *self.tokens, *self.drawing],
                             {"maps": maps, "readout": readout, "markdown": info, "numbers": numbers})

    def _pca_tab(self) -> Runner:
        with gr.Tab("PCA", id="pca"):
            gr.Markdown(HELP["pca"])
            with gr.Row():
                joint = gr.Checkbox(True, label="Fit jointly on all images")
                foreground = gr.Checkbox(False, label="Foreground only")
                invert = gr.Checkbox(False, label="Invert foreground")
                threshold = gr.Slider(0.05, 0.95, 0.5, step=0.05, label="Foreground threshold")
            maps = gr.Gallery(label="PCA maps", columns=4, height=380, format="png", elem_id="pca-gallery")
            info = gr.Markdown(elem_id="pca-info")
            numbers = gr.File(label="PCA maps (.npz)")
        controls = [joint, foreground, threshold, invert]
        return self._on_change(controls, self.app.view(
            self.pca, [self.shared.images, *self.tokens, *controls, *self.drawing],
            {"maps": maps, "markdown": info, "numbers": numbers}))

    def _parts_tab(self) -> Runner:
        with gr.Tab("Parts", id="parts"):
            gr.Markdown(HELP["parts"])
            with gr.Row():
                k = gr.Slider(2, 16, 5, step=1, label="Number of parts (k)", elem_id="parts-k")
                seed = gr.Number(0, precision=0, label="Seed")
                foreground = gr.Checkbox(False, label="Foreground only")
                separate = gr.Checkbox(False, label="Each image on its own", elem_id="parts-separate")
                position = gr.Checkbox(False, label="Remove each position's mean token", elem_id="parts-position")
                threshold = gr.Slider(0.05, 0.95, 0.5, step=0.05, label="Foreground threshold")
            maps = gr.Gallery(label="Part maps", columns=4, height=380, format="png", elem_id="parts-gallery")
            counts = gr.Dataframe(label="Patches per part", interactive=False)
            info = gr.Markdown(elem_id="parts-info")
            numbers = gr.File(label="Part labels and centroids (.npz)")
        controls = [k, seed, foreground, threshold, separate, position]
        return self._on_change(controls, self.app.view(
            self.parts, [self.shared.images, *self.tokens, *controls, *self.drawing],
            {"maps": maps, "counts": counts, "markdown": info, "numbers": numbers}))

    def _attention_tab(self) -> tuple[Runner, gr.Slider, gr.Dropdown]:
        with gr.Tab("Attention", id="attention"):
            gr.Markdown(HELP["attention"])
            with gr.Row():
                block = gr.Slider(0, 11, 11, step=1, label="Block", elem_id="attention-block")
                head = gr.Dropdown(["mean"], value="mean", label="Head")
                rollout = gr.Checkbox(False, label="Rollout (blocks 0..b)")
                mass = gr.Slider(0.1, 1.0, 0.6, step=0.05, label="Mask keeps this share of attention")
            with gr.Row():
                picture = gr.Image(label="Attention", interactive=False, format="png", elem_id="attention-map")
                mask = gr.Image(label="Mass mask", interactive=False, format="png")
                norm = gr.Image(label="Token norm after this block", interactive=False, format="png",
                                elem_id="token-norm")
            heads = gr.Gallery(label="Every head of this block", columns=6, height=260, format="png",
                               elem_id="attention-heads")
            info = gr.Markdown()
            reach = gr.Plot(label="Where the heads look, block by block", elem_id="attention-range")
            readout = readout_plot("attention-readout")
            numbers = gr.File(label="Attention maps, token norms and attention range (.npz)")
        controls = [block, head, rollout, mass]
        return self._on_change(controls, self.app.view(
            self.attention, [self.shared.images, self.shared.selected, *controls, *self.drawing],
            {"map": picture, "mask": mask, "token_norm": norm, "heads": heads, "readout": readout, "markdown": info,
             "range": reach, "numbers": numbers})), block, head

    def _bagssl_tab(self) -> Runner:
        with gr.Tab("BagSSL", id="bagssl"):
            gr.Markdown(HELP["bagssl"])
            with gr.Row():
                sizes = gr.Textbox("16,32,48,64", label="Crop sizes (px of the model's input)", elem_id="bagssl-sizes")
                run = gr.Button("Run BagSSL", variant="primary", elem_id="bagssl-run")
                stop = gr.Button("Stop", variant="stop", elem_id="bagssl-stop")
            with gr.Row():
                layers = gr.Plot(label="Per block", elem_id="bagssl-layers")
                crops = gr.Plot(label="Bag of crops", elem_id="bagssl-crops")
            picture = gr.Image(label="Patch token · image embedding (cosine)", interactive=False, format="png",
                               elem_id="bagssl-map")
            info = gr.Markdown(elem_id="bagssl-info")
            readout = readout_plot("bagssl-readout")
            numbers = gr.File(label="BagSSL numbers (.npz)")
        inputs = [self.shared.images, self.shared.selected, sizes, *self.shared.grid_and_model]
        runner = self.app.job("BagSSL", self.bagssl, inputs, {
            "layers": layers, "crops": crops, "patch_to_embedding": picture, "readout": readout, "markdown": info,
            "numbers": numbers})
        self.app.stoppable(runner, run.click, stop)
        return runner

    @property
    def tokens(self) -> list[Component]:
        """Which tokens the per-patch maps use: the layer, then the facet."""
        return [self.layer, self.facet]

    @property
    def drawing(self) -> list[Component]:
        """The last inputs of the views that draw maps: the resolution, the patch-grid toggle, the model inputs."""
        return [self.resolution, *self.shared.grid_and_model]

    @staticmethod
    def _on_change(controls: list[Component], runner: Runner) -> Runner:
        """``runner``, run whenever one of ``controls`` changes."""
        for control in controls:
            runner.on(control.change)
        return runner
