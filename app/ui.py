"""The PatchLens Gradio app: layout and event wiring only. Computation lives in `app.handlers` / `ssl_core`."""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import gradio as gr

from ssl_core import CheckpointError, ImageLoadError, WeightsUnavailableError
from ssl_core.attention import AttentionUnavailableError
from ssl_core.models.registry import all_specs, default_model_name

from . import handlers
from .state import AppConfig, LoadedImage, ModelPool, UserError, example_paths, load_uploads

log = logging.getLogger("patchlens")
EXPECTED_ERRORS = (UserError, ImageLoadError, WeightsUnavailableError, CheckpointError, AttentionUnavailableError,
                   KeyError, ValueError)

INTRO = """# PatchLens
Look inside vision transformers one patch at a time. Add images (or the examples), choose a model, and explore.
"""
INSPECT_HELP = """**What am I looking at?** Left: the image as the model sees it (resized so both sides are whole patches).
Middle: each patch token projected on the first three principal components of all tokens, shown as R, G, B —
patches with similar colours have similar embeddings, so parts of one object share a colour. Right: how much the
class token attends to each patch in the last layer (heads averaged) — often the object the image embedding is about."""


def ui_errors(fn: Callable) -> Callable:
    """Show expected errors as readable messages, and unexpected ones without a stack trace."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except EXPECTED_ERRORS as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise gr.Error(str(message), print_exception=False) from None
        except Exception as err:  # noqa: BLE001
            log.error("unexpected error in %s:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The app is still running; "
                           f"try again or another input.", print_exception=False) from None
    return wrapper


def model_choices() -> list[tuple[str, str]]:
    specs = [s for s in all_specs() if s.source != "bundled" or s.trained]
    return [(f"{s.display_name} — {s.family}", s.name) for s in specs]


class PatchLensApp:
    """Builds the Blocks and holds what every view shares: the config and the model pool."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.pool = ModelPool(config.max_models)

    # ------------------------------------------------------------------------------------- shared actions
    def encoder(self, model: str, weights_upload: str | None, weights_path: str, image_size: float | None):
        weights = None
        if weights_upload:
            self.config.check_upload_size(weights_upload)
            weights = weights_upload
        elif weights_path and weights_path.strip():
            weights = str(self.config.check_readable(weights_path.strip(), "weights file"))
        size = int(image_size) if image_size else None
        return self.pool.get(model or self.config.default_model, weights, size)

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

    # ------------------------------------------------------------------------------------- views
    def run_inspect(self, images: list[LoadedImage], selected: str | None, model: str, weights_upload, weights_path,
                    image_size, progress=gr.Progress()):
        image = _pick(images, selected)
        if image is None:
            return None, None, None, "Add an image (or the examples) to start."
        progress(0.1, desc="loading model")
        encoder = self.encoder(model, weights_upload, weights_path, image_size)
        progress(0.5, desc="forward pass")
        result = handlers.inspect_image(encoder, image.image)
        return result.image, result.pca, result.attention, result.info

    def model_status(self, model: str, weights_upload, weights_path, image_size) -> str:
        encoder = self.encoder(model, weights_upload, weights_path, image_size)
        return encoder.describe()

    # ------------------------------------------------------------------------------------- layout
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="PatchLens") as demo:
            gr.Markdown(INTRO)
            images = gr.State([])
            with gr.Row():
                with gr.Column(scale=2):
                    model = gr.Dropdown(model_choices(), value=self.config.default_model, label="Model",
                                        allow_custom_value=True, elem_id="model")
                    with gr.Accordion("Weights and resolution", open=False):
                        weights_upload = gr.File(label="Weights file (.safetensors, or .pth read safely)",
                                                 file_types=[".safetensors", ".pth", ".pt", ".bin", ".tar"],
                                                 type="filepath", elem_id="weights-upload")
                        weights_path = gr.Textbox(label="…or a weights path on the server (under --allow-dir)")
                        image_size = gr.Number(label="Short side in pixels (empty: the model's own)", value=None,
                                               precision=0, minimum=16, maximum=1024)
                    model_info = gr.Markdown(elem_id="model-info")
                with gr.Column(scale=3):
                    uploads = gr.File(label="Add images", file_count="multiple", type="filepath", elem_id="uploads")
                    with gr.Row():
                        examples_btn = gr.Button("Add example images", elem_id="add-examples")
                        clear_btn = gr.Button("Clear images")
                    image_status = gr.Markdown("No images yet.", elem_id="image-status")
            gallery = gr.Gallery(label="Loaded images", columns=8, height=140, allow_preview=False)
            with gr.Tabs():
                with gr.Tab("Inspect", id="inspect"):
                    gr.Markdown(INSPECT_HELP)
                    selected = gr.Dropdown([], label="Image", elem_id="inspect-image-choice")
                    with gr.Row():
                        shown = gr.Image(label="Image (as the model sees it)", interactive=False, format="png", elem_id="inspect-image")
                        pca = gr.Image(label="PCA of patch tokens (RGB)", interactive=False, format="png", elem_id="inspect-pca")
                        attention = gr.Image(label="Class-token attention (last layer)", interactive=False, format="png",
                                             elem_id="inspect-attention")
                    inspect_info = gr.Markdown(elem_id="inspect-info")

            model_inputs = [model, weights_upload, weights_path, image_size]
            inspect_outputs = [shown, pca, attention, inspect_info]
            run_inspect = ui_errors(self.run_inspect)
            status = ui_errors(self.model_status)
            image_outputs = [images, gallery, image_status, selected, uploads]

            uploads.upload(ui_errors(self.add_images), [uploads, images], image_outputs)
            examples_btn.click(ui_errors(self.add_examples), [images], image_outputs)
            clear_btn.click(self.clear_images, [images], image_outputs)
            selected.change(run_inspect, [images, selected, *model_inputs], inspect_outputs)
            for component in model_inputs:
                component.change(status, model_inputs, model_info).then(
                    run_inspect, [images, selected, *model_inputs], inspect_outputs)
            demo.load(status, model_inputs, model_info)
        return demo


def _pick(images: list[LoadedImage], name: str | None) -> LoadedImage | None:
    for image in images:
        if image.name == name:
            return image
    return images[-1] if images and name is None else None


def build_app(config: AppConfig | None = None) -> tuple[gr.Blocks, PatchLensApp]:
    config = config or AppConfig()
    config.default_model = config.default_model or default_model_name()
    app = PatchLensApp(config)
    return app.build(), app


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, allow_dirs: list[str] | None = None,
          max_upload_mb: float = 50.0, concurrency: int = 1, max_models: int = 4, block: bool = True) -> gr.Blocks:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
                show_error=True, prevent_thread_lock=not block, quiet=not block, theme=gr.themes.Soft())
    return demo
