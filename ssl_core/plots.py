"""Plotly figures for the patch analyses (built from result dataclasses; no analysis here)."""
from __future__ import annotations

from .bagssl import BagOfCrops, LayerAgreement


def bag_of_crops_figure(results: dict[str, BagOfCrops]):
    """cos(mean of crop embeddings, image embedding) against crop size, one line per model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, result in results.items():
        labels = [f"{s}px" for s in result.crop_sizes[:-1]] + [f"full ({result.crop_sizes[-1]}px)"]
        fig.add_trace(go.Scatter(x=result.crop_sizes, y=result.cosine, mode="lines+markers", name=name,
                                 text=[f"{l}: {n} crops" for l, n in zip(labels, result.num_crops)],
                                 hovertemplate="%{text}<br>cosine %{y:.3f}<extra>" + name + "</extra>"))
    fig.update_layout(title="Bag of crops vs the full image", xaxis_title="crop size (px of the model's input)",
                      yaxis_title="cosine to the image embedding", yaxis_range=[-1.05, 1.05],
                      template="plotly_white", height=360, margin=dict(l=50, r=20, t=50, b=50))
    return fig


def layer_agreement_figure(results: dict[str, LayerAgreement]):
    """cos(image embedding, mean of patch tokens) per block, one line per model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, result in results.items():
        x = [_layer_label(l) for l in result.layers]
        fig.add_trace(go.Scatter(x=x, y=result.cosine, mode="lines+markers", name=name))
    fig.update_layout(title="Image embedding vs mean of patch tokens, per block", xaxis_title="block",
                      yaxis_title="cosine", yaxis_range=[-1.05, 1.05], template="plotly_white", height=360,
                      margin=dict(l=50, r=20, t=50, b=50))
    return fig


def _layer_label(layer: int) -> str:
    return "final" if layer == -1 else str(layer)

