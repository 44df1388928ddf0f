"""The PatchLens Gradio app: layout and event wiring only. Computation lives in `app.views.inspect*` / `ssl_core`."""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import gradio as gr
import numpy as np

from app.ui.state import AppConfig, LoadedImage, ModelPool, example_paths, load_image_bytes, load_uploads, write_images
from app.views import compare as handlers_compare
from app.views import gallery as handlers_gallery
from app.views import inspect as handlers
from app.views import lab as handlers_lab
from app.views import reconstruct as handlers_mim
from ssl_core.errors import BadRequest, PatchLensError
from ssl_core.lab import LabConfig
from ssl_core.models.registry import DEFAULT_MAE, MAE_SOURCES, all_specs, bundled_names, default_model_name
from ssl_core.render import draw

log = logging.getLogger("patchlens")
LAB_EVERYTHING = "the whole Lab (every measure, CKA between the first two)"
LAB_CKA = "CKA between two encoders, block by block"

INTRO = """# PatchLens
Look inside vision transformers one patch at a time. Add images (or the examples), choose a model, and explore.
"""
HELP = {
    "inspect": """**What am I looking at?** Left: the image as the model sees it (resized so both sides are whole
patches) — **click a patch** to see which patches of every loaded image resemble it (the *Similarity* tab below).
Middle: each patch token projected on the first three principal components, shown as R, G, B: patches with similar
colours have similar embeddings, so the parts of an object share a colour. Right: how much the class token attends
to each patch in the last layer (heads averaged) — often the object the image embedding is about.""",
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
                 "patches that hold the chosen share of the attention mass (DINO's figure). Register tokens are left out.",
    "reconstruct": """**Masked image modeling at work.** Hide patches (at random, in blocks as BEiT does, on a grid,
or click patches yourself) and watch an MAE fill them in from what is left — part-to-part reasoning: the model
infers a hidden part from the visible ones. Left to right: what the MAE sees, its prediction for every patch, its
prediction pasted into the hidden patches only, and the error of each hidden patch.""",
    "representation": """**Representation space (CAE's idea), for the model chosen at the top.** Encode the visible
patches alone and the whole image: how far does each visible patch's representation move when the grey patches are
removed? Patches whose tokens lean on the removed context turn dark.""",
    "gallery": """**Search a gallery for the nearest patches.** Index the loaded images (or a folder on the server)
with the model chosen at the top: every patch of every image is embedded and stored with FAISS. Then click a patch
of the query image (the image chosen at the top) to see the patches of other images that resemble it most — the
same part of another object, if the encoder learned parts.""",
    "map": """**A map of patches.** UMAP (or PCA, faster) of the patch embeddings, coloured by source image, by k-means
part, by position in the grid, or by class-token attention. Patches of the same part of different objects land
together when the encoder learned parts; co-occurring patches of one image land together when it learned images.
Click a point to see its patch.""",
    "cka": """**CKA between two encoders, block by block** (Kornblith et al.; the SimCLR-vs-supervised study), over the
loaded images. The same encoder against itself gives ones on the diagonal.""",
    "lab": """**The papers' claims, measured.** On held-out parts-world scenes (generated, with ground-truth objects
and parts; never seen in training): object-level vs part-level linear probes (part-aware SSL: contrastive learning
is part-to-whole, MIM part-to-part), k-NN from the class token, the mean of patch tokens and a bag of crops (BagSSL),
a probe that detects tokens given a wrong position embedding (DILEMMA), k-means part maps against the ground truth
(adjusted Rand index), and CKA (the SimCLR-vs-supervised study). Each result shows its sample sizes and seed. The
bundled models had a small CPU budget: see `docs/lab.md` for the full table and what holds.""",
    "compare": """**Compare encoders side by side.** The same image through two to four encoders, view by view:
each row is one view, each column one encoder, all at the same size even when patch sizes differ. Click the image
on the left and every encoder's similarity map follows the same spot. Download the whole comparison as a PNG or an
HTML report.""",
    "bagssl": "BagSSL: is the image embedding the average of its parts? Top left: the image embedding against the mean of "
              "the patch tokens, block by block. Top right: crops of each size embedded on their own and averaged, "
              "against the full image (a crop of the whole image gives 1). Below: each patch token's cosine to the image "
              "embedding — which patches the embedding is made of.",
}


