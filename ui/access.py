"""Who uses this session: the serving policy, sign-in (users file or the identity provider), roles per page.

app.py calls `current_user()` on every run: a `User`, or None, and then serves only `login_page`. The rules
(xai_core.auth.access_mode): on a loopback address with no login configured the session is the local administrator;
a users file ($XAI_USERS_FILE) or an identity provider (secrets [auth], Streamlit's st.login) means everyone signs
in; on any other address without either, no page is served.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping

import streamlit as st

from xai_core import auth
from xai_core.auth import User
from xai_core.errors import InputError

SESSION_USER = "user"  # the signed-in User, for the pages (set by app.py on every run)
SIGNED_IN = "signed_in_as"  # the password login's user name (this session only)
_LOG = logging.getLogger("xai_dashboard")


def server_address() -> str:
    """The address the server binds ('' when server.address is unset: every interface)."""
    return str(st.get_option("server.address") or "")


def oidc_providers() -> list[str] | None:
    """The identity providers configured for st.login in secrets ("" is the unnamed default), or None when there
    is no [auth] section (or no readable secrets file)."""
    try:
        section = st.secrets.get("auth")
    except (FileNotFoundError, KeyError, TypeError, ValueError):  # no secrets.toml, or one that does not parse
        return None
    if not isinstance(section, Mapping):
        return None
    named = [name for name, value in section.items() if isinstance(value, Mapping)]
    return ([""] if "client_id" in section else []) + named


def authlib_installed() -> bool:
    """st.login needs the Authlib package."""
    return importlib.util.find_spec("authlib") is not None


@st.cache_resource(show_spinner=False)
def throttle() -> auth.LoginThrottle:
    """Failed sign-ins per user name, for the whole server process."""
    return auth.LoginThrottle()


def _policy() -> tuple[str, list[str] | None]:
    providers = oidc_providers()
    login = auth.users_file() is not None or providers is not None
    return auth.access_mode(server_address(), login_configured=login), providers


def _users() -> tuple[dict, str | None]:
    """The users file's table and the problem that makes it unusable (None when fine or not configured)."""
    path = auth.users_file()
    if path is None:
        return {}, None
    try:
        users = auth.load_users(path)
    except InputError as exc:
        return {}, str(exc)
    if not users and not path.exists():
        return {}, (f"XAI_USERS_FILE names a file that does not exist yet. Create it with `python -m xai_core "
                    f"add-user NAME --role admin` (the users file is {path.name}).")
    return users, None


def _oidc_claims() -> dict:
    return dict(st.user.to_dict())


@st.cache_resource(show_spinner=False)
def _warned() -> set[str]:
    return set()


def _warn_once(message: str) -> None:
    """A warning in the server log, once per server process."""
    if message not in _warned():
        _warned().add(message)
        _LOG.warning(message)


def current_user() -> User | None:
    """The user of this session under the serving policy, or None when nobody is signed in (or may be)."""
    mode, providers = _policy()
    if mode == "local":
        return auth.LOCAL_USER
    if mode == "refuse":
        return None
    users, problem = _users()
    if problem:
        return None
    if providers is not None:
        claims = _oidc_claims()
        if claims.get("is_logged_in") is True:
            return auth.oidc_user(claims, users)
    name = st.session_state.get(SIGNED_IN)
    entry = users.get(name) if isinstance(name, str) else None
    if entry and entry.get("password"):
        return User(name, entry["role"], "password", entry.get("name", ""))  # the role as the file says now
    st.session_state.pop(SIGNED_IN, None)
    return None


def _password_login() -> None:
    username = str(st.session_state.get("login_username") or "")
    password = str(st.session_state.get("login_password") or "")
    st.session_state.pop("login_error", None)
    wait = throttle().locked_for(username)
    if wait:
        st.session_state["login_error"] = (f"Too many failed sign-ins for this name: try again in "
                                           f"{math.ceil(wait / 60)} min.")
        return
    users, problem = _users()
    user = None if problem else auth.authenticate(users, username, password)
    if user is None:
        throttle().failed(username)
        st.session_state["login_error"] = "Unknown user name or wrong password."
        return
    throttle().succeeded(username)
    st.session_state[SIGNED_IN] = user.username


