"""The PatchLens Gradio app: the controls every tab shares, the app object, and the one error wrapper.

Each tab (`app.ui.tabs.*`) lays out and wires its own components. Its callbacks call a view (`app.views.*`), which
returns a `ViewResult`; `PatchLensApp.view` shows that result in the tab's components, one component per name.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import gradio as gr
from gradio.components import Component

from app.access import Access
from app.ui.downloads import picture_files, picture_paths
from app.ui.jobs import Jobs, StoppableProgress, queues, session_of
from app.ui.restore import Saved, SessionStore
from app.ui.server import import_before_threads, launch_options
from app.ui.session import session_bound
from app.ui.state import AppConfig, LoadedImage, ModelPool, example_paths, load_uploads
from app.ui.wiring import Runner, SharedControls, chain, gradio_upload_folder, model_choices, ui_errors
from app.views.result import Table, ViewResult
from ssl_core.analyses.maps import UMAP_WARM_UP
from ssl_core.data.images import MAX_SHORT_SIDE
from ssl_core.errors import BadRequest
from ssl_core.features.encoder import Encoder
from ssl_core.mim.mae import MaskedAutoencoder
from ssl_core.models.registry import DEFAULT_MAE, MAE_SOURCES, default_model_name
from ssl_core.system import limit_malloc_arenas
from ssl_core.work import WorkLimits

log = logging.getLogger("patchlens")
INTRO = """# PatchLens
Look inside vision transformers one patch at a time. Add images (or the examples), choose a model, and explore.
"""



class PatchLensApp:
    """Builds the Blocks and holds what every tab shares: the config, the model pool and the export folder."""

    def __init__(self, config: AppConfig, concurrency: int = 1, limits: WorkLimits | None = None):
        self.config = config
        self.pool = ModelPool(config.max_models)
        self.export_dir = Path(tempfile.mkdtemp(prefix="patchlens-exports-"))
        self.sessions = SessionStore()
        uploads = config.upload_dirs or [gradio_upload_folder()]
        self.access = Access(config.allow_dirs, uploads,  # every path a client sends goes here
                             private_dirs=[self.export_dir, self.sessions.root])
        self.jobs = Jobs()
        self.views_queue, self.jobs_queue = queues(concurrency)
        self.limits = limits or WorkLimits()

    # ------------------------------------------------------------------------------------- models
    def encoder(self, model: str | None, weights_upload: str | None = None, weights_path: str | None = "",
                image_size: float | None = None) -> Encoder:
        weights = None
        if weights_upload:
            weights = self.access.upload(weights_upload, "the weights file")
            self.config.check_upload_size(weights)
        elif weights_path and weights_path.strip():
            weights = self.access.readable(weights_path, "the weights file")
        size = int(image_size) if image_size else None
        if size is not None and not 16 <= size <= MAX_SHORT_SIDE:
            raise BadRequest(f"The short side must be between 16 and {MAX_SHORT_SIDE} pixels (or 0 for the model's "
                             f"own), not {size}.")
        return self.pool.get(model or self.config.default_model, weights, size)

    def mae(self, name: str | None, upload: str | None) -> MaskedAutoencoder:
        """The MAE named in the list, or uploaded (then ``name`` may give its encoder's timm architecture), or a
        checkpoint path under the allowed folders; anything else gets the MAE field's one refusal."""
        name = (name or "").strip() or DEFAULT_MAE
        if upload:
            weights = self.access.upload(upload, "the MAE checkpoint")
            self.config.check_upload_size(weights)
            return self.pool.get_mae(name, weights)
        if name in MAE_SOURCES:
            return self.pool.get_mae(name)
        listed = f"one from the list ({', '.join(MAE_SOURCES)}), an uploaded checkpoint, or "
        return self.pool.get_mae(None, self.access.readable(name, "the MAE", options=listed))

    # ------------------------------------------------------------------------------------- showing views
    def view(self, fn: Callable[..., ViewResult], inputs: list[Component], targets: Mapping[str, Component]) -> Runner:
        """A runner for a callback returning a `ViewResult`, shown in ``targets``: result name -> component.

        Names: a picture, gallery, figure or table of the result; "markdown" (warnings and notes); "details" (the
        markdown shown after the pictures); "state"; "numbers" (the numbers file) or a file name of ``result.files``
        (downloads). A name the result lacks clears its component.
        """
        @functools.wraps(fn)
        def show(*args: Any, **kwargs: Any) -> dict[Component, Any]:
            return self.show(fn(*args, **kwargs), targets)
        return Runner(session_bound(ui_errors(show)), inputs, list(targets.values()), self.views_queue)

    def action(self, fn: Callable[..., Any], inputs: list[Component], outputs: list[Component],
               own_queue: bool = False) -> Runner:
        """A runner for any other callback (its return value goes to ``outputs`` as it is). It waits in the views'
        queue unless ``own_queue``: a quick step that must not wait behind views still running for a page that closed
        (a reload's restore)."""
        return Runner(session_bound(ui_errors(fn)), inputs, outputs, None if own_queue else self.views_queue)

    # ------------------------------------------------------------------------------------- long jobs
    def job(self, name: str, fn: Callable[..., ViewResult], inputs: list[Component],
            targets: Mapping[str, Component], hidden_when_empty: Collection[str] = ()) -> Runner:
        """A runner for a long job shown like `view`, in the jobs queue (see `app.ui.jobs`). The targets named in
        ``hidden_when_empty`` are hidden while the result has nothing for them.

        ``fn`` ends with ``request: gr.Request, progress: gr.Progress = gr.Progress()``; the progress it gets stops
        the job (`Cancelled`) at its next report once the job's Stop button is pressed or its tab is closed.
        """
        *_, request, progress = inspect.signature(fn).parameters.values()
        if request.name != "request" or not isinstance(progress.default, gr.Progress):
            raise TypeError(f"{fn.__name__} must end with (request: gr.Request, progress=gr.Progress())")

        @functools.wraps(fn)
        def run(*args: Any) -> dict[Component, Any]:
            *values, request, progress = args
            with self.jobs.run(session_of(request), name) as flag:
                result = fn(*values, request, StoppableProgress(progress, flag, name))
            return self.show(result, targets, hidden_when_empty)
        return Runner(session_bound(ui_errors(run)), inputs, list(targets.values()), self.jobs_queue)

    def stoppable(self, runner: Runner, trigger: Callable[..., Any], stop: gr.Button) -> Any:
        """Run a job on ``trigger``; ``stop`` ends it (cancels the event and sets the job's stop flag)."""
        event = runner.on(trigger)
        stop.click(self.stop_jobs, None, None, cancels=[event], concurrency_limit=None, show_progress="hidden")
        return event

    def stop_jobs(self, request: gr.Request) -> None:
        """Stop the running job of the session (its Stop button, or its tab closing)."""
        self.jobs.stop(session_of(request))

    def show(self, result: ViewResult, targets: Mapping[str, Component],
             hidden_when_empty: Collection[str] = ()) -> dict[Component, Any]:
        """The value of each target component (see `view`); the downloads asked for are written first. A target
        named in ``hidden_when_empty`` is shown only when its value is not None."""
        downloads = {name: data for name, data in result.files.items() if name in targets}
        numbers = result.numbers_file() if "numbers" in targets else None
        if numbers is not None:
            downloads[numbers[0]] = numbers[1]
        pictures = picture_files(result, targets)
        paths = self.write_downloads({**downloads, **{file: data for file, (data, _) in pictures.items()}})
        shown: dict[Component, Any] = {}
        for name, component in targets.items():
            if name in result.pictures or name in result.galleries:
                value = picture_paths(result, name, pictures, paths)
            elif name == "markdown":
                value = result.markdown
            elif name == "details":
                value = result.details
            elif name == "state":
                value = result.state
            elif name == "numbers":
                value = paths[numbers[0]] if numbers else None
            elif name in result.files:
                value = paths[name]
            else:
                value = result.value(name)
            if isinstance(value, Table):
                value = gr.update(value=value.rows, headers=value.headers)
            elif value is None and isinstance(component, gr.Gallery):
                value = []
            if name in hidden_when_empty:
                value = gr.update(value=value, visible=value is not None)
            shown[component] = value
        return shown

    def write_downloads(self, files: Mapping[str, bytes]) -> dict[str, str]:
        """Write files into a fresh folder the browser may download from; their paths by name."""
        if not files:
            return {}
        folder = Path(tempfile.mkdtemp(dir=self.export_dir))
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return {name: str(folder / name) for name in files}

    # ------------------------------------------------------------------------------------- images
    def add_images(self, files: list[str] | None, images: list[LoadedImage]) -> tuple:
        paths, problems = [], []
        for file in files or []:
            try:
                paths.append(str(self.access.upload(file if isinstance(file, str) else file.name, "an image")))
            except BadRequest as err:
                problems.append(str(err))
        loaded, unreadable = load_uploads(paths, self.config)
        return self.images_changed(images + loaded, problems + unreadable)

    def end_session(self, request: gr.Request) -> None:
        """A browser session closed: its running job stops, its uploads and files go."""
        self.stop_jobs(request)
        self.access.end_session(getattr(request, "session_hash", None))

    def add_examples(self, images: list[LoadedImage]) -> tuple:
        loaded, problems = load_uploads([str(p) for p in example_paths()], self.config)
        known = {i.name for i in images}
        return self.images_changed(images + [i for i in loaded if i.name not in known], problems)

    def clear_images(self, _images: list[LoadedImage]) -> tuple:
        return self.images_changed([], [])

    def remember_images(self, images: list[LoadedImage], saved: Saved | None) -> Saved:
        return self.sessions.remember_images(images, saved)

    def restore_session(self, saved: Saved | None) -> tuple:
        """After a reload: the images and choices this browser had (see `app.ui.restore`), or nothing changed."""
        restored = self.sessions.restore(saved, self.config)
        if restored is None:
            return (gr.update(),) * 6
        images, strip, status, _, uploads = self.images_changed(restored.images, [])
        names = [i.name for i in restored.images]
        chosen = restored.selected if restored.selected in names else (names[-1] if names else None)
        status = f"{len(names)} image(s) restored from this browser's last visit."
        return (images, strip, status, gr.update(choices=names, value=chosen), uploads,
                gr.update(value=restored.model) if restored.model else gr.update())

    @staticmethod
    def images_changed(images: list[LoadedImage], problems: list[str]) -> tuple:
        """(images, the strip of loaded images, status, the image chooser, the upload box emptied)."""
        status = f"{len(images)} image(s) loaded."
        if problems:
            status += "\n\n**Skipped:**\n" + "\n".join(f"- {p}" for p in problems)
        names = [i.name for i in images]
        chooser = gr.update(choices=names, value=names[-1] if names else None)
        return images, [(i.image, i.name) for i in images], status, chooser, None

    # ------------------------------------------------------------------------------------- layout
    def build(self) -> gr.Blocks:
        from app.ui.tabs import compare, correspond, gallery, inspect, lab, reconstruct  # (they import this module)

        with gr.Blocks(title="PatchLens") as demo:
            gr.Markdown(INTRO)
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
                strip = gr.Gallery(label="Loaded images", columns=10, height=130, allow_preview=False,
                                   object_fit="contain", scale=4)
                with gr.Column(scale=1):
                    selected = gr.Dropdown([], label="Image shown in the views", elem_id="inspect-image-choice")
                    grid = gr.Checkbox(False, label="Show the patch grid on the pictures", elem_id="patch-grid")
            loaded = gr.State([self.config.default_model, None, "", 0])
            shared = SharedControls(gr.State([]), selected, model, weights_upload, weights_path, image_size, model_info,
                                    grid, loaded, on_model=[], on_images=[])
            saved = gr.BrowserState({}, storage_key="patchlens-session")  # images and choices across a reload
            for control in (selected, model):  # first of their listeners, and quick: outside the queue
                control.change(SessionStore.remember_choices, [selected, model, saved], [saved], queue=False,
                               show_progress="hidden")

            with gr.Tabs():
                inspect_tab = inspect.InspectTab(self).build(shared)
                reconstruct.ReconstructTab(self).build(shared)
                gallery.GalleryTab(self).build(shared, inspect_tab.layer)
                compare.CompareTab(self).build(shared)
                correspond.CorrespondTab(self).build(shared, inspect_tab.layer, inspect_tab.facet)
                lab.LabTab(self).build(shared)

            images, image_outputs = shared.images, [shared.images, strip, image_status, selected, uploads]
            after_images = (self.action(self.remember_images, [images, saved], [saved]), inspect_tab.runners["pca"],
                            inspect_tab.runners["parts"])
            added = [self.action(self.add_images, [uploads, images], image_outputs).on(uploads.upload),
                     self.action(self.add_examples, [images], image_outputs).on(examples_btn.click)]
            cleared = self.action(self.clear_images, [images], image_outputs).on(clear_btn.click)
            for event in added:
                chain(event, *after_images)
            chain(cleared, *after_images, inspect_tab.runners["similarity"])
            for event, runner in ((e, r) for e in (*added, cleared) for r in shared.on_images):
                runner.after(event)
            self.wire_model_switch(shared, inspect_tab.runners["status"], inspect_tab.after_model)
            inspect_tab.runners["status"].on(demo.load)
            restore = self.action(self.restore_session, [saved], [*image_outputs, model], own_queue=True)
            chain(restore.on(demo.load), *after_images[1:])
            gr.api(ui_errors(inspect_tab.api_patch_features), api_name="patch_features", **self.views_queue.options())
            demo.unload(self.end_session)
        return demo

    @staticmethod
    def wire_model_switch(shared: SharedControls, status: Runner, views: list[Runner]) -> None:
        """A change of any model control loads the model (or puts the controls back: see `switch`), then refreshes
        ``views`` in order and, alongside, what the tabs registered in ``shared.on_model``. Typed values (a weights
        path, a resolution) count once entered or left, not at each keystroke (a half-typed one would be refused and
        reset)."""
        for component in shared.model_inputs:
            typed = isinstance(component, (gr.Textbox, gr.Number))
            for trigger in (component.submit, component.blur) if typed else (component.change,):
                event = status.on(trigger)
                chain(event, *views)
                for runner in shared.on_model:
                    runner.after(event)


def build_app(config: AppConfig | None = None, concurrency: int = 1,
              limits: WorkLimits | None = None) -> tuple[gr.Blocks, PatchLensApp]:
    config = config or AppConfig()
    config.default_model = config.default_model or default_model_name()
    app = PatchLensApp(config, concurrency, limits)
    return app.build(), app


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, allow_dirs: list[str] | None = None,
          max_upload_mb: float = 50.0, concurrency: int = 1, max_models: int = 4, cache_mb: float | None = None,
          block: bool = True, max_forward_passes: int | None = None) -> gr.Blocks:
    """Serve the app on host:port (by default this machine only); ``block=False``: return once it answers."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limit_malloc_arenas()  # many worker threads: without a cap, freed memory stays in per-thread arenas
    import_before_threads()
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
    limits = WorkLimits(forward_passes=max_forward_passes) if max_forward_passes else WorkLimits()
    demo, app = build_app(config, concurrency, limits)
    log.info("default model: %s", config.default_model)
    if os.environ.get("PATCHLENS_UMAP_WARM_UP", "1") != "0":
        UMAP_WARM_UP.start()  # the first map then comes as fast as the next ones
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024),
                show_error=True, prevent_thread_lock=not block, quiet=not block, theme=gr.themes.Soft(),
                allowed_paths=[str(app.export_dir)], **launch_options())  # launch_options: no 3-s self-check
    return demo
