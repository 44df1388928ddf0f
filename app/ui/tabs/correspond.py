"""The Best buddies tab: two of the loaded images, their mutual nearest patches drawn as lines."""
from __future__ import annotations

import gradio as gr

from app.ui.app import PatchLensApp
from app.ui.state import LoadedImage
from app.ui.wiring import SharedControls, find_image
from app.views import inspect as inspect_views
from app.views.correspond import best_buddies_view
from app.views.result import ViewResult

HELP = """**Best buddies** (dino-vit-features): patch *a* of image A and patch *b* of image B are best buddies when
*b* is *a*'s most similar patch in B and *a* is *b*'s most similar patch in A. Such mutual matches are few and
reliable: lines join them, most similar first. Choose two of the loaded images (add them above); the tokens are
those chosen in Inspect (*Tokens from*, *Facet*: dino-vit-features uses the key facet of a late block)."""


class CorrespondTab:
    def __init__(self, app: PatchLensApp):
        self.app = app

    def choices(self, images: list[LoadedImage], first: str | None, second: str | None) -> tuple:
        """The image choosers after the loaded images changed: the choices kept where still loaded, else the first
        two images."""
        names = [i.name for i in images]
        kept = [n for n in (first, second) if n in names]
        fallback = [n for n in names if n not in kept]
        first, second = (kept + fallback + [None, None])[:2]
        return gr.update(choices=names, value=first), gr.update(choices=names, value=second or first)

    def run(self, images: list[LoadedImage], first: str | None, second: str | None, top: float, layer: str,
            facet: str, *model_args: object) -> ViewResult:
        chosen = [find_image(images, first), find_image(images, second)]
        if None in chosen:  # none loaded yet, or the choosers not yet following the loaded images
            return ViewResult(notes="Choose image A and image B among the loaded images (add them above).")
        return best_buddies_view(self.app.encoder(*model_args), [i.image for i in chosen], [i.name for i in chosen],
                                 int(top), inspect_views.parse_layer(layer), facet)

    def build(self, shared: SharedControls, layer: gr.Dropdown, facet: gr.Dropdown) -> CorrespondTab:
        with gr.Tab("Best buddies", id="buddies"):
            gr.Markdown(HELP)
            with gr.Row():
                first = gr.Dropdown([], label="Image A", elem_id="buddies-a")
                second = gr.Dropdown([], label="Image B", elem_id="buddies-b")
                top = gr.Slider(1, 200, 30, step=1, label="Show the top N", elem_id="buddies-top")
            lines = gr.Image(label="Best buddies", interactive=False, format="png", elem_id="buddies-lines")
            info = gr.Markdown(elem_id="buddies-info")
            numbers = gr.File(label="Pairs and their cosines (.npz)", elem_id="buddies-export")
        runner = self.app.view(self.run, [shared.images, first, second, top, layer, facet, *shared.model_inputs],
                               {"lines": lines, "markdown": info, "numbers": numbers})
        for control in (first, second, top, layer, facet):
            runner.on(control.change)
        shared.on_images.append(self.app.action(self.choices, [shared.images, first, second], [first, second]))
        shared.on_model.append(runner)
        return self
