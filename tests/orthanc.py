"""A real PACS for the tests and for demos: Debian's Orthanc with its DICOMweb plugin, in a folder of its own.

`running_orthanc(folder)` writes a JSON configuration into `folder` (storage and index there too, an HTTP port that
was free on 127.0.0.1, the DICOM (DIMSE) server disabled, remote access refused, HTTP basic authentication with a
random per-run password), starts `Orthanc`, waits for `/system` (bounded), yields an `OrthancServer` and stops it.
Orthanc 1.10 has no bind-address option: its HTTP socket listens on every interface, so `RemoteAccessAllowed: false`
(non-loopback clients are refused) plus the per-run password keep it local.

`make pacs` runs `python -m tests.orthanc --load assets/samples/dicom`: one on 127.0.0.1 (port 8042 unless
`--port`), with the bundled sample DICOMs stored, until Ctrl-C. Binaries: `scripts/setup-pacs` installs them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests

from xai_core.dicomweb import PacsClient, prepare_for_pacs

BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc")
PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/lib/orthanc",
                  "/usr/local/share/orthanc/plugins")
READY_SECONDS = 30.0
STOP_SECONDS = 10.0
SETUP_HINT = "run scripts/setup-pacs (installs Debian's orthanc and orthanc-dicomweb)"


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed, or it did not start; the message says what to do."""


@dataclass(frozen=True)
class OrthancServer:
    url: str  # http://127.0.0.1:<port>
    user: str
    password: str
    folder: Path
    process: subprocess.Popen

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def environment(self) -> dict[str, str]:
        """The settings the app reads to use this server."""
        return {"XAI_PACS_URL": self.dicomweb_url, "XAI_PACS_USER": self.user, "XAI_PACS_PASSWORD": self.password}


def find_binary() -> Path:
    found = shutil.which("Orthanc") or next((p for p in BINARY_CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        raise OrthancUnavailable(f"no Orthanc binary on this machine: {SETUP_HINT}")
    return Path(found)


def find_dicomweb_plugin() -> Path:
    for folder in PLUGIN_FOLDERS:
        matches = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if matches:
            return matches[0]
    raise OrthancUnavailable(f"no Orthanc DICOMweb plugin (libOrthancDicomWeb.so) on this machine: {SETUP_HINT}")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the caller retries if another process takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, port: int, user: str, password: str) -> Path:
    config = {
        "Name": "xai-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "DicomServerEnabled": False,
        "DicomPort": free_port(),  # unused (DIMSE disabled) but never Orthanc's fixed default
        "DicomAet": "XAITEST",
        "HttpDescribeErrors": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "StableAge": 1,
        "Plugins": [str(find_dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{port}",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)  # holds the per-run password
    return path


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(url: str, auth: tuple[str, str], process: subprocess.Popen, log: Path, timeout: float) -> bool:
    """True once GET /system answers 200; False if the process exited first (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if requests.get(f"{url}/system", auth=auth, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop(process)
    raise OrthancUnavailable(f"Orthanc did not answer /system within {timeout:.0f} s; its log ends:\n{_log_tail(log)}")


@contextmanager
def running_orthanc(folder: Path, *, port: int | None = None, user: str = "xai-reviewer",
                    password: str | None = None, ready_seconds: float = READY_SECONDS,
                    detach: bool = True) -> Iterator[OrthancServer]:
    """An Orthanc with DICOMweb serving from `folder` (created), stopped on exit. `detach=False` keeps it in the
    caller's process group, so that a Ctrl-C or a signal to the group (the `make pacs` demo) stops it too."""
    binary = find_binary()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(18)
    log = folder / "orthanc.log"
    for _attempt in range(3 if port is None else 1):
        http_port = port or free_port()
        config = write_config(folder, http_port, user, password)
        with log.open("ab") as out:
            process = subprocess.Popen([str(binary), str(config)], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=folder, start_new_session=detach)
        url = f"http://127.0.0.1:{http_port}"
        try:
            ready = _wait_ready(url, (user, password), process, log, ready_seconds)
        except BaseException:
            stop(process)
            raise
        if ready:
            break
    else:
        raise OrthancUnavailable(f"Orthanc exited at start-up; its log ends:\n{_log_tail(log)}")
    try:
        yield OrthancServer(url=url, user=user, password=password, folder=folder, process=process)
    finally:
        stop(process)


def main(argv: list[str] | None = None) -> int:
    """`make pacs`: a local Orthanc with the bundled samples (given the UIDs a PACS needs), until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m tests.orthanc", description=main.__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PACS_PORT", "8042")))
    parser.add_argument("--load", type=Path, nargs="*", default=[], help="folders or files of DICOM to store")
    args = parser.parse_args(argv)
    files = sorted(p for src in args.load for p in ([src] if src.is_file() else src.glob("*.dcm")))
    folder = Path(tempfile.mkdtemp(prefix="xai-pacs-"))
    password = os.environ.get("XAI_PACS_PASSWORD") or None
    user = os.environ.get("XAI_PACS_USER") or "xai-reviewer"
    with running_orthanc(folder, port=args.port, user=user, password=password, detach=False) as server:
        client = PacsClient(server.dicomweb_url, user=server.user, password=server.password)
        client.store([prepare_for_pacs(pydicom.dcmread(path)) for path in files])
        env = folder / "pacs.env"
        env.write_text("".join(f"export {k}={v}\n" for k, v in server.environment().items()))
        env.chmod(0o600)
        print(f"Orthanc (DICOMweb) at {server.dicomweb_url} with {len(files)} sample(s); settings for the app: "
              f"`source {env}` (file readable by you only). Ctrl-C stops it.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
