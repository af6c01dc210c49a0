"""Entry point: `streamlit run app.py` — sign-in, navigation and the shared sidebar."""

from __future__ import annotations

import streamlit as st

from ui import access, state
from xai_core.imaging import to_png_bytes

st.set_page_config(page_title="Chest X-ray XAI", page_icon=":material/radiology:", layout="wide")

# Nobody signed in (or nobody may be, see ui/access.py): the sign-in page is the only page.
user = access.current_user()
if user is None:
    st.session_state.pop(access.SESSION_USER, None)
    st.navigation([st.Page(access.login_page, title="Sign in", icon=":material/login:", url_path="sign-in")],
                  position="hidden").run()
    st.stop()
st.session_state[access.SESSION_USER] = user

pages = [
    st.Page("pages/case_page.py", title="Case", icon=":material/radiology:", url_path="case", default=True),
    st.Page("pages/explain_page.py", title="Explain", icon=":material/visibility:", url_path="explain"),
    st.Page("pages/refine_page.py", title="Refine & certainty", icon=":material/filter_center_focus:",
            url_path="refine"),
    st.Page("pages/concepts_page.py", title="Concepts", icon=":material/psychology:", url_path="concepts"),
    st.Page("pages/review_page.py", title="Review", icon=":material/rate_review:", url_path="review"),
]
if user.can("evaluate"):
    pages.insert(4, st.Page("pages/evaluate_page.py", title="Evaluate", icon=":material/analytics:",
                            url_path="evaluate"))
if user.can("models"):
    pages.append(st.Page("pages/admin_page.py", title="Administration", icon=":material/admin_panel_settings:",
                         url_path="admin"))

with st.sidebar:
    st.header("Chest X-ray XAI")
    access.sidebar_identity(user)
    models = state.available_models()
    st.selectbox("Model", models, key="model", on_change=state.reset_dependent_state)
    card = state.card_summary(state.current_model())
    with st.expander("Model card"):
        st.json(card, expanded=False)
    st.caption(f"Device: {state.engine().device}")
    current = state.current_case()
    if current is not None:  # the file name is shown in this session only; others see the shared name
        st.image(to_png_bytes(current.pixels), caption=current.source_name, width=160)

# Page modules are named *_page.py: a pages/<name>.py file whose name equals a url_path confuses Streamlit's
# legacy pages/ discovery (AppTest then renders nothing after a widget change).
st.navigation(pages).run()