def login_page() -> None:
    """What a session that is not signed in sees: why no page is served, or the ways to sign in."""
    st.title("Chest X-ray XAI")
    mode, providers = _policy()
    if mode == "refuse":
        _warn_once("serving no pages: bound beyond loopback with no login configured (see the page for what to do)")
        st.error(auth.refusal_message(server_address()), icon=":material/lock:")
        return
    users, problem = _users()
    if problem:
        st.error(f"Sign-in is required here but the users file cannot be used: {problem}", icon=":material/lock:")
        return
    st.subheader("Sign in")
    if providers is not None:
        claims = _oidc_claims()
        if claims.get("is_logged_in") is True:
            who = str(claims.get("email") or claims.get("sub") or "this account")
            st.error(f"{who} is signed in with the identity provider but is not authorised for this dashboard. Ask "
                     "an administrator to add it (`python -m xai_core add-user EMAIL --role reviewer` without a "
                     "password), or sign out and use another account.", icon=":material/block:")
            if st.button("Sign out", key="oidc_sign_out"):
                st.logout()
            return
        if not providers:
            st.error("secrets [auth] names no identity provider (client_id, client_secret, server_metadata_url).")
        elif not authlib_installed():
            st.warning("Single sign-on is configured but the Authlib package (>= 1.3.2) is not installed on the "
                       "server; install it to use it.")
        for provider in providers:
            label = f"Sign in with {provider}" if provider else "Sign in with single sign-on"
            if st.button(label, key=f"oidc-{provider or 'default'}", type="primary",
                         disabled=not authlib_installed()):
                if provider:
                    st.login(provider)
                else:
                    st.login()
    if any(entry.get("password") for entry in users.values()):
        with st.form("login", clear_on_submit=True):
            st.text_input("User name", key="login_username", autocomplete="username")
            st.text_input("Password", type="password", key="login_password", autocomplete="current-password")
            st.form_submit_button("Sign in", type="primary", on_click=_password_login)
        if "login_error" in st.session_state:
            st.error(st.session_state["login_error"], icon=":material/error:")
    elif providers is None:
        st.info("The users file has no user with a password yet: add one with `python -m xai_core add-user NAME "
                "--role admin`.")


def _sign_out() -> None:
    st.session_state.pop(SIGNED_IN, None)


def sidebar_identity(user: User) -> None:
    """Who this session is, in the sidebar, with a way to sign out."""
    if user.source == "local":
        st.caption("Local single-user mode: served on this machine only (loopback) with no users file, so this "
                   "session is the local administrator. Set XAI_USERS_FILE (or an identity provider) to require "
                   "sign-in.")
        return
    st.text(f"Signed in: {user.label} · {user.role}")
    if user.source == "oidc":
        if st.button("Sign out", key="sign_out"):
            st.logout()
    else:
        st.button("Sign out", key="sign_out", on_click=_sign_out)


def session_user() -> User | None:
    user = st.session_state.get(SESSION_USER)
    return user if isinstance(user, User) else None


def require(permission: str) -> User:
    """The signed-in user if it has `permission`; else the page says who may use it and stops."""
    user = session_user()
    if user is None or not user.can(permission):
        who = "administrators" if permission == "admin" else "researchers and administrators"
        role = f"you are signed in as {user.username} ({user.role})" if user else "nobody is signed in"
        st.error(f"This page is for {who}; {role}.", icon=":material/lock:")
        st.stop()
    return user


def evaluation_data() -> dict[str, str]:
    """The data the Evaluate page may read (label -> spec): the phantom splits and $XAI_EVAL_FOLDERS."""
    return auth.evaluation_data_choices()
