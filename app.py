"""Entry point: `streamlit run app.py` — sign-in and the navigation.

Only light imports here, so the real navigation reaches the browser at once; each page starts with
`ui.layout.start`, which draws the shared sidebar (model picker, card, device, case) and the case header. The page
files live in pages/ but Streamlit's legacy pages/ discovery stays hidden (client.showSidebarNavigation = false in
.streamlit/config.toml; the navigation sits at the top).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import access

ICON = Path(__file__).resolve().parent / "ui" / "icon.png"  # a local file: no icon font or emoji CDN is fetched
ABOUT = ("Explainable chest X-ray review dashboard. Research software: not a medical device. The bundled demo "
         "models are trained on synthetic radiographs and are not for clinical use.")

st.set_page_config(page_title="Chest X-ray XAI", page_icon=str(ICON), layout="wide",
                   menu_items={"Get help": None, "Report a bug": None, "About": ABOUT})

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
    st.Page("pages/pacs_page.py", title="PACS worklist", icon=":material/dns:", url_path="pacs"),
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

# Page modules are named *_page.py: a pages/<name>.py file whose name equals a url_path confuses Streamlit's
# legacy pages/ discovery (AppTest then renders nothing after a widget change).
st.navigation(pages, position="top").run()
