"""Concepts page: what the classifier's neurons respond to (MAMMI), and which of them drive this case's finding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import concepts, layout, state
from xai_core.errors import XaiError
from xai_core.mammi import band_percent, margin_percent
from xai_core.overlay import blend

TOP_K = 6
GRID = 6  # representative images per row
SCROLL_AFTER = 3 * GRID  # more representatives than this scroll inside a box of their own
TABLE_KEY = "concept_table"
SEEN_KEY = "concept_table_seen"  # the table rows as this page last drew them (tells a click from a stale selection)
LAYER_NAMES = {"features": "Last feature layer", "output": "Output layer (one neuron per finding)"}
SPLITS = {"train": "training", "val": "validation", "test": "test"}
UNCERTAIN_NOTE = ("Uncertain concepts: no word from the reports matched this neuron's images better than a plain "
                  "description of a chest X-ray, so the words shown are only its closest guesses.")
UNCERTAIN_SHORT = "Uncertain: closest guesses only."


def _words(concepts: list[str] | tuple[str, ...], limit: int = 4) -> str:
    """A neuron's first concepts as inline chips."""
    return " · ".join(f"`{name}`" for name in concepts[:limit]) or "—"


def _histogram(record) -> go.Figure:
    edges = np.array(record.histogram["edges"])
    figure = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=record.histogram["counts"],
                              width=np.diff(edges), marker_color="#90a4ae"))
    figure.add_vline(x=record.stats["threshold"], line_dash="dash", line_color="#d32f2f",
                     annotation_text="representatives from here")
    figure.update_layout(height=220, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis_title="how strongly the neuron responds", yaxis_title="probing images")
    return figure


# --- this case ---------------------------------------------------------------------------------------------------
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
            feature_layer = engine.model(model).card.feature_layer
    except XaiError as exc:
        st.error(f"Neuron contributions are not available here: {exc}")
        return
    st.caption(f"The {len(top)} neurons that push the model most towards {target} on this image. Each picture shows "
               f"where that neuron responds (red: strongest); its contribution says how much it adds to the "
               f"model's score for {target} (positive: towards the finding).",
               help=f"Contribution = the neuron's weight in the {target} logit x its activation on this image "
                    f"averaged over the image (global average pooling of {feature_layer}, after its ReLU). The "
                    f"activation maps are upsampled bilinearly and scaled to their own peak.")
    sets = [tuple(name for name, _ in neuron["concepts"]) for neuron in top]
    shared = len(top) > 1 and all(sets) and len(set(sets)) == 1
    if shared:
        st.info(f"These {len(top)} neurons share one concept set: {_words(sets[0], 8)}. They are different neurons "
                f"that respond to the same kind of image; where they respond, and how much, differs.",
                icon=":material/link:")
        if all(neuron["uncertain"] for neuron in top):
            st.warning(UNCERTAIN_NOTE, icon=":material/help:")
    columns = st.columns(TOP_K)
    for i, neuron in enumerate(top):
        with columns[i % TOP_K]:
            st.image(blend(pixels, neuron["map"], 0.5), width="stretch",
                     caption=f"Neuron {neuron['neuron']}: contribution {neuron['contribution']:+.2f}")
            if not neuron["concepts"]:
                st.caption("No concept annotation for this model.")
                continue
            if not shared:
                st.markdown(_words(sets[i]))
                same = [str(other["neuron"]) for j, other in enumerate(top) if j != i and sets[j] == sets[i]]
                if same:
                    st.caption(f"Same concepts as neuron {', '.join(same)}.")
                if neuron["uncertain"]:
                    st.caption(f":warning: {UNCERTAIN_SHORT}", help=UNCERTAIN_NOTE)