def ui_errors(fn: Callable) -> Callable:
    """A `PatchLensError` is shown as its message; anything else is a bug: a short message, traceback logged."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except PatchLensError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # noqa: BLE001
            log.error("unexpected error in %s:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The app is still running; "
                           f"try again or another input.", print_exception=False) from None
    return wrapper


def model_choices() -> list[tuple[str, str]]:
    specs = [s for s in all_specs() if s.source != "bundled" or s.trained]
    return [(f"{s.display_name} — {s.family}", s.name) for s in specs]


def progress_callback(progress: gr.Progress, desc: str) -> Callable[[int, int], None]:
    return lambda done, total: progress((done, total), desc=desc)


class PatchLensApp:
    """Builds the Blocks and holds what every view shares: the config and the model pool."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.pool = ModelPool(config.max_models)
        self.export_dir = Path(tempfile.mkdtemp(prefix="patchlens-exports-"))

    # ------------------------------------------------------------------------------------- shared actions
    def encoder(self, model: str, weights_upload: str | None, weights_path: str, image_size: float | None):
        weights = None
        if weights_upload:
            self.config.check_upload_size(weights_upload)
            weights = weights_upload
        elif weights_path and weights_path.strip():
            weights = str(self.config.check_readable(weights_path.strip(), "weights file"))
        size = int(image_size) if image_size else None
        if size is not None and not 16 <= size <= 1024:
            raise BadRequest(f"The short side must be between 16 and 1024 pixels (or 0 for the model's own), not {size}.")
        return self.pool.get(model or self.config.default_model, weights, size)

    def export(self, arrays: dict[str, np.ndarray], stem: str) -> str | None:
        """Write the numbers behind a view to an .npz file the browser can download."""
        if not arrays:
            return None
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))
        path = folder / f"{stem}.npz"
        np.savez_compressed(path, **arrays)
        return str(path)

    def add_images(self, files: list[str] | None, images: list[LoadedImage]):
        paths = [f if isinstance(f, str) else f.name for f in (files or [])]
        loaded, problems = load_uploads(paths, self.config)
        return self._images_changed(images + loaded, problems)

    def add_examples(self, images: list[LoadedImage]):
        loaded, problems = load_uploads([str(p) for p in example_paths()], self.config)
        known = {i.name for i in images}
        return self._images_changed(images + [i for i in loaded if i.name not in known], problems)

    def clear_images(self, _images: list[LoadedImage]):
        return self._images_changed([], [])

    def _images_changed(self, images: list[LoadedImage], problems: list[str]):
        status = f"{len(images)} image(s) loaded."
        if problems:
            status += "\n\n**Skipped:**\n" + "\n".join(f"- {p}" for p in problems)
        names = [i.name for i in images]
        gallery = [(i.image, i.name) for i in images]
        return images, gallery, status, gr.update(choices=names, value=names[-1] if names else None), None

    def model_status(self, model: str, weights_upload, weights_path, image_size):
        encoder = self.encoder(model, weights_upload, weights_path, image_size)
        heads = ["mean", *map(str, range(encoder.num_heads))]
        return (encoder.describe() + handlers.untrained_note(encoder),
                gr.update(choices=handlers.layer_choices(encoder), value=handlers.FINAL_LAYER),
                gr.update(maximum=encoder.depth - 1, value=encoder.depth - 1),
                gr.update(choices=heads, value="mean"))

    # ------------------------------------------------------------------------------------- Inspect views
    def _images_or_none(self, images: list[LoadedImage]):
        return [i.image for i in images], [i.name for i in images]

    def run_overview(self, images, selected, *model_args, progress=gr.Progress()):
        image = _pick(images, selected)
        if image is None:
            return None, None, None, "Add an image (or the examples) to start.", None
        progress(0.2, desc="loading model")
        encoder = self.encoder(*model_args)
        progress(0.5, desc="forward pass")
        result = handlers.overview(encoder, image.image)
        p = result.pictures
        return p["image"], p["pca"], p["attention"], result.info, self.export(result.arrays, f"overview_{image.name}")

    def run_similarity(self, images, selected, click, layer, *model_args):
        if not images or not click or _pick(images, click[0]) is None:
            return [], "Click a patch on the image above.", None
        pictures, names = self._images_or_none(images)
        encoder = self.encoder(*model_args)
        source = names.index(click[0])
        result = handlers.similarity_view(encoder, pictures, names, source, click[1], click[2], handlers.parse_layer(layer))
        return result.gallery, result.info, self.export(result.arrays, "similarity")

    def click_patch(self, images, selected, layer, model, weights_upload, weights_path, image_size,
                    evt: gr.SelectData):
        image = _pick(images, selected)
        if image is None or evt is None or evt.index is None:
            return None
        encoder = self.encoder(model, weights_upload, weights_path, image_size)
        [features] = handlers.extract(encoder, [image.image], handlers.parse_layer(layer))
        row, col = handlers.patch_at(features, *evt.index[:2])
        return (image.name, row, col)

    def run_pca(self, images, layer, joint, use_fg, threshold, invert, *model_args):
        if not images:
            return [], "", None
        pictures, names = self._images_or_none(images)
        result = handlers.pca_view(self.encoder(*model_args), pictures, names, handlers.parse_layer(layer),
                                   joint, use_fg, threshold, invert)
        return result.gallery, result.info, self.export(result.arrays, "pca")

    def run_parts(self, images, layer, k, seed, use_fg, threshold, separate, remove_position, *model_args):
        if not images:
            return [], None, "", None
        pictures, names = self._images_or_none(images)
        result = handlers.parts_view(self.encoder(*model_args), pictures, names, handlers.parse_layer(layer),
                                     int(k), int(seed or 0), use_fg, threshold, separate=bool(separate),
                                     remove_position=bool(remove_position))
        table = gr.update(value=result.table, headers=handlers.parts_table_headers(int(k)))
        return result.gallery, table, result.info, self.export(result.arrays, "parts")

    def run_attention(self, images, selected, block, head, rollout, keep_mass, *model_args):
        image = _pick(images, selected)
        if image is None:
            return None, None, [], "", None
        head_index = None if head in (None, "mean") else int(head)
        result = handlers.attention_view(self.encoder(*model_args), image.image, int(block), head_index, rollout,
                                         float(keep_mass))
        p = result.pictures
        return p["map"], p["mask"], result.gallery, result.info, self.export(result.arrays, f"attention_{image.name}")

    def run_bagssl(self, images, selected, crop_text, *model_args, progress=gr.Progress()):
        image = _pick(images, selected)
        if image is None:
            raise BadRequest("Add an image first.")
        try:
            sizes = [int(s) for s in str(crop_text).replace(" ", "").split(",") if s]
        except ValueError:
            raise BadRequest(f"Crop sizes must be whole numbers separated by commas, not {crop_text!r}.") from None
        encoder = self.encoder(*model_args)
        result = handlers.bagssl_view(encoder, image.image, sizes, progress=progress_callback(progress, "embedding crops"))
        return (result.figures["layers"], result.figures["crops"], result.pictures["patch_to_embedding"], result.info,
                self.export(result.arrays, f"bagssl_{image.name}"))

    # ------------------------------------------------------------------------------------- Reconstruct
    def run_reconstruct(self, images, selected, mae_name, mae_weights, kind, ratio, seed, hidden,
                        progress=gr.Progress()):
        image = _pick(images, selected)
        if image is None:
            return None, None, None, None, "Add an image (or the examples) to start."
        progress(0.3, desc="loading the MAE")
        mae = self.pool.get_mae(mae_name, self._mae_weights(mae_weights))
        view = handlers_mim.reconstruct_view(mae, image.image, kind, ratio, int(seed or 0), hidden or frozenset())
        return view.masked, view.reconstruction, view.pasted, view.error, view.info

    def _mae_weights(self, upload: str | None) -> str | None:
        if upload:
            self.config.check_upload_size(upload)
        return upload or None

    def toggle_mask_patch(self, images, selected, mae_name, mae_weights, hidden, evt: gr.SelectData):
        """A click on the masked picture hides or shows that patch, in the custom mask."""
        if _pick(images, selected) is None or evt is None or evt.index is None:
            return hidden, gr.update()
        mae = self.pool.get_mae(mae_name, self._mae_weights(mae_weights))
        toggled = handlers_mim.toggle_patch(hidden, *evt.index[:2], handlers_mim.mae_display_grid(mae))
        return toggled, "custom"

    def run_cae(self, images, selected, kind, ratio, seed, hidden):
        image = _pick(images, selected)
        if image is None:
            return None, ""
        cae = self.pool.get_cae()
        if cae is None:
            return None, ("The bundled CAE model (`patchlens-cae`) is not installed, so its predictor cannot be shown; "
                          "train it with `patchlens train --method cae`.")
        view = handlers_mim.cae_alignment_view(cae, image.image, kind, ratio, int(seed or 0), hidden or frozenset())
        return view.drift, view.info

    def run_drift(self, images, selected, kind, ratio, seed, hidden, *model_args):
        image = _pick(images, selected)
        if image is None:
            return None, ""
        view = handlers_mim.context_drift_view(self.encoder(*model_args), image.image, kind, ratio, int(seed or 0),
                                               hidden or frozenset())
        return view.drift, view.info

    # ------------------------------------------------------------------------------------- Gallery
    def build_gallery_index(self, images, source, folder, kind, current, layer, *model_args, progress=gr.Progress()):
        encoder = self.encoder(*model_args)
        if source == "server folder":
            if not folder or not folder.strip():
                raise BadRequest("Name a folder on the server (it must lie under a --allow-dir folder).")
            sources = [str(self.config.check_readable(folder.strip(), "gallery folder"))]
        else:
            if not images:
                raise BadRequest("Add images first, or index a server folder.")
            sources = write_images(images, Path(tempfile.mkdtemp(dir=self.export_dir)))
        chosen = handlers.parse_layer(layer)
        if current is not None and current.matches(encoder, chosen):  # same model and layer: add incrementally
            report = current.add(sources, encoder, progress_callback(progress, "embedding"))
            return current, f"{report.summary()} · {current.describe()}"
        index, info = handlers_gallery.build_index(encoder, sources, chosen, kind,
                                                   progress=progress_callback(progress, "embedding"))
        return index, info

    def load_gallery_index(self, path):
        if not path or not path.strip():
            raise BadRequest("Name the index folder to load (under --allow-dir).")
        return handlers_gallery.load_index(str(self.config.check_readable(path.strip(), "index folder")))

    def save_gallery_index(self, index, path):
        if index is None:
            raise BadRequest("Build or load an index first.")
        if not path or not path.strip():
            raise BadRequest("Name a folder to save the index to (under --allow-dir).")
        target = self.config.check_writable(path.strip(), "index folder")
        index.save(target)
        return f"Saved to {target} · {index.describe()}"

    def show_query(self, images, selected, index, *model_args):
        image = _pick(images, selected)
        if index is None or image is None:
            return None
        return handlers_gallery.query_picture(index, self.encoder(*model_args), image.image)

    def search_gallery(self, images, selected, index, k, model, weights_upload, weights_path, image_size,
                       evt: gr.SelectData):
        image = _pick(images, selected)
        if index is None:
            raise BadRequest("Build or load an index first, then click a patch of the query image.")
        if image is None:
            raise BadRequest("Add an image to query with.")
        encoder = self.encoder(model, weights_upload, weights_path, image_size)
        view = handlers_gallery.search_click(index, encoder, image.image, *evt.index[:2], int(k))
        return view.query, view.gallery, view.source, view.info

    def draw_map(self, images, source, method, colour, index, layer, *model_args, progress=gr.Progress()):
        callback = progress_callback(progress, "mapping patches")
        if source == "the index":
            if index is None:
                raise BadRequest("Build or load an index first, or map the loaded images.")
            view = handlers_gallery.map_of_index(index, method, colour, progress=callback)
        else:
            if not images:
                raise BadRequest("Add images first.")
            pictures, names = self._images_or_none(images)
            view = handlers_gallery.map_of_images(self.encoder(*model_args), pictures, names, handlers.parse_layer(layer),
                                                  method, colour, progress=callback)
        return view, view.picture.image, view.figure, view.info

    def pick_map_point(self, view, evt: gr.SelectData):
        if view is None:
            raise BadRequest("Draw a map first.")
        return handlers_gallery.pick_point(view, *evt.index[:2])

    def run_cka(self, images, model_a, model_b, pooling, debiased, progress=gr.Progress()):
        if not images:
            raise BadRequest("Add images first: CKA compares two encoders over the loaded images.")
        pictures, _ = self._images_or_none(images)
        result = handlers_gallery.cka_view(self.pool.get(model_a), self.pool.get(model_b), pictures, pooling,
                                           debiased=debiased, progress=progress_callback(progress, "embedding"))
        return result.figures["cka"], result.info

    # ------------------------------------------------------------------------------------- Lab
    def run_lab(self, models, probe, n_train, n_test, seed, progress=gr.Progress()):
        models = [m for m in (models or []) if m]
        if not models:
            raise BadRequest("Choose at least one encoder.")
        config = handlers_lab.lab_config(n_train or 1, n_test or 1, seed or 0)
        encoders = {name: self.pool.get(name) for name in models}
        callback = progress_callback(progress, "measuring")
        if probe == LAB_CKA:
            if len(encoders) != 2:
                raise BadRequest("CKA compares two encoders: choose exactly two.")
            view = handlers_lab.cka_view(*encoders.values(), config, callback)
        elif probe == LAB_EVERYTHING:
            view = handlers_lab.lab_view(encoders, config, callback)
        else:
            view = handlers_lab.probes_view(encoders, probe, config, callback)
        path = Path(tempfile.mkdtemp(dir=self.export_dir)) / "lab.json"
        path.write_text(json.dumps(view.numbers, indent=1, default=float))
        return view.markdown, view.location, view.part_map, view.cka_figure, str(path)

    # ------------------------------------------------------------------------------------- Compare
    def run_compare(self, images, selected, models, k, click, *model_args, progress=gr.Progress()):
        image = _pick(images, selected)
        if image is None:
            raise BadRequest("Add an image first.")
        models = [m for m in (models or []) if m]
        if not 2 <= len(models) <= 4:
            raise BadRequest("Choose two to four encoders to compare.")
        main_model = model_args[0] if model_args and model_args[0] else self.config.default_model
        encoders = []
        for i, name in enumerate(models):
            progress((i, len(models)), desc=f"loading {name}")
            # the model chosen at the top comes with its weights file and resolution, as in the other views
            encoders.append(self.encoder(*model_args) if model_args and name == main_model else self.pool.get(name))
        progress((len(models), len(models)), desc="computing the views")
        comparison = handlers_compare.compare(encoders, image.image, tuple(click or (0.5, 0.5)), int(k))
        headers, rows = handlers_compare.numbers_table(comparison)
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))
        png = folder / "comparison.png"
        png.write_bytes(draw.to_png_bytes(comparison.panel()))
        report = folder / "comparison.html"
        report.write_text(handlers_compare.html_report(comparison, title=f"PatchLens: {image.name}"))
        return (comparison.image, gr.update(value=rows, headers=headers), str(png), str(report),
                *(comparison.row_picture(row) for row in handlers_compare.ROWS))

    @staticmethod
    def click_fraction(picture, evt: gr.SelectData):
        """A click on a picture as fractions (x / width, y / height)."""
        height, width = np.asarray(picture).shape[:2]
        return (min(max(evt.index[0] / width, 0.0), 1.0), min(max(evt.index[1] / height, 0.0), 1.0))

    # ------------------------------------------------------------------------------------- scripted API
    def api_patch_features(self, image_base64: str, model: str = "", layer: int = -1) -> dict:
        """Patch features of one image (base64-encoded file bytes) for scripts: grid, tokens summary, PCA map.

        The answer carries a hash of the bytes received, so a client can check it answers its own request.
        """
        import base64
        import hashlib

        try:
            data = base64.b64decode(image_base64, validate=True)
        except ValueError:
            raise gr.Error("image_base64 is not valid base64", print_exception=False) from None
        image = load_image_bytes(data, self.config)
        encoder = self.encoder(model or self.config.default_model, None, "", None)
        chosen = None if layer == -1 else int(layer)
        [features] = handlers.extract(encoder, [image], chosen)
        tokens = features.tokens(chosen)
        result = handlers.overview(encoder, image)
        return {
            "bytes_blake2b": hashlib.blake2b(data, digest_size=16).hexdigest(),
            "model": encoder.name, "model_key": encoder.key, "trained": encoder.trained,
            "grid_hw": list(features.grid_hw), "patch_size": features.patch_size,
            "mean_token": tokens.reshape(-1, tokens.shape[-1]).mean(0).tolist(),
            "pca_png_base64": base64.b64encode(draw.to_png_bytes(result.pictures["pca"])).decode(),
        }

    # ------------------------------------------------------------------------------------- layout
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="PatchLens") as demo:
            gr.Markdown(INTRO)
            images = gr.State([])
            click = gr.State(None)  # (image name, row, col) of the last clicked patch
            with gr.Row():
                with gr.Column(scale=2):
                    model = gr.Dropdown(model_choices(), value=self.config.default_model, label="Model",
                                        allow_custom_value=True, elem_id="model")
                    with gr.Accordion("Weights and resolution", open=False):
                        weights_upload = gr.File(label="Weights file (.safetensors, or .pth read safely)",
                                                 file_types=[".safetensors", ".pth", ".pt", ".bin", ".tar"],
                                                 type="filepath", elem_id="weights-upload")
                        weights_path = gr.Textbox(label="…or a weights path on the server (under --allow-dir)")
                        image_size = gr.Number(label="Short side in pixels (0: the model's own)", value=0, precision=0,
                                               elem_id="image-size")
                    model_info = gr.Markdown(elem_id="model-info")
                with gr.Column(scale=3):
                    uploads = gr.File(label="Add images", file_count="multiple", type="filepath", elem_id="uploads")
                    with gr.Row():
                        examples_btn = gr.Button("Add example images", elem_id="add-examples")
                        clear_btn = gr.Button("Clear images", elem_id="clear-images")
                    image_status = gr.Markdown("No images yet.", elem_id="image-status")
            with gr.Row():
                gallery = gr.Gallery(label="Loaded images", columns=10, height=130, allow_preview=False,
                                     object_fit="contain", scale=4)
                selected = gr.Dropdown([], label="Image shown in the views", elem_id="inspect-image-choice", scale=1)

            with gr.Tabs():
                with gr.Tab("Inspect", id="inspect"):
                    gr.Markdown(HELP["inspect"])
                    layer = gr.Dropdown([handlers.FINAL_LAYER], value=handlers.FINAL_LAYER, label="Tokens from",
                                        elem_id="layer")
                    with gr.Row():
                        shown = gr.Image(label="Image (click a patch)", interactive=False, format="png", elem_id="inspect-image")
                        pca = gr.Image(label="PCA of patch tokens (RGB)", interactive=False, format="png", elem_id="inspect-pca")
                        attention = gr.Image(label="Class-token attention (last layer)", interactive=False, format="png",
                                             elem_id="inspect-attention")
                    overview_info = gr.Markdown(elem_id="inspect-info")
                    overview_file = gr.File(label="Numbers behind these maps (.npz)", elem_id="overview-export")
                    with gr.Tabs():
                        with gr.Tab("Similarity", id="similarity"):
                            gr.Markdown(HELP["similarity"])
                            sim_gallery = gr.Gallery(label="Similarity to the clicked patch", columns=4, height=380,
                                                     format="png", elem_id="similarity-gallery")
                            sim_info = gr.Markdown(elem_id="similarity-info")
                            sim_file = gr.File(label="Similarity maps (.npz)")
                        with gr.Tab("PCA", id="pca"):
                            gr.Markdown(HELP["pca"])
                            with gr.Row():
                                pca_joint = gr.Checkbox(True, label="Fit jointly on all images")
                                pca_fg = gr.Checkbox(False, label="Foreground only")
                                pca_invert = gr.Checkbox(False, label="Invert foreground")
                                pca_threshold = gr.Slider(0.05, 0.95, 0.5, step=0.05, label="Foreground threshold")
                            pca_gallery = gr.Gallery(label="PCA maps", columns=4, height=380, format="png",
                                                     elem_id="pca-gallery")
                            pca_info = gr.Markdown()
                            pca_file = gr.File(label="PCA maps (.npz)")
                        with gr.Tab("Parts", id="parts"):
                            gr.Markdown(HELP["parts"])
                            with gr.Row():
                                parts_k = gr.Slider(2, 16, 5, step=1, label="Number of parts (k)", elem_id="parts-k")
                                parts_seed = gr.Number(0, precision=0, label="Seed")
                                parts_fg = gr.Checkbox(False, label="Foreground only")
                                parts_separate = gr.Checkbox(False, label="Each image on its own",
                                                             elem_id="parts-separate")
                                parts_position = gr.Checkbox(False, label="Remove each position's mean token",
                                                             elem_id="parts-position")
                                parts_threshold = gr.Slider(0.05, 0.95, 0.5, step=0.05, label="Foreground threshold")
                            parts_gallery = gr.Gallery(label="Part maps", columns=4, height=380, format="png",
                                                       elem_id="parts-gallery")
                            parts_table = gr.Dataframe(label="Patches per part", interactive=False)
                            parts_info = gr.Markdown(elem_id="parts-info")
                            parts_file = gr.File(label="Part labels and centroids (.npz)")
                        with gr.Tab("Attention", id="attention"):
                            gr.Markdown(HELP["attention"])
                            with gr.Row():
                                att_block = gr.Slider(0, 11, 11, step=1, label="Block", elem_id="attention-block")
                                att_head = gr.Dropdown(["mean"], value="mean", label="Head")
                                att_rollout = gr.Checkbox(False, label="Rollout (blocks 0..b)")
                                att_mass = gr.Slider(0.1, 1.0, 0.6, step=0.05, label="Mask keeps this share of attention")
                            with gr.Row():
                                att_map = gr.Image(label="Attention", interactive=False, format="png", elem_id="attention-map")
                                att_mask = gr.Image(label="Mass mask", interactive=False, format="png")
                            att_heads = gr.Gallery(label="Every head of this block", columns=6, height=260, format="png")
                            att_info = gr.Markdown()
                            att_file = gr.File(label="Attention maps (.npz)")
                        with gr.Tab("BagSSL", id="bagssl"):
                            gr.Markdown(HELP["bagssl"])
                            with gr.Row():
                                bag_sizes = gr.Textbox("16,32,48,64", label="Crop sizes (px of the model's input)")
                                bag_run = gr.Button("Run BagSSL", variant="primary", elem_id="bagssl-run")
                            with gr.Row():
                                bag_layers = gr.Plot(label="Per block", elem_id="bagssl-layers")
                                bag_crops = gr.Plot(label="Bag of crops", elem_id="bagssl-crops")
                            bag_map = gr.Image(label="Patch token · image embedding (cosine)", interactive=False, format="png")
                            bag_info = gr.Markdown(elem_id="bagssl-info")
                            bag_file = gr.File(label="BagSSL numbers (.npz)")

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

                with gr.Tab("Gallery", id="gallery"):
                    gr.Markdown(HELP["gallery"])
                    with gr.Row():
                        gallery_source = gr.Radio(["loaded images", "server folder"], value="loaded images",
                                                  label="Index these images", elem_id="gallery-source")
                        gallery_folder = gr.Textbox(label="Server folder (under --allow-dir)", elem_id="gallery-folder")
                        gallery_kind = gr.Dropdown(["auto", "exact", "ivf", "hnsw"], value="auto", label="Index kind")
                        gallery_build = gr.Button("Build index", variant="primary", elem_id="gallery-build")
                    with gr.Row():
                        index_path = gr.Textbox(label="Index folder to load or save (under --allow-dir)")
                        index_load = gr.Button("Load index")
                        index_save = gr.Button("Save index")
                    index_info = gr.Markdown("No index yet.", elem_id="index-info")
                    with gr.Row():
                        gallery_query = gr.Image(label="Query (click a patch)", interactive=False, format="png",
                                                 elem_id="gallery-query", scale=1)
                        with gr.Column(scale=2):
                            gallery_k = gr.Slider(1, 30, 8, step=1, label="Results (k)")
                            gallery_hits = gr.Gallery(label="Nearest patches", columns=4, height=330, format="png",
                                                      elem_id="gallery-hits")
                            gallery_hit_info = gr.Markdown(elem_id="gallery-hit-info")
                        gallery_hit_source = gr.Image(label="Best match in its image", interactive=False, format="png",
                                                      scale=1)
                    gr.Markdown(HELP["map"])
                    with gr.Row():
                        map_from = gr.Radio(["loaded images", "the index"], value="loaded images", label="Map")
                        map_method = gr.Radio(["umap", "pca"], value="umap", label="Method")
                        map_colour = gr.Dropdown(["image", "part", "position", "attention"], value="image",
                                                 label="Colour by")
                        map_run = gr.Button("Draw map", variant="primary", elem_id="map-run")
                    with gr.Row():
                        map_picture = gr.Image(label="Map (click a point)", interactive=False, format="png",
                                               elem_id="map-picture", scale=2)
                        with gr.Column(scale=1):
                            map_crop = gr.Image(label="Picked patch", interactive=False, format="png",
                                                elem_id="map-crop")
                            map_source = gr.Image(label="In its image", interactive=False, format="png")
                            map_caption = gr.Markdown(elem_id="map-caption")
                    map_info = gr.Markdown()
                    map_figure = gr.Plot(label="Interactive map (hover)")
                    gr.Markdown(HELP["cka"])
                    with gr.Row():
                        cka_a = gr.Dropdown(model_choices(), value=self.config.default_model, label="Encoder A",
                                            allow_custom_value=True)
                        cka_b = gr.Dropdown(model_choices(), value=self.config.default_model, label="Encoder B",
                                            allow_custom_value=True)
                        cka_pooling = gr.Radio(["grid", "mean"], value="grid", label="Per image")
                        cka_debiased = gr.Checkbox(False, label="Debiased CKA")
                        cka_run = gr.Button("CKA over the loaded images", variant="primary", elem_id="cka-run")
                    cka_plot = gr.Plot(label="Layer-by-layer CKA", elem_id="cka-plot")
                    cka_info = gr.Markdown(elem_id="cka-info")

                with gr.Tab("Compare", id="compare"):
                    gr.Markdown(HELP["compare"])
                    with gr.Row():
                        compare_models = gr.Dropdown(model_choices(), value=[self.config.default_model], multiselect=True,
                                                     max_choices=4, label="Encoders (2 to 4)", elem_id="compare-models",
                                                     allow_custom_value=True, scale=3)
                        compare_k = gr.Slider(2, 12, 5, step=1, label="Parts (k)", scale=1)
                        compare_run = gr.Button("Compare", variant="primary", elem_id="compare-run", scale=1)
                    with gr.Row():
                        compare_image = gr.Image(label="Click a spot: every encoder's similarity map follows",
                                                 interactive=False, format="png", elem_id="compare-image", scale=1)
                        with gr.Column(scale=3):
                            compare_table = gr.Dataframe(label="Numbers", interactive=False, elem_id="compare-table")
                            with gr.Row():
                                compare_png = gr.File(label="Comparison (PNG)", elem_id="compare-png")
                                compare_html = gr.File(label="Report (HTML)", elem_id="compare-html")
                    compare_rows = {row: gr.Image(label=row, interactive=False, format="png",
                                                  elem_id=f"compare-{row.split()[0].lower()}")
                                    for row in handlers_compare.ROWS}

                with gr.Tab("Lab", id="lab"):
                    gr.Markdown(HELP["lab"])
                    with gr.Row():
                        lab_models = gr.Dropdown(model_choices(), value=bundled_names() or [self.config.default_model],
                                                 multiselect=True, label="Encoders", allow_custom_value=True,
                                                 elem_id="lab-models", scale=3)
                        lab_probe = gr.Dropdown([*handlers_lab.PROBES, LAB_EVERYTHING, LAB_CKA], value=handlers_lab.PROBES[0],
                                                label="Measure", elem_id="lab-probe", scale=2)
                    with gr.Row():
                        lab_train = gr.Number(LabConfig.n_train, precision=0, label="Scenes to fit on")
                        lab_test = gr.Number(LabConfig.n_test, precision=0, label="Scenes to score on")
                        lab_seed = gr.Number(LabConfig.seed, precision=0, label="Seed")
                        lab_run = gr.Button("Run", variant="primary", elem_id="lab-run")
                    lab_text = gr.Markdown(elem_id="lab-result")
                    with gr.Row():
                        lab_location = gr.Image(label="Location probe: swapped patches boxed, P(swapped)",
                                                interactive=False, format="png", elem_id="lab-location")
                        lab_parts = gr.Image(label="Scene · ground-truth parts · k-means parts", interactive=False,
                                             format="png", elem_id="lab-parts")
                    lab_cka = gr.Plot(label="CKA", elem_id="lab-cka")
                    lab_file = gr.File(label="The numbers (.json)", elem_id="lab-json")

            # ----------------------------------------------------------------------------- events
            model_inputs = [model, weights_upload, weights_path, image_size]
            image_outputs = [images, gallery, image_status, selected, uploads]
            overview = ([images, selected, *model_inputs], [shown, pca, attention, overview_info, overview_file])
            similarity = ([images, selected, click, layer, *model_inputs], [sim_gallery, sim_info, sim_file])
            pca_view = ([images, layer, pca_joint, pca_fg, pca_threshold, pca_invert, *model_inputs],
                        [pca_gallery, pca_info, pca_file])
            parts_view = ([images, layer, parts_k, parts_seed, parts_fg, parts_threshold, parts_separate,
                           parts_position, *model_inputs],
                          [parts_gallery, parts_table, parts_info, parts_file])
            attention_view = ([images, selected, att_block, att_head, att_rollout, att_mass, *model_inputs],
                              [att_map, att_mask, att_heads, att_info, att_file])
            runners = {
                "overview": (ui_errors(self.run_overview), *overview),
                "similarity": (ui_errors(self.run_similarity), *similarity),
                "pca": (ui_errors(self.run_pca), *pca_view),
                "parts": (ui_errors(self.run_parts), *parts_view),
                "attention": (ui_errors(self.run_attention), *attention_view),
            }

            def chain(event, *names: str):
                """Run the named views one after another after an event, each only if the step before succeeded
                (one failure shows one message, and the other views keep what they showed)."""
                for name in names:
                    fn, inputs, outputs = runners[name]
                    event = event.success(fn, inputs, outputs)
                return event

            def on(trigger, fn, inputs, outputs, *names: str):
                return chain(trigger(fn, inputs, outputs), *names)

            hidden = gr.State(frozenset())  # custom mask: hidden (row, col) cells
            mask_inputs = [mask_kind, mask_ratio, mask_seed, hidden]
            runners["reconstruct"] = (ui_errors(self.run_reconstruct), [images, selected, mae_name, mae_weights, *mask_inputs],
                                      [rec_masked, rec_output, rec_pasted, rec_error, rec_info])
            runners["drift"] = (ui_errors(self.run_drift), [images, selected, *mask_inputs, *model_inputs],
                                [drift_picture, drift_info])
            runners["cae"] = (ui_errors(self.run_cae), [images, selected, *mask_inputs], [cae_picture, cae_info])
            everything = ("overview", "pca", "parts", "attention", "similarity")
            on(uploads.upload, ui_errors(self.add_images), [uploads, images], image_outputs, "pca", "parts")
            on(examples_btn.click, ui_errors(self.add_examples), [images], image_outputs, "pca", "parts")
            on(clear_btn.click, self.clear_images, [images], image_outputs, "pca", "parts", "similarity")
            patch_index = gr.State(None)  # this session's PatchIndex
            map_view = gr.State(None)  # the map last drawn, for picking points
            gallery_query_runner = (ui_errors(self.show_query), [images, selected, patch_index, *model_inputs], gallery_query)
            on(gallery_build.click, ui_errors(self.build_gallery_index),
               [images, gallery_source, gallery_folder, gallery_kind, patch_index, layer, *model_inputs],
               [patch_index, index_info]).success(*gallery_query_runner)
            on(index_load.click, ui_errors(self.load_gallery_index), [index_path], [patch_index, index_info]).success(
                *gallery_query_runner)
            index_save.click(ui_errors(self.save_gallery_index), [patch_index, index_path], index_info)
            selected.change(*gallery_query_runner)
            gallery_query.select(ui_errors(self.search_gallery),
                                 [images, selected, patch_index, gallery_k, *model_inputs],
                                 [gallery_query, gallery_hits, gallery_hit_source, gallery_hit_info])
            map_run.click(ui_errors(self.draw_map), [images, map_from, map_method, map_colour, patch_index, layer,
                                                     *model_inputs], [map_view, map_picture, map_figure, map_info])
            map_picture.select(ui_errors(self.pick_map_point), [map_view],
                               [map_picture, map_crop, map_source, map_caption])
            cka_run.click(ui_errors(self.run_cka), [images, cka_a, cka_b, cka_pooling, cka_debiased],
                          [cka_plot, cka_info])
            lab_run.click(ui_errors(self.run_lab), [lab_models, lab_probe, lab_train, lab_test, lab_seed],
                          [lab_text, lab_location, lab_parts, lab_cka, lab_file])
            compare_click = gr.State((0.5, 0.5))  # the spot, as fractions of the image's width and height
            runners["compare"] = (ui_errors(self.run_compare),
                                  [images, selected, compare_models, compare_k, compare_click, *model_inputs],
                                  [compare_image, compare_table, compare_png, compare_html, *compare_rows.values()])
            compare_run.click(*runners["compare"])
            on(compare_image.select, self.click_fraction, [compare_image], compare_click, "compare")
            on(selected.change, *runners["overview"], "attention")
            on(selected.change, *runners["drift"], "cae")  # the views that need no MAE go on without one
            selected.change(*runners["reconstruct"])
            for control in (mae_name, mae_weights, mask_kind, mask_ratio, mask_seed):
                control.change(*runners["reconstruct"])
            for control in (mask_kind, mask_ratio, mask_seed):
                on(control.change, *runners["drift"], "cae")
            toggled = rec_masked.select(ui_errors(self.toggle_mask_patch),
                                        [images, selected, mae_name, mae_weights, hidden], [hidden, mask_kind])
            chain(toggled, "reconstruct")
            chain(toggled, "drift", "cae")
            cleared = mask_clear.click(lambda: frozenset(), None, hidden)
            chain(cleared, "reconstruct")
            chain(cleared, "drift", "cae")
            status_outputs = [model_info, layer, att_block, att_head]
            for component in model_inputs:
                on(component.change, ui_errors(self.model_status), model_inputs, status_outputs, *everything)
            on(shown.select, ui_errors(self.click_patch), [images, selected, layer, *model_inputs], click, "similarity")
            on(layer.change, *runners["pca"], "parts", "similarity")
            for control in (pca_joint, pca_fg, pca_invert, pca_threshold):
                control.change(*runners["pca"])
            for control in (parts_k, parts_seed, parts_fg, parts_threshold, parts_separate, parts_position):
                control.change(*runners["parts"])
            for control in (att_block, att_head, att_rollout, att_mass):
                control.change(*runners["attention"])
            bag_run.click(ui_errors(self.run_bagssl), [images, selected, bag_sizes, *model_inputs],
                          [bag_layers, bag_crops, bag_map, bag_info, bag_file])
            demo.load(ui_errors(self.model_status), model_inputs, status_outputs)
            gr.api(ui_errors(self.api_patch_features), api_name="patch_features")
        return demo


