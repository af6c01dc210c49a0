"""Access: the users file and its hashes, roles, the serving policy, sign-in through the app (AppTest)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator

import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.test_app import MODEL, SHIPPED_ADDRESS, bind
from xai_core import auth
from xai_core.errors import InputError
from xai_core.store import CaseStore

PASSWORDS = {"alice": "alice-password-1", "rita": "rita-password-22", "ada": "ada-password-333"}
OIDC_SECRETS = {"auth": {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "s" * 32,
                         "client_id": "xai", "client_secret": "c" * 16,
                         "server_metadata_url": "https://idp.hospital.example/.well-known/openid-configuration"}}


@pytest.fixture(autouse=True)
def settings(monkeypatch, tmp_path) -> Iterator[None]:
    """No login configured, the shipped address, a store of the test's own, a fresh sign-in throttle. Random
    weights are allowed as in tests/test_app.py (the engine is cached for the process: the same flag everywhere)."""
    from ui import access

    for name in ("XAI_USERS_FILE", "XAI_OIDC_DOMAINS", "XAI_EVAL_FOLDERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    access.throttle.clear()
    yield from bind(SHIPPED_ADDRESS)


@pytest.fixture
def users(tmp_path, monkeypatch):
    path = tmp_path / "users.json"
    auth.add_user(path, "alice", PASSWORDS["alice"], "reviewer", name="Alice Reviewer")
    auth.add_user(path, "rita", PASSWORDS["rita"], "researcher")
    auth.add_user(path, "ada", PASSWORDS["ada"], "admin")
    auth.add_user(path, "dr.sso@hospital.example", None, "researcher")
    monkeypatch.setenv("XAI_USERS_FILE", str(path))
    return path


@pytest.fixture
def network() -> Iterator[None]:
    """Served on every interface (an explicit setting)."""
    yield from bind("0.0.0.0")


def start() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    return at.run()


def sign_in(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(password)
    at.button[0].click().run()
    assert not at.exception
    return at


def serves_pages(at: AppTest) -> bool:
    return bool(at.get("file_uploader"))  # the Case page


# ---------------------------------------------------------------------------------------------- users file

def test_passwords_are_salted_scrypt_hashes():
    first, second = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert first.startswith("scrypt$16384$8$1$") and first != second, "a fresh salt per hash"
    assert auth.verify_password("correct horse", first) and auth.verify_password("correct horse", second)
    assert not auth.verify_password("correct horsf", first)
    assert not auth.verify_password("correct horse", "scrypt$16384$8$1$!!$??")
    assert not auth.verify_password("correct horse", "md5$abc")


def test_add_user_writes_a_private_file_without_clear_passwords(tmp_path):
    path = tmp_path / "etc" / "users.json"
    user = auth.add_user(path, "Alice", "alice-password-1", "reviewer", name="Alice R")
    assert user == auth.User("alice", "reviewer", "password", "Alice R")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert "alice-password-1" not in text and json.loads(text)["users"]["alice"]["password"].startswith("scrypt$")
    with pytest.raises(InputError, match="already exists"):
        auth.add_user(path, "alice", "another-password", "admin")
    auth.add_user(path, "alice", "another-password", "admin", replace=True)
    assert auth.authenticate(auth.load_users(path), "alice", "another-password").role == "admin"
    with pytest.raises(InputError, match="too short"):
        auth.add_user(path, "bob", "short", "reviewer")
    with pytest.raises(InputError, match="Unknown role"):
        auth.add_user(path, "bob", "long-enough-password", "root")
    with pytest.raises(InputError, match="not a valid user name"):
        auth.add_user(path, "bob smith", "long-enough-password", "reviewer")
    auth.add_user(path, "Dr.X@Hospital.example", None, "researcher")
    assert auth.list_users(path) == [auth.User("alice", "admin", "password", "Alice R"),
                                     auth.User("dr.x@hospital.example", "researcher", "oidc")]
    assert auth.remove_user(path, "ALICE") and not auth.remove_user(path, "alice")
    assert [u.username for u in auth.list_users(path)] == ["dr.x@hospital.example"]
    assert not list(path.parent.glob(".*partial")), "written atomically, nothing left over"


def test_add_user_finds_the_file_through_the_environment(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="XAI_USERS_FILE"):
        auth.add_user(None, "alice", "alice-password-1")
    monkeypatch.setenv("XAI_USERS_FILE", str(tmp_path / "u.json"))
    auth.add_user(None, "alice", "alice-password-1")
    assert [u.username for u in auth.list_users()] == ["alice"]


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"people": {}}', 'no "users" table'),
    ('{"users": {"eve": {"role": "root"}}}', "no valid role"),
    ('{"users": {"eve": {"role": "admin", "password": "plain text"}}}', "not an scrypt hash"),
])
def test_a_damaged_users_file_is_refused_with_what_to_do(tmp_path, content, message):
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        auth.load_users(path)


def test_authenticate_checks_the_hash_and_knows_no_unknown_user(users):
    table = auth.load_users(users)
    assert auth.authenticate(table, "Alice", PASSWORDS["alice"]) == auth.User("alice", "reviewer", "password",
                                                                            "Alice Reviewer")
    assert auth.authenticate(table, "alice", PASSWORDS["rita"]) is None
    assert auth.authenticate(table, "mallory", PASSWORDS["alice"]) is None
    assert auth.authenticate(table, "dr.sso@hospital.example", "") is None, "no password: identity provider only"
    assert auth.authenticate(table, "not a name!", "x") is None


def test_identity_provider_users_need_the_users_file_or_an_allowed_domain(users):
    table = auth.load_users(users)
    listed = {"is_logged_in": True, "email": "Dr.SSO@hospital.example", "name": "Dr S"}
    assert auth.oidc_user(listed, table) == auth.User("dr.sso@hospital.example", "researcher", "oidc", "Dr S")
    other = {"is_logged_in": True, "email": "nurse@hospital.example"}
    assert auth.oidc_user(other, table, []) is None
    assert auth.oidc_user(other, table, ["hospital.example"]).role == "reviewer"
    assert auth.oidc_user({**other, "email_verified": False}, table, ["hospital.example"]) is None
    assert auth.oidc_user({"email": "dr.sso@hospital.example"}, table) is None, "not logged in"
    assert auth.oidc_user({"is_logged_in": True, "email": "x@evil.example"}, table, ["hospital.example"]) is None


def test_the_login_throttle_locks_a_name_after_repeated_failures():
    throttle = auth.LoginThrottle(max_failures=3, window_s=60, lock_s=120)
    for t in (0, 1, 2):
        assert throttle.locked_for("alice", now=t) == 0
        throttle.failed("Alice", now=t)
    assert throttle.locked_for("alice", now=3) == pytest.approx(119)
    assert throttle.locked_for("bob", now=3) == 0, "other names are not affected"
    assert throttle.locked_for("alice", now=200) == 0, "the lock ends"
    slow = auth.LoginThrottle(max_failures=3, window_s=60, lock_s=120)
    for t in (0, 100, 200):
        slow.failed("carol", now=t)
    assert slow.locked_for("carol", now=201) == 0, "failures spread beyond the window do not lock"
    throttle.succeeded("alice")
    assert throttle.locked_for("alice", now=3) == 0


@pytest.mark.parametrize("address,loopback", [
    ("127.0.0.1", True), ("127.3.4.5", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("", False), (None, False), ("::", False), ("192.168.1.20", False), ("myhost", False),
])
def test_loopback_addresses_and_the_access_mode(address, loopback):
    assert auth.is_loopback(address) is loopback
    assert auth.access_mode(address, login_configured=False) == ("local" if loopback else "refuse")
    assert auth.access_mode(address, login_configured=True) == "login"


def test_evaluate_data_is_the_phantom_splits_plus_the_folders_the_server_lists(monkeypatch, tmp_path):
    assert auth.evaluation_data_choices() == {f"phantom:{s}": f"phantom:{s}" for s in ("test", "val", "train")}
    monkeypatch.setenv("XAI_EVAL_FOLDERS", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    choices = auth.evaluation_data_choices()
    assert choices["folder:a"] == str(tmp_path / "a") and choices["folder:b"] == str(tmp_path / "b")
    assert len(choices) == 5


# ---------------------------------------------------------------------------------------------- the app

@pytest.mark.parametrize("address", ["0.0.0.0", "", "192.168.1.20", "::"])
def test_beyond_loopback_without_login_no_page_is_served(address):
    for _ in bind(address):
        at = start()
        assert not at.exception and not serves_pages(at)
        assert "which other machines can reach, and no login is configured" in at.error[0].value
        assert "XAI_USERS_FILE" in at.error[0].value and "127.0.0.1" in at.error[0].value
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page("pages/case_page.py")


def test_a_users_file_that_is_missing_or_damaged_serves_no_page_even_on_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_USERS_FILE", str(tmp_path / "missing.json"))
    at = start()
    assert not serves_pages(at) and "does not exist yet" in at.error[0].value and not at.text_input
    (tmp_path / "missing.json").write_text("{broken")
    at.run()
    assert not serves_pages(at) and "not valid JSON" in at.error[0].value and not at.text_input
    assert str(tmp_path) not in at.error[0].value, "no server path before sign-in"


def test_password_sign_in_gives_the_role_its_pages_and_signs_out(users, network):
    at = start()
    password = at.text_input(key="login_password").proto
    assert not serves_pages(at) and password.type == password.PASSWORD
    sign_in(at, "alice", "wrong password")
    assert not serves_pages(at) and "Unknown user name or wrong password" in at.error[0].value
    sign_in(at, "alice", PASSWORDS["alice"])
    assert serves_pages(at) and not at.error
    assert any(t.value == "Signed in: Alice Reviewer (alice) · reviewer" for t in at.sidebar.text)
    assert at.session_state["user"] == auth.User("alice", "reviewer", "password", "Alice Reviewer")
    assert PASSWORDS["alice"] not in repr(at.session_state.to_dict()), "the password is not kept in the session"
    for page in ("pages/evaluate_page.py", "pages/admin_page.py"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page)
    at.sidebar.button(key="sign_out").click().run()
    assert not serves_pages(at) and at.text_input(key="login_username")


def test_researchers_get_evaluate_and_administration_admins_also_the_users(users, network):
    at = sign_in(start(), "rita", PASSWORDS["rita"])
    at.switch_page("pages/evaluate_page.py").run()
    assert not at.exception and at.button(key="eval_run")
    at.switch_page("pages/admin_page.py").run()
    assert not at.exception and [s.value for s in at.subheader] == ["Models", "Case store"]
    status = at.dataframe[0].value
    assert "path" not in list(status["property"]), "the store's server path is for administrators"
    assert not at.get("download_button"), "backups are for administrators"

    admin = sign_in(start(), "ada", PASSWORDS["ada"])
    admin.switch_page("pages/admin_page.py").run()
    assert not admin.exception and [s.value for s in admin.subheader] == ["Models", "Case store", "Users"]
    listed = admin.dataframe[1].value
    assert list(listed["user"]) == ["ada", "alice", "dr.sso@hospital.example", "rita"]
    assert "scrypt" not in listed.to_string()
    assert admin.get("download_button"), "an administrator can download a backup"


def test_a_page_run_without_the_app_refuses_anyone_not_signed_in():
    at = AppTest.from_file(str(ROOT / "pages" / "evaluate_page.py"), default_timeout=180).run()
    assert not at.exception
    assert "for researchers and administrators; nobody is signed in" in at.error[0].value
    assert not at.button, "no Run button"


def test_repeated_wrong_passwords_lock_the_name(users, network):
    at = start()
    for _ in range(5):
        sign_in(at, "ada", "guessing-password")
    sign_in(at, "ada", PASSWORDS["ada"])
    assert not serves_pages(at) and "Too many failed sign-ins" in at.error[0].value
    sign_in(at, "alice", PASSWORDS["alice"])
    assert serves_pages(at), "other names can still sign in"


def test_a_change_in_the_users_file_applies_on_the_next_run(users, network):
    at = sign_in(start(), "alice", PASSWORDS["alice"])
    auth.add_user(users, "alice", PASSWORDS["alice"], "researcher", replace=True)
    at.run()
    assert at.session_state["user"].role == "researcher"
    auth.remove_user(users, "alice")
    at.run()
    assert not serves_pages(at), "a removed user is signed out"


def test_a_verdict_carries_the_signed_in_identity(users, network, tmp_path):
    at = sign_in(start(), "alice", PASSWORDS["alice"])
    at.sidebar.selectbox(key="model").set_value(MODEL).run()
    title = next(s for s in at.selectbox(key="sample").options if "phantom" in s and "Nodule" in s)
    at.selectbox(key="sample").set_value(title).run()
    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["gradcam"]).run()
    at.switch_page("pages/review_page.py").run()
    assert not at.exception and not [t for t in at.text_input], "no free-text reviewer name"
    assert any("recorded as alice (reviewer)" in c.value for c in at.caption)
    at.radio(key="verdict-gradcam").set_value("agree")
    at.button[0].click().run()
    assert any("as alice" in s.value for s in at.success)
    store = CaseStore(tmp_path / "cases.sqlite")
    [case] = store.cases()
    [verdict] = store.verdicts(case["sha256"])
    assert (verdict.reviewer, verdict.role, verdict.auth) == ("alice", "reviewer", "password")


def test_a_reviewer_sees_store_faults_without_the_servers_path(users, network, monkeypatch, tmp_path):
    (tmp_path / "cases.sqlite").write_bytes(b"garbage" * 100)
    at = sign_in(start(), "alice", PASSWORDS["alice"])
    at.switch_page("pages/review_page.py").run()
    assert not at.exception
    assert "is damaged" in at.error[0].value and str(tmp_path) not in at.error[0].value
    assert "its path is shown to administrators" in at.error[0].value


def test_identity_provider_sign_in(users, network, monkeypatch):
    from ui import access

    calls = []
    monkeypatch.setattr(streamlit, "login", lambda *provider: calls.append(provider))
    monkeypatch.setattr(access, "authlib_installed", lambda: True)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.secrets.update(OIDC_SECRETS)
    at.user = {"is_logged_in": False}
    at.run()
    assert not serves_pages(at)
    at.button(key="oidc-default").click().run()
    assert calls == [()], "st.login with the default provider"
    assert at.text_input(key="login_username"), "the users file's passwords work beside it"

    at.user = {"is_logged_in": True, "email": "dr.sso@hospital.example", "name": "Dr S"}
    at.run()
    assert serves_pages(at) and at.session_state["user"] == auth.User("dr.sso@hospital.example", "researcher",
                                                                       "oidc", "Dr S")
    at.switch_page("pages/evaluate_page.py").run()
    assert not at.exception and at.button(key="eval_run")

    stranger = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    stranger.secrets.update(OIDC_SECRETS)
    stranger.user = {"is_logged_in": True, "email": "someone@gmail.example"}
    stranger.run()
    assert not serves_pages(stranger) and "not authorised for this dashboard" in stranger.error[0].value
    monkeypatch.setenv("XAI_OIDC_DOMAINS", "gmail.example")
    stranger.run()
    assert serves_pages(stranger) and stranger.session_state["user"].role == "reviewer"


def test_identity_provider_without_authlib_says_what_to_install(monkeypatch, network):
    from ui import access

    monkeypatch.setattr(access, "authlib_installed", lambda: False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.secrets.update(OIDC_SECRETS)
    at.run()
    assert not serves_pages(at) and "Authlib" in at.warning[0].value
    assert at.button(key="oidc-default").disabled