# --- the browser -------------------------------------------------------------------------------------------------
def _described(meta: dict, n_neurons: int) -> tuple[str, str]:
    """(plain-language summary, the exact parameters) of an annotation."""
    model = "the demo model" if meta["model"] == "demo" else meta["model"]
    layer = LAYER_NAMES.get(meta["layer"], meta["layer"])
    split = str(meta["probe"]).partition("phantom:")[2]
    probe = (f"{meta['n']} synthetic {SPLITS.get(split, split)} radiographs" if split
             else f"{meta['n']} radiographs of a local folder")
    reports = "the synthetic radiology reports" if meta["concept_set"] == "demo" else "the radiology reports"
    vlm = "the demo image-text model" if meta["vlm"] == "demo-clip" else "an image-text model"
    summary = (f"{layer} of {model} ({n_neurons} neurons). A neuron's representatives are the probing images "
               f"({probe}) where it responds in its top {band_percent(meta['percentile']):g}% (the rule's "
               f"percentile: the top of the range from its weakest to its strongest response), strongest first. Its "
               f"concepts are the words from {reports} ({len(meta['concepts'])} terms) that {vlm} finds closest to "
               f"those images, within {margin_percent(meta['beta']):g}% of the best match.")
    details = (f"{meta['layer_path']} of {meta['model']}: {meta['n']} probing images ({meta['probe']}), "
               f"{len(meta['concepts'])} concepts ({meta['concept_set']}), matched in {meta['vlm']}; "
               f"p = {meta['percentile']}, beta = {meta['beta']}, cap = {meta.get('cap')}. Representatives: "
               f"activation > max - (1 - p/100) x (max - min) over the probing set, at most cap, most active first. "
               f"Concepts: summed score S(c) > beta x max S, where S(c) adds, over the representatives, "
               f"cos(image, 'A chest x-ray image of a <c>') - cos(image, 'A chest x-ray image of a').")
    return summary, details


def _validation(meta: dict) -> None:
    check = meta.get("validation")
    if not check:
        return
    st.caption(f"Check where the right answer is known: for {check['hit_rate']:.0%} of the findings, the output "
               f"neuron of the finding is named by the finding itself.",
               help="Output-layer validation (exact term match of the label among the neuron's concepts): "
                    + ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in check.items()
                                if isinstance(value, int | float)))


def _selected_neuron(ids: list[int]) -> int:
    """The chosen neuron, kept in session state: a click in the table picks its row's neuron; otherwise the kept
    choice (from the list or an earlier click) stands and the table's selection is moved to it."""
    rows = list(((st.session_state.get(TABLE_KEY) or {}).get("selection") or {}).get("rows") or [])
    chosen = st.session_state.get("concept_neuron")
    if rows and rows != st.session_state.get(SEEN_KEY) and rows[0] < len(ids):
        chosen = ids[rows[0]]
    if chosen not in ids:
        chosen = ids[0]
    st.session_state["concept_neuron"] = chosen
    wanted = [ids.index(chosen)]
    if rows != wanted:
        st.session_state[TABLE_KEY] = {"selection": {"rows": wanted}}
    st.session_state[SEEN_KEY] = wanted
    return chosen


def _table(records: list, layer: str, target: str | None) -> None:
    weight = f"Pull towards {target}" if target else None
    table = pd.DataFrame([{
        "Neuron": r.neuron, **({"Finding": r.name} if layer == "output" else {}),
        "Concepts": ", ".join(r.concepts[:4]), "Match score": r.scores[0] if r.scores else np.nan,
        "Certain": "uncertain" if r.uncertain else "yes", "Representatives": len(r.representatives),
        "Strongest response": r.stats["max"], **({weight: r.weights.get(target)} if weight else {}),
    } for r in records])
    config = {
        "Neuron": st.column_config.NumberColumn(help="The neuron's number (channel) in its layer.", format="%d"),
        "Concepts": st.column_config.TextColumn(help="Words from the reports that match the images this neuron "
                                                     "responds to most (best first)."),
        "Match score": st.column_config.NumberColumn(
            help="How much closer its representatives are to the best concept than to a plain chest X-ray "
                 "description, summed over them (adaptive cosine score S(c)).", format="%.2f"),
        "Certain": st.column_config.TextColumn(help="'uncertain': no concept matched better than a plain "
                                                    "description; the words are closest guesses."),
        "Representatives": st.column_config.NumberColumn(help="How many probing images the rule picked."),
        "Strongest response": st.column_config.NumberColumn(
            help="Its highest activation over the probing set.", format="%.2f"),
    }
    if weight:
        config[weight] = st.column_config.NumberColumn(
            help=f"The neuron's weight in the model's score (logit) for {target}: positive pushes towards it.",
            format="%+.3f")
    st.dataframe(table, hide_index=True, width="stretch", height=260, key=TABLE_KEY, on_select="rerun",
                 selection_mode="single-row", column_config=config)


