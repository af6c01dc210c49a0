"""Patient data stays private: a DICOM full of identifiers, uploaded under an identifying file name, leaves no trace
of them in anything written (store, its WAL, backups, exported report, temporary files, logs) or shown to another
session; the file name is shown only in the session that uploaded it."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.dicom_factory import make_dataset, to_bytes
from tests.test_app import SHIPPED_ADDRESS, bind, shown
from xai_core.imaging import load_radiograph, to_png_bytes
from xai_core.overlay import shrink
from xai_core.report import case_report_html
from xai_core.store import CaseStore, case_name, identifying_parts

IDENTIFIERS = {
    "PatientName": "DOE^JOHNATHAN^PRIVACYTEST",
    "PatientID": "PID-31415926",
    "PatientBirthDate": "19450317",
    "PatientAddress": "12 Confidential Lane, Privacyville",
    "InstitutionName": "Privacy Test Infirmary",
    "AccessionNumber": "ACC-27182818",
    "ReferringPhysicianName": "HOUSE^GREGORY^PRIVTEST",
    "OtherPatientIDs": "OPID-161803",
    "StudyDescription": "CHEST FOR JOHNATHAN DOE",
}
FILE_NAME = "DOE^JOHNATHAN_PID-31415926.dcm"
NEEDLES = ["JOHNATHAN", "PRIVACYTEST", "PID-31415926", "31415926", "19450317", "Confidential Lane", "Privacyville",
           "Privacy Test Infirmary", "ACC-27182818", "PRIVTEST", "OPID-161803", FILE_NAME, "DOE^JOHNATHAN"]


def identifying_dicom() -> bytes:
    yy, xx = np.mgrid[0:320, 0:288]
    chest = 600 + 2400 * np.exp(-(((xx - 144) / 110) ** 2 + ((yy - 170) / 140) ** 2))
    ribs = 300 * (np.sin(yy / 9.0) > 0.6)
    pixels = np.clip(chest + ribs, 0, 4095).astype(np.uint16)
    data = to_bytes(make_dataset(pixels, **IDENTIFIERS))
    assert all(v.encode() in data for v in ("JOHNATHAN", "PID-31415926", "19450317")), "the file does carry them"
    return data


def leaks(text: str | bytes) -> list[str]:
    """The identifiers found in `text` (case-insensitive)."""
    data = (text.encode("utf-8", "replace") if isinstance(text, str) else text).lower()
    return [n for n in NEEDLES if n.lower().encode() in data]


def written_since(folder: Path, start: float) -> Iterator[Path]:
    """Every readable regular file under `folder` modified since `start`."""
    for parent, dirs, files in os.walk(folder, onerror=lambda _: None):
        dirs[:] = [d for d in dirs if not Path(parent, d).is_symlink()]
        for name in files:
            path = Path(parent, name)
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= start - 1:
                    yield path
            except OSError:
                continue


def scan(paths) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        try:
            hits = leaks(path.read_bytes())
        except OSError:
            continue
        if hits:
            found[str(path)] = hits
    return found


@pytest.fixture
def private_run(monkeypatch, tmp_path) -> Iterator[dict]:
    """The shipped address, no login (the local user), the store and the temporary folder in tmp_path."""
    for name in ("XAI_USERS_FILE", "XAI_OIDC_DOMAINS", "XAI_EVAL_FOLDERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")  # as tests/test_app.py: one engine flag per process
    system_tmp = Path(tempfile.gettempdir())
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "store" / "cases.sqlite"))
    for _ in bind(SHIPPED_ADDRESS):
        yield {"start": time.time(), "system_tmp": system_tmp}


def test_an_upload_through_the_app_leaves_no_identifier_anywhere(private_run, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    data = identifying_dicom()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.file_uploader(key="upload").upload(FILE_NAME, data, "application/dicom").run()
    assert not at.exception and not at.error
    case = at.session_state["case"]
    sha = case.sha256
    assert case.source_name == FILE_NAME, "this session keeps the file name"
    assert any(FILE_NAME in c for image in at.get("image") for c in image.captions), "and shows it here only"
    assert not leaks(repr(case.meta)), "DICOM tag values are not in the metadata"

    label = at.text_input(key=f"case_label-{sha[:12]}")
    label.input("johnathan follow-up").run()  # a label repeating the file name is refused
    assert any("repeats part of the file name" in w.value for w in at.warning)
    assert any(t.value == f"Shared as: case-{sha[:12]}" for t in at.text)
    at.text_input(key=f"case_label-{sha[:12]}").input("left base, follow-up").run()
    assert any(t.value == f"Shared as: case-{sha[:12]} · left base, follow-up" for t in at.text)

    at.switch_page("pages/explain_page.py").run()
    at.multiselect(key="methods").set_value(["gradcam"]).run()
    assert not at.exception and not at.error
    at.switch_page("pages/review_page.py").run()
    at.radio(key="verdict-gradcam").set_value("agree")
    at.text_area(key="comment-gradcam").input("map on the left base")
    at.button[0].click().run()
    assert not at.exception and any("Saved" in s.value for s in at.success)
    assert at.get("download_button"), "the report can be exported"

    other = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()  # another reviewer's session
    other.switch_page("pages/review_page.py").run()
    assert not other.exception
    seen = shown(other)
    assert [(kind, leaks(text)) for kind, text in seen if leaks(text)] == []
    other.switch_page("pages/admin_page.py").run()
    assert [(kind, leaks(text)) for kind, text in shown(other) if leaks(text)] == []

    store = CaseStore(tmp_path / "store" / "cases.sqlite")
    report = case_report_html(store, sha)  # what the Export button downloads
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / f"case_{sha[:12]}.html").write_text(report)
    store.backup(tmp_path / "exported" / "backup.sqlite")
    (tmp_path / "exported" / "download.sqlite").write_bytes(store.backup_bytes())
    store.close()

    files = list(written_since(tmp_path, private_run["start"]))
    names = {p.name for p in files}
    assert {"cases.sqlite", f"case_{sha[:12]}.html", "backup.sqlite"} <= names, "the scan covers what was written"
    assert scan(files) == {}
    assert scan(written_since(private_run["system_tmp"], private_run["start"])) == {}, "nor in the system's /tmp"
    out, err = capfd.readouterr()
    assert leaks(out + err) == [] and leaks("\n".join(r.getMessage() for r in caplog.records)) == []

    shared = f"case-{sha[:12]} · left base, follow-up"  # what is shared instead
    assert any(shared in text for _, text in seen), "the other session sees the shared name"
    assert [c["label"] for c in CaseStore(tmp_path / "store" / "cases.sqlite").cases()] == [shared]
    assert "no patient identifiers" in report and shared in report


def test_the_store_and_report_functions_keep_identifiers_out(private_run, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    radiograph = load_radiograph(identifying_dicom(), name=FILE_NAME)
    sha = radiograph.sha256
    assert radiograph.source_name == FILE_NAME and not leaks(repr(radiograph.meta))
    forbidden = identifying_parts(radiograph.source_name)
    assert case_name(sha, "DOE^JOHNATHAN's film", forbidden=forbidden) == f"case-{sha[:12]}"
    assert case_name(sha, "case 31415926", forbidden=forbidden) == f"case-{sha[:12]}"
    name = case_name(sha, "second look", forbidden=forbidden)
    store = CaseStore(tmp_path / "fn" / "cases.sqlite")
    store.add_case(sha, name, source="upload", shape=radiograph.pixels.shape,
                   thumbnail=to_png_bytes(shrink(radiograph.pixels, 256)))
    store.save_result(sha, "demo", "prediction", {"findings": [{"label": "Effusion", "probability": 0.4,
                                                                "threshold": 0.5, "positive": False}]})
    store.add_verdict(sha, "demo", "Effusion", "gradcam", "unsure", "check the left base", "local", role="admin",
                      auth="local")
    report = case_report_html(store, sha)
    (tmp_path / "fn" / "report.html").write_text(report)
    store.backup(tmp_path / "fn" / "backup.sqlite")
    store.close()
    assert name in report and not leaks(report)
    files = list(written_since(tmp_path, private_run["start"]))
    assert {"cases.sqlite", "report.html", "backup.sqlite"} <= {p.name for p in files}
    assert scan(files) == {}
    assert leaks("\n".join(r.getMessage() for r in caplog.records)) == []
