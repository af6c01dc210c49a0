"""Administration page (researchers and admins): the models, the case store's health and backups, the users."""

from __future__ import annotations

import datetime

import streamlit as st

from ui import access, layout, state
from xai_core import auth
from xai_core.errors import InputError, StoreError


def _models() -> None:
    st.subheader("Models")
    st.caption(f"Device: {state.engine().device}. Loaded in this server process: "
               f"{', '.join(state.engine().loaded_models()) or 'none yet'}.")
    model = state.current_model()
    problem = state.model_problem(model)
    if problem:
        st.error(problem, icon=":material/error:")
    else:
        st.success(f"{model} is ready.", icon=":material/check:")
    st.json(state.card_summary(model), expanded=False)


def _store(user: auth.User) -> None:
    st.subheader("Case store")
    store = state.store_or_message()
    if store is None:
        return
    try:
        status = store.status()
    except StoreError as exc:
        st.error(state.store_message(exc), icon=":material/database:")
        return
    if not user.can("admin"):
        status.pop("path")
    st.dataframe({"property": list(status), "value": [str(v) for v in status.values()]}, hide_index=True)
    if status["integrity"] != "ok":
        st.error("The integrity check failed: back up what can be read, then restore the latest good backup.")
    if user.can("admin"):
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        st.download_button("Download a backup (SQLite file)", store.backup_bytes, file_name=f"cases-{stamp}.sqlite",
                           mime="application/vnd.sqlite3", key="store_backup", icon=":material/download:",
                           help="A consistent copy made with SQLite's backup API while the store stays in use. "
                                "From the command line: python -m xai_core store-backup DEST.")


def _users() -> None:
    st.subheader("Users")
    path = auth.users_file()
    if path is None:
        st.info("No users file: the dashboard runs in local single-user mode (loopback only). Create one with "
                "`python -m xai_core add-user NAME --role admin` and set XAI_USERS_FILE to require sign-in.")
        return
    try:
        users = auth.list_users(path)
    except InputError as exc:
        st.error(str(exc))
        return
    st.dataframe([{"user": u.username, "name": u.name, "role": u.role,
                   "sign-in": "password" if u.source == "password" else "identity provider"} for u in users],
                 hide_index=True)
    st.caption("Add or change users with `python -m xai_core add-user NAME --role reviewer|researcher|admin`.")


def render() -> None:
    """The Administration page."""
    user = access.require("models")
    layout.start("Administration", uses_finding=False)
    _models()
    _store(user)
    if user.can("admin"):
        _users()


render()
