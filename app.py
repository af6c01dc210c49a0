"""Entry point: `streamlit run app.py` — navigation and the shared sidebar."""

from __future__ import annotations

import streamlit as st

from ui import state
from xai_core.imaging import to_png_bytes

st.set_page_config(page_title="Chest X-ray XAI", page_icon=":material/radiology:", layout="wide")

pages = [
    st.Page("pages/case.py", title="Case", icon=":material/radiology:", default=True),
]

with st.sidebar:
    st.header("Chest X-ray XAI")
    models = state.available_models()
    st.selectbox("Model", models, key="model", on_change=state.reset_dependent_state,
                 index=models.index(state.current_model()))
    card = state.card_summary(state.current_model())
    with st.expander("Model card"):
        st.json(card, expanded=False)
    st.caption(f"Device: {state.engine().device}")
    case = state.current_case()
    if case is not None:
        st.image(to_png_bytes(case.pixels), caption=case.source_name, width=160)

st.navigation(pages).run()
