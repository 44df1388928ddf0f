"""The Gallery tab: a patch index of the loaded images or a server folder, nearest patches to a click, a map of
patches with click-to-pick, and CKA between two encoders."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from app.atlas import AtlasServers
from app.ui.app import PatchLensApp
from app.ui.jobs import session_of
from app.ui.state import LoadedImage, write_images
from app.ui.wiring import SharedControls, StagedProgress, clicked, find_image, model_choices, progress_callback
from app.views import gallery as views
from app.views.atlas import atlas_of_index, atlas_result, engine_for
from app.views.inspect import parse_layer
from app.views.result import ViewResult
from ssl_core.errors import BadRequest
from ssl_core.search.patch_index import PatchIndex

HELP = {
    "gallery": """**Search a gallery for the nearest patches.** Index the loaded images (or a folder on the server)
with the model chosen at the top: every patch of every image is embedded and stored with FAISS. Then click a patch
of the query image (the image chosen at the top) to see the patches of other images that resemble it most — the
same part of another object, if the encoder learned parts.""",
    "map": """**A map of patches.** UMAP (or PCA, faster) of the patch embeddings, coloured by source image, by k-means
part, by position in the grid, or by class-token attention. Patches of the same part of different objects land
together when the encoder learned parts; co-occurring patches of one image land together when it learned images.
Click a point to see its patch. A map of an index of more than 100,000 patches opens in Embedding Atlas instead
(every patch, hover for its image, patch and thumbnail).""",
    "cka": """**CKA between two encoders, block by block** (Kornblith et al.; the SimCLR-vs-supervised study), over the
