"""Who may use the dashboard and for what: users file, password hashing, roles, the serving policy, allow-lists.

No Streamlit here (the UI in `ui/access.py` calls these functions). Three ways to be someone:
- `local`: the dashboard bound to a loopback address with no login configured runs as one local administrator;
- `password`: a users file (`$XAI_USERS_FILE`, JSON) with scrypt-hashed, salted passwords, for offline sites;
- `oidc`: an identity provider configured for Streamlit's `st.login` (secrets `[auth]`); the identity (e-mail) is
  accepted when the users file lists it (its role from there) or its domain is in `$XAI_OIDC_DOMAINS` (reviewer).
Serving on any other address than loopback needs one of the last two (`access_mode`).

Users file layout (written by `add_user`, mode 0600, replaced atomically):
    {"version": 1, "users": {"alice": {"role": "reviewer", "password": "scrypt$16384$8$1$<salt>$<hash>"}}}
An entry without "password" can only sign in through the identity provider.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xai_core.errors import InputError

ROLES = ("reviewer", "researcher", "admin")
PERMISSIONS = {
    "reviewer": frozenset({"review"}),
    "researcher": frozenset({"review", "evaluate", "models"}),
    "admin": frozenset({"review", "evaluate", "models", "admin"}),
}
USERS_FILE_ENV = "XAI_USERS_FILE"
OIDC_DOMAINS_ENV = "XAI_OIDC_DOMAINS"
EVAL_FOLDERS_ENV = "XAI_EVAL_FOLDERS"
PHANTOM_SPLITS = ("test", "val", "train")
MIN_PASSWORD_LENGTH = 10
USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}")
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_BYTES = 2**14, 8, 1, 32
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class User:
    """A signed-in person: `username` is what verdicts record; `source` says how the identity was established."""

    username: str
    role: str
    source: str  # "local" | "password" | "oidc"
    name: str = ""

    def can(self, permission: str) -> bool:
        """'review', 'evaluate', 'models' (researchers and admins) or 'admin' (admins only)."""
        return permission in PERMISSIONS.get(self.role, frozenset())

    @property
    def label(self) -> str:
        return f"{self.name} ({self.username})" if self.name and self.name != self.username else self.username


LOCAL_USER = User("local", "admin", "local", "local user")


# ---------------------------------------------------------------------------------------------- passwords

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$<salt>$<hash>` (base64) with a fresh 16-byte salt unless one is given."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches an `hash_password` string (constant-time compare; False for a malformed hash)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt, validate=True), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected), maxmem=2**27)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown names against, so that they take as long as known ones."""
    return hash_password("not a password", salt=b"\x00" * 16)


# ---------------------------------------------------------------------------------------------- users file