def _representatives(model: str, layer: str, record, store) -> None:
    meta = store.meta()
    count, cap = len(record.representatives), meta.get("cap")
    if not count:
        st.markdown("**No representative images**: this neuron responds the same to every probing image.")
        return
    overlay = st.toggle("Show where the neuron responds", value=True, key="concept_overlay",
                        help="Overlays the neuron's activation map, upsampled to each image (red: strongest, on "
                             "one scale for all of this neuron's images). Off: the plain images.")
    opacity = float(st.session_state.get("opacity", 0.5)) if overlay else 0.0
    with st.spinner("Drawing the representative images…"):
        images = concepts.neuron_overlays(model, layer, record.neuron, meta["probe"], record.representatives,
                                          opacity)
    note = f" At most {cap} are kept per neuron." if cap and count >= cap else ""
    if images is None:  # the probing images are not on this machine: the stored thumbnails, without overlays
        shown = [(k, png) for k, png in enumerate(store.thumbnail(i) for i in record.representatives) if png]
        st.markdown(f"**{count} representative images (showing {len(shown)} of {count})**, strongest first.{note}",
                    help="The probing images are not on this server: stored thumbnails, without the overlay.")
    else:
        shown = list(enumerate(images))
        st.markdown(f"**{count} representative images (all shown)**, strongest first.{note}",
                    help="The rule's representatives of this neuron, as stored in its annotation; the response "
                         "under each image is its activation (the layer's value averaged over the image).")
    box = st.container(height=560) if len(shown) > SCROLL_AFTER else st.container()
    with box:
        grid = st.columns(GRID)
        for slot, (k, png) in enumerate(shown):
            with grid[slot % GRID]:
                st.image(png, caption=f"{k + 1}. response {record.activations[k]:.2f}", width="stretch")


def _on_layer_change() -> None:
    st.session_state.pop("concept_neuron", None)  # neuron numbers of another layer name other neurons


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
        layer = st.radio("Layer", layers, key="concept_layer", horizontal=True, on_change=_on_layer_change,
                         format_func=lambda name: LAYER_NAMES.get(name, name).split(" (")[0],
                         help="Last feature layer: the model's internal detectors. Output layer: one neuron per "
                              "finding, where the right concept is known (a check of the method).")
    store = state.annotation_store(model, layer)
    meta = store.meta()
    with c2:
        query = st.text_input("Search concepts", key="concept_query", placeholder="e.g. effusion",
                              help="Neurons with a concept containing this text.")
    with c3:
        orders = ["strongest response"] + ([f"pull towards {target}"] if target else [])
        if st.session_state.get("concept_order") not in orders:
            st.session_state["concept_order"] = orders[0]
        order = st.selectbox("Sort by", orders, key="concept_order")
    records = store.neurons()
    summary, details = _described(meta, len(records))
    st.caption(summary, help=details)
    _validation(meta)
    if query.strip():
        wanted = set(store.search(query))
        records = [r for r in records if r.neuron in wanted]
    if order.startswith("pull") and target:
        records.sort(key=lambda r: -r.weights.get(target, 0.0))
    else:
        records.sort(key=lambda r: -r.stats["max"])
    if not records:
        st.warning(f"No neuron has a concept matching '{query}'.")
        return
    ids = [r.neuron for r in records]
    by_id = {r.neuron: r for r in records}
    _selected_neuron(ids)
    st.caption("Click a row to see that neuron, or pick it from the list below the table.")
    _table(records, layer, target)
    chosen = st.selectbox("Neuron", ids, key="concept_neuron", help="The same choice as a click in the table.",
                          format_func=lambda n: (f"{by_id[n].name} neuron" if layer == "output" else f"Neuron {n}")
                          + f": {', '.join(by_id[n].concepts[:3]) or 'no concept'}")
    record = by_id[int(chosen)]
    left, right = st.columns([1, 2])
    with left:
        st.markdown("**Concepts**", help="Best first; the score is the summed adaptive cosine score S(c) of the "
                                         "neuron's representatives.")
        if record.uncertain:
            st.warning(UNCERTAIN_NOTE, icon=":material/help:")
        st.dataframe(pd.DataFrame({"Concept": record.concepts, "Match score": record.scores}), hide_index=True,
                     width="stretch", column_config={"Match score": st.column_config.NumberColumn(format="%.2f")})
        st.plotly_chart(_histogram(record), width="stretch", key="activation_histogram")
    with right:
        _representatives(model, layer, record, store)


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