def _pick(images: list[LoadedImage], name: str | None) -> LoadedImage | None:
    for image in images:
        if image.name == name:
            return image
    return None


def build_app(config: AppConfig | None = None) -> tuple[gr.Blocks, PatchLensApp]:
    config = config or AppConfig()
    config.default_model = config.default_model or default_model_name()
    app = PatchLensApp(config)
    return app.build(), app


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, allow_dirs: list[str] | None = None,
          max_upload_mb: float = 50.0, concurrency: int = 1, max_models: int = 4, cache_mb: float | None = None,
          block: bool = True) -> gr.Blocks:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cache_mb is not None:
        from ssl_core.features.encoder import FEATURE_CACHE
        FEATURE_CACHE.max_size = cache_mb * 1024 * 1024
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this address can use the app and read the allowed "
                    "folders (%s)", host, ", ".join(allow_dirs or []) or "none")
    upload_dir = Path(os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="patchlens-uploads-")))
    config = AppConfig(allow_dirs=[Path(d).expanduser().resolve() for d in allow_dirs or []],
                       max_upload_mb=max_upload_mb, max_models=max_models, default_model=model or "",
                       upload_dirs=[upload_dir.resolve()])
    demo, app = build_app(config)
    log.info("default model: %s", config.default_model)
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024),
                show_error=True, prevent_thread_lock=not block, quiet=not block, theme=gr.themes.Soft(),
                allowed_paths=[str(app.export_dir)])
    return demo