def users_file() -> Path | None:
    """The users file named by $XAI_USERS_FILE, or None when it is not set (it may not exist yet)."""
    value = os.environ.get(USERS_FILE_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _resolve(path: str | Path | None) -> Path:
    resolved = Path(path).expanduser() if path is not None else users_file()
    if resolved is None:
        raise InputError(f"No users file: pass its path or set {USERS_FILE_ENV}.")
    return resolved


def normalise_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise InputError(f"'{username}' is not a valid user name: use 1-128 letters, digits and . _ @ + - "
                         "(an e-mail address works), starting with a letter or digit.")
    return name


def load_users(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """username -> {"role", "password"?, "name"?}; a missing file is an empty table. Raises `InputError` when the
    file cannot be read or is not a users file (the message says what to fix; it names no password hashes)."""
    path = _resolve(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"The users file cannot be read ({exc.strerror}). Check its permissions.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"The users file is not valid JSON (line {exc.lineno}). Restore it or recreate it with "
                         "`python -m xai_core add-user`.") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise InputError('The users file has no "users" table. Recreate it with `python -m xai_core add-user`.')
    for name, entry in users.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise InputError(f"The users file entry '{name}' has no valid role (one of {', '.join(ROLES)}).")
        if "password" in entry and not str(entry["password"]).startswith("scrypt$"):
            raise InputError(f"The users file entry '{name}' has a password that is not an scrypt hash; set it "
                             "again with `python -m xai_core add-user --replace`.")
    return users


def _write_users(path: Path, users: Mapping[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    text = json.dumps({"version": _FORMAT_VERSION, "users": dict(sorted(users.items()))}, indent=2) + "\n"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def add_user(path: str | Path | None, username: str, password: str | None, role: str = "reviewer", *,
             name: str = "", replace: bool = False) -> User:
    """Add (or with `replace`, update) a user in the users file (`path`, else $XAI_USERS_FILE); returns the user.

    `password` None makes an identity-provider-only entry (an e-mail address as `username`); with `replace`, a
    password or name not given is kept (e.g. to change a role). Passwords are stored as salted scrypt hashes,
    never in clear. Raises `InputError` for a bad name, role or short password, or an
    existing user without `replace`.
    """
    path = _resolve(path)
    username = normalise_username(username)
    if role not in ROLES:
        raise InputError(f"Unknown role '{role}': use one of {', '.join(ROLES)}.")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"The password is too short: use at least {MIN_PASSWORD_LENGTH} characters.")
    users = load_users(path)
    if username in users and not replace:
        raise InputError(f"User '{username}' already exists; pass replace=True (--replace) to change it.")
    entry: dict[str, Any] = dict(users.get(username, {}))  # replace: what is not given is kept
    entry["role"] = role
    if password is not None:
        entry["password"] = hash_password(password)
    if name.strip():
        entry["name"] = name.strip()
    users[username] = entry
    try:
        _write_users(path, users)
    except OSError as exc:
        raise InputError(f"The users file could not be written ({exc.strerror}). Check the folder's permissions "
                         "and free space.") from exc
    return User(username, role, "password" if "password" in entry else "oidc", entry.get("name", ""))


def remove_user(path: str | Path | None, username: str) -> bool:
    """Remove a user from the users file; False if there was none of that name."""
    path = _resolve(path)
    users = load_users(path)
    if users.pop(normalise_username(username), None) is None:
        return False
    _write_users(path, users)
    return True


def list_users(path: str | Path | None = None) -> list[User]:
    """Every user in the file (no password hashes), by name."""
    return [User(n, e["role"], "password" if "password" in e else "oidc", e.get("name", ""))
            for n, e in sorted(load_users(path).items())]


def authenticate(users: Mapping[str, dict[str, Any]], username: str, password: str) -> User | None:
    """The user if the password matches its hash, else None. Unknown names cost the same time as known ones."""
    try:
        key = normalise_username(username)
    except InputError:
        key = ""
    entry = users.get(key)
    encoded = entry.get("password") if entry else None
    ok = verify_password(password, encoded or _dummy_hash())
    if not (ok and entry and encoded):
        return None
    return User(key, entry["role"], "password", entry.get("name", ""))


def oidc_user(claims: Mapping[str, Any], users: Mapping[str, dict[str, Any]],
              allowed_domains: list[str] | None = None) -> User | None:
    """The dashboard user for an identity provider's claims (`st.user`), or None when the identity is not authorised.

    The e-mail address (else the subject) is the user name. Listed in the users file: its role; else an e-mail
    domain in `allowed_domains` (default $XAI_OIDC_DOMAINS, comma-separated): reviewer; else refused. An e-mail
    the provider marks unverified is refused.
    """
    if claims.get("is_logged_in") is not True:
        return None
    identity = str(claims.get("email") or claims.get("sub") or "").strip().lower()
    if not identity or claims.get("email_verified") is False:
        return None
    domains = allowed_domains if allowed_domains is not None else [
        d.strip().lower().lstrip("@") for d in os.environ.get(OIDC_DOMAINS_ENV, "").split(",") if d.strip()]
    name = str(claims.get("name") or "")
    if identity in users:
        return User(identity, users[identity]["role"], "oidc", users[identity].get("name") or name)
    if "@" in identity and identity.rsplit("@", 1)[1] in domains:
        return User(identity, "reviewer", "oidc", name)
    return None


class LoginThrottle:
    """Refuses a user name for `lock_s` after `max_failures` failed logins within `window_s` (process-wide)."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, lock_s: float = 300.0) -> None:
        self.max_failures, self.window_s, self.lock_s = max_failures, window_s, lock_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _key(self, username: str) -> str:
        return username.strip().lower()

    def locked_for(self, username: str, now: float | None = None) -> float:
        """Seconds until this name may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(self._key(username), [])
        if len(times) < self.max_failures or times[-1] - times[0] > self.window_s:
            return 0.0
        return max(0.0, times[-1] + self.lock_s - now)

    def failed(self, username: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > 10_000:  # names sprayed by a guesser: forget the stale ones
                horizon = self.window_s + self.lock_s
                self._failures = {k: v for k, v in self._failures.items() if now - v[-1] < horizon}
            times = [*self._failures.get(self._key(username), []), now]
            self._failures[self._key(username)] = times[-self.max_failures:]

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(self._key(username), None)


# ---------------------------------------------------------------------------------------------- serving policy

def is_loopback(address: str | None) -> bool:
    """Whether a server bind address only accepts connections from this machine ('' or None: all interfaces)."""
    host = (address or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_mode(address: str | None, *, login_configured: bool) -> str:
    """'login' when a users file or identity provider is configured; else 'local' on loopback; else 'refuse'."""
    if login_configured:
        return "login"
    return "local" if is_loopback(address) else "refuse"


def refusal_message(address: str | None) -> str:
    """What the page says when the server is reachable from other machines and nobody has to log in."""
    where = f"address {address}" if address else "every network interface (server.address is not set)"
    return (f"This dashboard is listening on {where}, which other machines can reach, and no login is configured, "
            "so it serves no pages. Either require login: set XAI_USERS_FILE to a users file (create one with "
            "`python -m xai_core add-user NAME --role reviewer`) or configure an identity provider in "
            ".streamlit/secrets.toml ([auth], for st.login); or serve this machine only: server.address = "
            '"127.0.0.1" in .streamlit/config.toml (the default).')


# ---------------------------------------------------------------------------------------------- evaluate data

def evaluation_data_choices() -> dict[str, str]:
    """What the Evaluate page may read: label -> data spec. The phantom splits, plus the folders (each with a
    labels.csv) listed in $XAI_EVAL_FOLDERS (os.pathsep-separated); nothing else on the server."""
    choices = {f"phantom:{split}": f"phantom:{split}" for split in PHANTOM_SPLITS}
    for item in os.environ.get(EVAL_FOLDERS_ENV, "").split(os.pathsep):
        if item.strip():
            folder = Path(item.strip()).expanduser()
            choices[f"folder:{folder.name or folder}"] = str(folder)
    return choices
