"""What every tab wires with: the one error wrapper, runners and their chains, the shared controls, progress
adapters, the click on a picture, and a model switch that puts the controls back when it fails."""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
from gradio.components import Component

from app.ui.jobs import Queue
from app.ui.state import LoadedImage
from app.views.result import Click
from ssl_core.errors import BadRequest, PatchLensError
from ssl_core.models.registry import all_specs
from ssl_core.progress import ProgressFn

log = logging.getLogger("patchlens")


def ui_errors(fn: Callable) -> Callable:
    """A `PatchLensError` is shown as its message; anything else is a bug: a short message, traceback logged."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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


def gradio_upload_folder() -> Path:
    """Where Gradio keeps every session's uploads: $GRADIO_TEMP_DIR (documented), else <tmp>/gradio."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def model_choices() -> list[tuple[str, str]]:
    """(label, name) of every model to offer, grouped by family in the registry's order of first appearance, each
    labelled "Family · name" (the value is the name, which `app.access` checks like a typed one)."""
    specs = [s for s in all_specs() if s.source != "bundled" or s.trained]
    families = list(dict.fromkeys(s.family for s in specs))
    ordered = sorted(specs, key=lambda s: families.index(s.family))  # stable: the registry's order within a family
    return [(f"{s.family or 'other'} · {s.display_name}", s.name) for s in ordered]


def progress_callback(progress: gr.Progress, desc: str) -> ProgressFn:
    return lambda done, total: progress((done, total), desc=desc)


class StagedProgress:
    """A progress callback (done, total) whose description follows the stage a long step reports (`stage`)."""

    def __init__(self, progress: gr.Progress, desc: str):
        self.progress, self.desc = progress, desc
        self.last: float | tuple[int, int] = 0.0  # Gradio shows a description only with a progress value

    def stage(self, desc: str) -> None:
        self.desc = desc
        self.progress(self.last, desc=desc)

    def __call__(self, done: int, total: int) -> None:
        self.last = (done, total)
        self.progress(self.last, desc=self.desc)


def clicked(picture: np.ndarray | None, evt: gr.SelectData) -> Click:
    """A select event on a displayed picture as a `Click` (pixel position and the picture's size)."""
    if picture is None or evt is None or evt.index is None:
        raise BadRequest("Click on a picture.")
    height, width = np.asarray(picture).shape[:2]
    return Click(float(evt.index[0]), float(evt.index[1]), (height, width))


def switch(load: Callable[..., Any], values: list[Any], loaded: list[Any] | None, what: str) -> tuple[Any, list[Any]]:
    """Load a model from its controls' ``values``: (the model, no change to the controls); or, when that fails and
    another model is loaded, a warning and (None, the ``loaded`` values to put the controls back on)."""
    try:
        return load(*values), [gr.update() for _ in values]
    except PatchLensError as err:
        if not loaded or list(loaded) == list(values):
            raise
        gr.Warning(f"{err}\n\nThe {what} stays {loaded[0] or 'the default'}.")
        return None, list(loaded)


def find_image(images: list[LoadedImage], name: str | None) -> LoadedImage | None:
    return next((image for image in images if image.name == name), None)


@dataclass(frozen=True)
class Runner:
    """A callback with its input and output components, to be run on an event in a queue (`app.ui.jobs.Queue`)."""

    fn: Callable[..., Any]
    inputs: list[Component]
    outputs: list[Component]
    queue: Queue | None = None

    def on(self, trigger: Callable[..., Any]) -> Any:
        return trigger(self.fn, self.inputs, self.outputs, **self._options())

    def after(self, event: Any) -> Any:
        return event.success(self.fn, self.inputs, self.outputs, **self._options())

    def _options(self) -> dict[str, Any]:
        return self.queue.options() if self.queue is not None else {}


def chain(event: Any, *runners: Runner) -> Any:
    """Run ``runners`` one after another after an event, each only if the step before succeeded (one failure
    shows one message, and the other views keep what they showed)."""
    for runner in runners:
        event = runner.after(event)
    return event


@dataclass
class SharedControls:
    """The controls above the tabs, which every tab reads."""

    images: gr.State  # list[LoadedImage] of this session
    selected: gr.Dropdown  # the name of the image the single-image views show
    model: gr.Dropdown
    weights_upload: gr.File
    weights_path: gr.Textbox
    image_size: gr.Number
    model_info: gr.Markdown
    grid: gr.Checkbox  # draw the patch grid on the pictures
    loaded: gr.State  # the model inputs of the encoder last loaded: a failed switch returns the controls to them
    on_model: list[Runner]  # run after each switch of model (a tab adds its own)
    on_images: list[Runner]  # run after the loaded images change

    @property
    def model_inputs(self) -> list[Component]:
        """The inputs of `PatchLensApp.encoder`, in its order."""
        return [self.model, self.weights_upload, self.weights_path, self.image_size]

    @property
    def grid_and_model(self) -> list[Component]:
        """The patch-grid toggle, then the model inputs: the last inputs of the views that draw maps."""
        return [self.grid, *self.model_inputs]


def readout_plot(elem_id: str, what: str = "each patch") -> gr.Plot:
    """The plot that shows a view's scalar maps as heatmaps to hover: patch row, column and value."""
    return gr.Plot(label=f"Hover readout: row, column and value of {what}", elem_id=elem_id)