loaded images. The same encoder against itself gives ones on the diagonal.""",
}


def _need_index(index: PatchIndex | None, then: str) -> PatchIndex:
    if index is None:
        raise BadRequest(f"Build or load an index first{then}.")
    return index


def _folder(path: str | None, what: str) -> str:
    if not path or not path.strip():
        raise BadRequest(what)
    return path.strip()


class GalleryTab:
    """Callbacks that need the index take this session's `PatchIndex` (or None) from a `gr.State`."""

    def __init__(self, app: PatchLensApp):
        self.app = app
        self.atlases = AtlasServers()  # maps of large indexes, served in Embedding Atlas (app.atlas)

    def build_index(self, images: list[LoadedImage], source: str, folder: str, kind: str, current: PatchIndex | None,
                    layer: str, model: str, weights_upload: str | None, weights_path: str, image_size: float | None,
                    request: gr.Request, progress: gr.Progress = gr.Progress()) -> ViewResult:
        """An index of the loaded images (built afresh: building twice gives the same index), or of a server folder
        (added to the current index when that has the same model and layer)."""
        encoder, access = self.app.encoder(model, weights_upload, weights_path, image_size), self.app.access
        fresh = source != "server folder"
        if not fresh:
            path = _folder(folder, "Name a folder on the server (it must lie under a --allow-dir folder).")
            sources = [str(access.readable(path, "the gallery folder"))]
        elif not images:
            raise BadRequest("Add images first, or index a server folder.")
        else:  # files for the index, in this session's own folder
            self.app.limits.check(f"Indexing {len(images):,} images", len(images), "Index fewer images at once.")
            sources = write_images(images, Path(tempfile.mkdtemp(dir=access.session_folder())))
        result = views.build_index(encoder, sources, parse_layer(layer), kind, current=None if fresh else current,
                                   progress=progress_callback(progress, "embedding"), readable=access.walk_problem,
                                   limits=self.app.limits)
        if fresh and current is not None:
            result.notes += (f"\n\nIt replaces the previous index ({len(current.images)} images): Build indexes the "
                             "loaded images afresh.")
        return result

    def load_index(self, path: str) -> ViewResult:
        path = _folder(path, "Name the index folder to load (under --allow-dir).")
        folder = self.app.access.readable(path, "the index folder")
        self.app.access.check_links(folder, "the index folder")
        result = views.load_index(str(folder))
        self.app.access.check_listed([image.path for image in result.state.images], "this index")
        return result

    def save_index(self, index: PatchIndex | None, path: str) -> ViewResult:
        index = _need_index(index, "")
        path = _folder(path, "Name a folder to save the index to (under --allow-dir).")
        return views.save_index(index, self.app.access.writable(path, "the index folder"))

    def show_query(self, images: list[LoadedImage], selected: str | None, index: PatchIndex | None,
                   *model_args: object) -> ViewResult:
        """The query picture; a note (not an error) when the index was built with another model or layer."""
        image = find_image(images, selected)
        if index is None or image is None:
            return ViewResult()
        encoder = self.app.encoder(*model_args)
        if not index.matches(encoder):
            return views.mismatch_note(index, encoder)
        return views.query_picture(index, encoder, image.image)

    def search(self, images: list[LoadedImage], selected: str | None, index: PatchIndex | None, k: float,
               query: np.ndarray | None, model: str, weights_upload: str | None, weights_path: str,
               image_size: float | None, evt: gr.SelectData) -> ViewResult:
        index = _need_index(index, ", then click a patch of the query image")
        image = find_image(images, selected)
        if image is None:
            raise BadRequest("Add an image to query with.")
        encoder = self.app.encoder(model, weights_upload, weights_path, image_size)
        if not index.matches(encoder):
            return views.mismatch_note(index, encoder)
        return views.search_click(index, encoder, image.image, clicked(query, evt), int(k)).for_image(image.name)

    def draw_map(self, images: list[LoadedImage], source: str, method: str, colour: str, index: PatchIndex | None,
                 layer: str, model: str, weights_upload: str | None, weights_path: str, image_size: float | None,
                 request: gr.Request, progress: gr.Progress = gr.Progress()) -> ViewResult:
        callback = StagedProgress(progress, "mapping patches")
        if source == "the index":
            index = _need_index(index, ", or map the loaded images")
            if engine_for("auto", len(index)) == "atlas":
                atlas = atlas_of_index(index, method, progress=callback, stage=callback.stage)
                callback.stage("starting Embedding Atlas")
                return atlas_result(atlas, self.atlases.serve(session_of(request), atlas.table).url)
            return views.map_of_index(index, method, colour, progress=callback, stage=callback.stage)
        if not images:
            raise BadRequest("Add images first.")
        self.app.limits.check(f"A map of {len(images):,} images", len(images), "Map fewer images, or index them "
                              "and map a sample of the index.")
        encoder = self.app.encoder(model, weights_upload, weights_path, image_size)
        callback.stage("embedding the patches")
        return views.map_of_images(encoder, [i.image for i in images], [i.name for i in images],
                                   parse_layer(layer), method, colour, progress=callback, stage=callback.stage)

    def pick_map_point(self, view: views.MapView | None, picture: np.ndarray | None, evt: gr.SelectData) -> ViewResult:
        if view is None:
            raise BadRequest("Draw a map first.")
        click = clicked(picture, evt)
        return views.pick_point(view, click.x, click.y)

    @staticmethod
    def drop_map(view: views.MapView | None) -> tuple:
        """A map of the loaded images is dropped when the images or the model change (its points are no longer
        theirs); a map of the index stays."""
        if view is None or view.index is not None:
            return (view, *[gr.update()] * 6)
        return None, None, None, None, None, "", "The loaded images or the model changed: draw the map again."

    def cka(self, images: list[LoadedImage], model_a: str, model_b: str, pooling: str, debiased: bool,
            request: gr.Request, progress: gr.Progress = gr.Progress()) -> ViewResult:
        if not images:
            raise BadRequest("Add images first: CKA compares two encoders over the loaded images.")
        self.app.limits.check(f"CKA over {len(images):,} images", 2 * len(images), "Load fewer images.")
        return views.cka_view(self.app.pool.get(model_a), self.app.pool.get(model_b), [i.image for i in images],
                              pooling, debiased=debiased, progress=progress_callback(progress, "embedding"))

    def build(self, shared: SharedControls, layer: gr.Dropdown) -> GalleryTab:
        """The tab; ``layer`` (Inspect's "Tokens from") is the layer indexed and mapped."""
        with gr.Tab("Gallery", id="gallery"):
            index = gr.State(None)  # this session's PatchIndex
            self._index_and_search(shared, layer, index)
            self._map(shared, layer, index)
            self._cka(shared)
        return self

    def _index_and_search(self, shared: SharedControls, layer: gr.Dropdown, index: gr.State) -> None:
        gr.Markdown(HELP["gallery"])
        with gr.Row():
            source = gr.Radio(["loaded images", "server folder"], value="loaded images", label="Index these images",
                              elem_id="gallery-source")
            folder = gr.Textbox(label="Server folder (under --allow-dir)", elem_id="gallery-folder")
            kind = gr.Dropdown(["auto", "exact", "ivf", "hnsw"], value="auto", label="Index kind")
            build = gr.Button("Build index", variant="primary", elem_id="gallery-build")
            stop = gr.Button("Stop", variant="stop", elem_id="gallery-stop")
        with gr.Row():
            index_path = gr.Textbox(label="Index folder to load or save (under --allow-dir)")
            index_load = gr.Button("Load index")
            index_save = gr.Button("Save index")
        index_info = gr.Markdown("No index yet.", elem_id="index-info")
        with gr.Row():
            query = gr.Image(label="Query (click a patch)", interactive=False, format="png", elem_id="gallery-query",
                             scale=1)
            with gr.Column(scale=2):
                k = gr.Slider(1, 30, 8, step=1, label="Results (k)")
                hits = gr.Gallery(label="Nearest patches", columns=4, height=330, format="png", elem_id="gallery-hits")
                hit_info = gr.Markdown(elem_id="gallery-hit-info")
                hit_numbers = gr.File(label="Nearest patches (.npz)", elem_id="gallery-hits-export")
            hit_source = gr.Image(label="Best match in its image", interactive=False, format="png", scale=1)

        app, images, selected, model_inputs = self.app, shared.images, shared.selected, shared.model_inputs
        indexed = {"state": index, "markdown": index_info}
        show_query = app.view(self.show_query, [images, selected, index, *model_inputs], {
            "query": query, "hits": hits, "source": hit_source, "markdown": hit_info})
        building = app.job("index build", self.build_index, [images, source, folder, kind, index, layer, *model_inputs],
                           indexed)
        show_query.after(app.stoppable(building, build.click, stop))
        show_query.after(app.view(self.load_index, [index_path], indexed).on(index_load.click))
        app.view(self.save_index, [index, index_path], {"markdown": index_info}).on(index_save.click)
        show_query.on(selected.change)
        shared.on_model.append(show_query)
        app.view(self.search, [images, selected, index, k, query, *model_inputs], {
            "query": query, "hits": hits, "source": hit_source, "markdown": hit_info, "numbers": hit_numbers}
        ).on(query.select)

    def _map(self, shared: SharedControls, layer: gr.Dropdown, index: gr.State) -> None:
        gr.Markdown(HELP["map"])
        with gr.Row():
            source = gr.Radio(["loaded images", "the index"], value="loaded images", label="Map")
            method = gr.Radio(["umap", "pca"], value="umap", label="Method", elem_id="map-method")
            colour = gr.Dropdown(["image", "part", "position", "attention"], value="image", label="Colour by")
            run = gr.Button("Draw map", variant="primary", elem_id="map-run")
            stop = gr.Button("Stop", variant="stop", elem_id="map-stop")
        with gr.Row():
            picture = gr.Image(label="Map (click a point)", interactive=False, format="png", elem_id="map-picture",
                               scale=2)
            with gr.Column(scale=1):
                crop = gr.Image(label="Picked patch", interactive=False, format="png", elem_id="map-crop")
                crop_source = gr.Image(label="In its image", interactive=False, format="png")
                caption = gr.Markdown(elem_id="map-caption")
        info = gr.Markdown(elem_id="map-info")
        figure = gr.Plot(label="Interactive map (hover)")
        numbers = gr.File(label="The map: coordinates, image ids and names, patch rows and columns, colours (.npz)",
                          elem_id="map-export")
        drawn = gr.State(None)  # the map last drawn, for picking points

        drawing = self.app.job("map", self.draw_map, [shared.images, source, method, colour, index, layer,
                                                      *shared.model_inputs],
                               {"state": drawn, "map": picture, "scatter": figure, "markdown": info, "numbers": numbers})
        self.app.stoppable(drawing, run.click, stop)
        dropping = self.app.action(self.drop_map, [drawn], [drawn, picture, figure, crop, crop_source, caption, info])
        shared.on_model.append(dropping)
        shared.on_images.append(dropping)
        self.app.view(self.pick_map_point, [drawn, picture], {
            "map": picture, "crop": crop, "source": crop_source, "markdown": caption}).on(picture.select)

    def _cka(self, shared: SharedControls) -> None:
        gr.Markdown(HELP["cka"])
        with gr.Row():
            model_a = gr.Dropdown(model_choices(), value=self.app.config.default_model, label="Encoder A",
                                  allow_custom_value=True)
            model_b = gr.Dropdown(model_choices(), value=self.app.config.default_model, label="Encoder B",
                                  allow_custom_value=True)
            pooling = gr.Radio(["grid", "mean"], value="grid", label="Per image")
            debiased = gr.Checkbox(False, label="Debiased CKA")
            run = gr.Button("CKA over the loaded images", variant="primary", elem_id="cka-run")
            stop = gr.Button("Stop", variant="stop", elem_id="cka-stop")
        plot = gr.Plot(label="Layer-by-layer CKA", elem_id="cka-plot")
        info = gr.Markdown(elem_id="cka-info")
        numbers = gr.File(label="CKA matrix and block labels (.npz)", elem_id="cka-export")
        comparing = self.app.job("CKA", self.cka, [shared.images, model_a, model_b, pooling, debiased], {
            "cka": plot, "markdown": info, "numbers": numbers})
        self.app.stoppable(comparing, run.click, stop)
