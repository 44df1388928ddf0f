"""The Lab tab: the papers' claims measured on chosen encoders over held-out parts-world scenes."""
from __future__ import annotations

import gradio as gr

from app.ui.app import PatchLensApp
from app.ui.wiring import SharedControls, model_choices, progress_callback
from app.views import lab as views
from app.views.result import ViewResult
from ssl_core.lab import LabConfig
from ssl_core.models.registry import bundled_names

HELP = """**The papers' claims, measured.** On held-out parts-world scenes (generated, with ground-truth objects
and parts; never seen in training): object-level vs part-level linear probes (part-aware SSL: contrastive learning
is part-to-whole, MIM part-to-part), k-NN from the class token, the mean of patch tokens and a bag of crops (BagSSL),
a probe that detects tokens given a wrong position embedding (DILEMMA), k-means part maps against the ground truth
(adjusted Rand index), where the heads look (attention distance and query-key NMI per block: MIM local and
query-specific, contrastive global and alike), and CKA (the SimCLR-vs-supervised study). Each result shows its sample
sizes and seed. The bundled models had a small CPU budget: see `docs/lab.md` for the full table and what holds.
*Layer sweep*: one encoder's blocks side by side (part probe, part-map ARI, cos(class token, mean patch), CKA to the
last block, attention distance and NMI)."""


class LabTab:
    def __init__(self, app: PatchLensApp):
        self.app = app

    def run(self, models: list[str] | None, measure: str, n_train: float | None, n_test: float | None,
            seed: float | None, request: gr.Request, progress: gr.Progress = gr.Progress()) -> ViewResult:
        config = views.lab_config(n_train or 1, n_test or 1, seed or 0)
        names = [name for name in (models or []) if name]
        self.app.limits.check(f"The Lab on {len(names)} encoder(s) over {config.n_train + config.n_test:,} scenes",
                              len(names) * (config.n_train + config.n_test),
                              "Choose fewer scenes or fewer encoders.", limit=self.app.limits.lab_scenes)
        encoders = {name: self.app.pool.get(name) for name in names}
        return views.measure_view(encoders, measure, config, progress_callback(progress, "measuring"))

    def build(self, shared: SharedControls) -> LabTab:
        with gr.Tab("Lab", id="lab"):
            gr.Markdown(HELP)
            with gr.Row():
                models = gr.Dropdown(model_choices(), value=bundled_names() or [self.app.config.default_model],
                                     multiselect=True, label="Encoders", allow_custom_value=True, elem_id="lab-models",
                                     scale=3)
                measure = gr.Dropdown(list(views.MEASURES), value=views.PROBES[0], label="Measure", elem_id="lab-probe",
                                      scale=2)
            with gr.Row():
                n_train = gr.Number(LabConfig.n_train, precision=0, label="Scenes to fit on")
                n_test = gr.Number(LabConfig.n_test, precision=0, label="Scenes to score on")
                seed = gr.Number(LabConfig.seed, precision=0, label="Seed")
                run = gr.Button("Run", variant="primary", elem_id="lab-run")
                stop = gr.Button("Stop", variant="stop", elem_id="lab-stop")
            text = gr.Markdown(elem_id="lab-result")  # what holds, or a probe's cross-model table; then the pictures
            with gr.Row():  # no floating labels: they would hide the first row's captions (which name the encoder)
                location = gr.Image(label="Location probe: swapped patches boxed, P(swapped)", interactive=False,
                                    format="png", elem_id="lab-location", visible=False, show_label=False)
                part_map = gr.Image(label="Scene · ground-truth parts · k-means parts", interactive=False, format="png",
                                    elem_id="lab-parts", visible=False, show_label=False)
            cka = gr.Plot(label="CKA", elem_id="lab-cka", visible=False)
            layers = gr.Plot(label="Layer sweep: per block", elem_id="lab-layers", visible=False)
            details = gr.Markdown(elem_id="lab-details")  # each encoder's own table
            with gr.Row():
                numbers = gr.File(label="The numbers (.json)", elem_id="lab-json")
                layers_png = gr.File(label="Layer sweep (PNG)", elem_id="lab-layers-png", visible=False)
                layers_html = gr.File(label="Layer sweep (HTML)", elem_id="lab-layers-html", visible=False)

        runner = self.app.job("Lab", self.run, [models, measure, n_train, n_test, seed], {
            "markdown": text, "location": location, "part_map": part_map, "cka": cka, "details": details,
            "numbers": numbers, "layers": layers, "layer_sweep.png": layers_png, "layer_sweep.html": layers_html},
            hidden_when_empty=("location", "part_map", "cka", "layers", "layer_sweep.png", "layer_sweep.html"))
        self.app.stoppable(runner, run.click, stop)
        return self
