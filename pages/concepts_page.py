"""Concepts page: what the classifier's neurons respond to (MAMMI), and which of them drive this case's finding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import layout, state
from xai_core.errors import XaiError
from xai_core.overlay import blend

TOP_K = 6


def _chips(concepts: list[tuple[str, float]], uncertain: bool) -> str:
    """A neuron's first concepts as inline code chips."""
    text = " · ".join(f"`{name}`" for name, _ in concepts[:4]) or "—"
    return text + (" (uncertain)" if uncertain else "")


def _histogram(record) -> go.Figure:
    edges = np.array(record.histogram["edges"])
    figure = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=record.histogram["counts"],
                              width=np.diff(edges), marker_color="#90a4ae"))
    figure.add_vline(x=record.stats["threshold"], line_dash="dash", line_color="#d32f2f",
                     annotation_text="representative threshold")
    figure.update_layout(height=220, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis_title="activation over the probing set", yaxis_title="images")
    return figure


def _case_section(model: str) -> None:
    st.subheader("This case: the neurons behind the finding")
    case = state.current_case()
    if case is None:
        st.info("Load a case on the Case page to see which neurons drive its findings.")
        return
    prediction = state.prediction_or_message(case, model)
    if prediction is None:
        return
    labels = list(prediction.labels)
    state.ensure_target(prediction)
    st.selectbox("Finding", labels, key="target", help="The same finding as on the other pages.")
    target = st.session_state["target"]
    engine = state.engine()
    try:
        with st.spinner("Ranking neurons…"):
            top = engine.top_neurons(case, model, target, k=TOP_K)
            pixels = engine.input_image(case, model)
    except XaiError as exc:
        st.error(f"Neuron contributions are not available here: {exc}")
        return
    st.caption(f"Contribution = the neuron's weight in the {target} logit x its pooled activation on this image.")
    columns = st.columns(TOP_K)
    for i, neuron in enumerate(top):
        with columns[i % TOP_K]:
            st.image(blend(pixels, neuron["map"], 0.5), width="stretch",
                     caption=f"neuron {neuron['neuron']}: contribution {neuron['contribution']:+.3f}")
            st.markdown(_chips(neuron["concepts"], neuron["uncertain"]) if neuron["concepts"]
                        else "no annotation for this model")


def _browser(model: str, target: str | None) -> None:
    st.subheader("Neuron browser")
    layers = [layer for layer in ("features", "output") if state.annotation_store(model, layer) is not None]
    if not layers:
        st.info(f"No neuron annotation is stored for {model}. Compute one with `python -m xai_core annotate-neurons "
                f"--model {model} --layer features --vlm demo-clip --concepts demo` (and `--layer output`).")
        return
    c1, c2, c3 = st.columns([1, 2, 1])
    with c1:
        if st.session_state.get("concept_layer") not in layers:
            st.session_state["concept_layer"] = layers[0]
        layer = st.radio("Layer", layers, key="concept_layer", horizontal=True)
    store = state.annotation_store(model, layer)
    meta = store.meta()
    with c2:
        query = st.text_input("Search concepts", key="concept_query", placeholder="e.g. effusion")
    with c3:
        orders = ["max activation"] + ([f"weight for {target}"] if target else [])
        if st.session_state.get("concept_order") not in orders:
            st.session_state["concept_order"] = orders[0]
        order = st.selectbox("Sort by", orders, key="concept_order")
    records = store.neurons()
    if query.strip():
        wanted = set(store.search(query))
        records = [r for r in records if r.neuron in wanted]
    if order.startswith("weight") and target:
        records.sort(key=lambda r: -r.weights.get(target, 0.0))
    else:
        records.sort(key=lambda r: -r.stats["max"])
    st.caption(f"{meta['layer_path']} of {meta['model']}: {meta['n']} probing images ({meta['probe']}), "
               f"{len(meta['concepts'])} concepts ({meta['concept_set']}), matched in {meta['vlm']}; "
               f"p = {meta['percentile']}, beta = {meta['beta']}.")
    if meta.get("validation"):
        st.caption("Output-layer check: " + ", ".join(f"{k} {v:.2f}" for k, v in meta["validation"].items()))
    if not records:
        st.warning(f"No neuron has a concept matching '{query}'.")
        return
    table = pd.DataFrame([{
        "neuron": r.neuron, "name": r.name, "concepts": ", ".join(r.concepts[:4]),
        "top score": r.scores[0] if r.scores else np.nan, "uncertain": r.uncertain,
        "max activation": r.stats["max"], **({f"weight {target}": r.weights.get(target)} if target else {}),
    } for r in records])
    st.dataframe(table, hide_index=True, width="stretch", height=260)
    chosen = st.selectbox("Neuron", [r.neuron for r in records], key="concept_neuron",
                          format_func=lambda n: f"{n}: {next(r for r in records if r.neuron == n).name}")
    record = store.neuron(int(chosen))
    left, right = st.columns([1, 2])
    with left:
        st.markdown("**Concepts** " + ("(uncertain: no concept scored above the baseline)" if record.uncertain
                                       else ""))
        st.dataframe(pd.DataFrame({"concept": record.concepts, "score": record.scores}), hide_index=True,
                     width="stretch")
        st.plotly_chart(_histogram(record), width="stretch", key="activation_histogram")
    with right:
        st.markdown(f"**Representative images** ({len(record.representatives)}, most active first)")
        thumbs = [(i, store.thumbnail(i)) for i in record.representatives[:12]]
        grid = st.columns(6)
        for k, (image_id, png) in enumerate(thumbs):
            with grid[k % 6]:
                if png:
                    st.image(png, caption=image_id.split("-")[-1], width="stretch")


def render() -> None:
    """The Concepts page."""
    layout.start("Concepts")
    model = state.current_model()
    problem = state.model_problem(model)
    if problem:
        st.error(problem, icon=":material/error:")
        return
    _case_section(model)
    st.divider()
    _browser(model, st.session_state.get("target"))


render()
