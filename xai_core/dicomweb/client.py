"""A DICOMweb client over `dicomweb-client`: QIDO-RS search (CR/DX chest), WADO-RS retrieval, STOW-RS storage.

Settings come from the environment: `XAI_PACS_URL` (the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web),
`XAI_PACS_USER` and `XAI_PACS_PASSWORD` (HTTP basic authentication, optional). The password is held on the HTTP
session only: never in a URL, a header dict that is logged, a repr or a message. Every failure is a `PacsError` with
one line saying what is wrong and what to do (unreachable server, refused credentials, missing study, an object that
is not an image).

Privacy: search results keep only what a reviewer may see (a short hash of the StudyInstanceUID, modalities, the
study date, counts); retrieved images go through the hardened `load_radiograph` and are named `pacs-<hash>.dcm`, so
no name, ID or UID reaches the case, the store or a log: `dicomweb-client` (INFO, ERROR) and urllib3 (DEBUG, request
paths) would log UIDs, so their loggers get a filter that replaces every UID with `<uid>`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from xai_core.errors import PacsError
from xai_core.imaging import DEFAULT_MAX_BYTES, Radiograph, RadiographError, UnsupportedDicomError, load_radiograph


class RedactUids(logging.Filter):
    """Replaces DICOM UIDs (study/series/instance, in URLs and messages) with `<uid>` in a logger's records."""

    pattern = re.compile(r"\b\d+(?:\.\d+){4,}\b")  # 5+ components: UIDs, not IPv4 addresses

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.pattern.search(message):
            record.msg, record.args = self.pattern.sub("<uid>", message), ()
        return True


# dicomweb-client logs UIDs (INFO, ERROR) and urllib3 logs every request path (DEBUG): both keep their levels but
# never carry a UID. Credentials never reach either (they sit on the session's `auth`, not in URLs or headers).
_LOGGERS = sorted(n for n in logging.root.manager.loggerDict if n.partition(".")[0] == "dicomweb_client")
for _name in [*_LOGGERS, "urllib3.connectionpool"]:
    if not any(isinstance(f, RedactUids) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(RedactUids())

CHEST_MODALITIES = ("CR", "DX")
DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds
DEFAULT_LIMIT = 200
# Image storage SOP classes the dashboard opens (single-frame projection radiographs and secondary captures).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX Image - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX Image - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
}
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to sign in; `password` never appears in repr or messages."""

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PacsSettings | None:
        """The settings from XAI_PACS_URL / XAI_PACS_USER / XAI_PACS_PASSWORD, or None when no URL is set."""
        env = os.environ if environ is None else environ
        url = (env.get("XAI_PACS_URL") or "").strip()
        if not url:
            return None
        return cls(url=url, user=env.get("XAI_PACS_USER") or None, password=env.get("XAI_PACS_PASSWORD") or None)

    @property
    def shown_url(self) -> str:
        """The URL without any user:password part (safe to show and log)."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def short_hash(uid: str) -> str:
    """The reviewer-facing key of a study or series: 10 hex digits of the UID's sha256 (not reversible)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class StudyRef:
    """A study in the worklist. `uid` is for the client only (per session); the page shows `key`, `modalities`,
    `date`, `series` and `images`. No name, ID, accession number or birth date is kept."""

    uid: str = field(repr=False)
    modalities: tuple[str, ...]
    date: str | None
    series: int | None
    images: int | None

    @property
    def key(self) -> str:
        return short_hash(self.uid)

    def row(self) -> dict[str, Any]:
        """The de-identified view of the study."""
        return {"study": self.key, "modalities": ", ".join(self.modalities), "date": format_date(self.date),
                "series": self.series, "images": self.images}


@dataclass(frozen=True)
class SeriesRef:
    study_uid: str = field(repr=False)
    uid: str = field(repr=False)
    modality: str | None
    number: int | None
    description: str | None
    images: int | None

    @property
    def key(self) -> str:
        return short_hash(self.uid)


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    uid: str = field(repr=False)
    sop_class_uid: str | None

    @property
    def key(self) -> str:
        return short_hash(self.uid)

    @property
    def is_image(self) -> bool:
        return self.sop_class_uid in IMAGE_SOP_CLASSES


@dataclass(frozen=True)
class RetrievedImage:
    """A radiograph from the PACS and the source DICOM bytes (the results reference them; never stored)."""

    radiograph: Radiograph
    source: bytes = field(repr=False)
    instance: InstanceRef


def format_date(value: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD) as YYYY-MM-DD; anything else is left out."""
    text = (value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else None


def _value(item: dict, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _values(item: dict, tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class PacsClient:
    """QIDO-RS / WADO-RS / STOW-RS against one DICOMweb server; every failure is a `PacsError`."""

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(f"The PACS address {redact_url(url)!r} is not an http(s) URL; set XAI_PACS_URL to the "
                            "DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web.")
        if parts.username or parts.password:  # credentials in the URL: move them to the session, out of the URL
            user, password = user or parts.username, password or parts.password
        self.shown_url = redact_url(url)
        self.max_bytes = max_bytes
        session = requests.Session()
        if user:
            session.auth = (user, password or "")
        self._authenticated = bool(user)
        self._session, self._timeout = session, timeout
        self._client = DICOMwebClient(self.shown_url, session=session, timeout=timeout)
        self._client.set_http_retry_params(retry=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **kwargs: Any) -> PacsClient:
        """A client from XAI_PACS_URL / XAI_PACS_USER / XAI_PACS_PASSWORD; `PacsError` if no URL is set."""
        settings = PacsSettings.from_env(environ)
        if settings is None:
            raise PacsError("No PACS is configured: set XAI_PACS_URL to the DICOMweb root (and XAI_PACS_USER / "
                            "XAI_PACS_PASSWORD if it needs a sign-in); `make pacs` starts a local one.")
        return cls(settings.url, user=settings.user, password=settings.password, **kwargs)

    def __repr__(self) -> str:
        return f"PacsClient({self.shown_url!r})"

    # --- errors --------------------------------------------------------------------------------------------------

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            raise self._http_error(what, exc.response) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            kind = "did not answer in time" if isinstance(exc, requests.exceptions.Timeout) else "cannot be reached"
            raise PacsError(f"The PACS at {self.shown_url} {kind} ({what}). Check that it is running and that "
                            "XAI_PACS_URL is right; nothing was changed.") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"The PACS request failed ({what}: {type(exc).__name__}).") from None
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # a malformed answer (multipart, JSON)
            raise PacsError(f"The PACS at {self.shown_url} sent an answer that cannot be read ({what}: "
                            f"{type(exc).__name__}).") from None

    def _http_error(self, what: str, response: requests.Response | None) -> PacsError:
        code = response.status_code if response is not None else 0
        if code in (401, 403):
            how = ("check XAI_PACS_USER and XAI_PACS_PASSWORD" if self._authenticated
                   else "set XAI_PACS_USER and XAI_PACS_PASSWORD")
            return PacsError(f"The PACS at {self.shown_url} refused the sign-in (HTTP {code}) for {what}: {how}.")
        if code == 404:
            return PacsError(f"The PACS has no such object ({what}, HTTP 404): it may have been deleted or moved.")
        return PacsError(f"The PACS at {self.shown_url} answered HTTP {code} for {what}; try again later or ask its "
                         "administrator.")

    # --- QIDO-RS -------------------------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise `PacsError` unless the server answers a study search."""
        self._call("a test search", self._client.search_for_studies, limit=1)

    def search_studies(self, modalities: Sequence[str] = CHEST_MODALITIES, *, date: str | None = None,
                       limit: int = DEFAULT_LIMIT) -> list[StudyRef]:
        """Studies holding a CR or DX series (newest first), as de-identified `StudyRef`s."""
        fields = ["StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances"]
        found: dict[str, StudyRef] = {}
        for modality in modalities:
            filters: dict[str, Any] = {"ModalitiesInStudy": modality}
            if date:
                filters["StudyDate"] = date
            items = self._call("a study search", self._client.search_for_studies, fields=fields,
                               search_filters=filters, limit=limit)
            for item in items:
                uid = _value(item, "0020000D")
                if not uid or uid in found:
                    continue
                found[uid] = StudyRef(
                    uid=str(uid),
                    modalities=tuple(str(m) for m in _values(item, "00080061")) or (modality,),
                    date=_value(item, "00080020"),
                    series=_int(_value(item, "00201206")),
                    images=_int(_value(item, "00201208")),
                )
        return sorted(found.values(), key=lambda s: (s.date or "", s.key), reverse=True)[:limit]

    def search_series(self, study_uid: str, modalities: Sequence[str] = CHEST_MODALITIES) -> list[SeriesRef]:
        """The CR/DX series of a study."""
        items = self._call("a series search", self._client.search_for_series, study_instance_uid=study_uid,
                           fields=["Modality", "SeriesNumber", "SeriesDescription",
                                   "NumberOfSeriesRelatedInstances"])
        series = [SeriesRef(study_uid=study_uid, uid=str(_value(i, "0020000E")), modality=_value(i, "00080060"),
                            number=_int(_value(i, "00200011")), description=_value(i, "0008103E"),
                            images=_int(_value(i, "00201209")))
                  for i in items if _value(i, "0020000E")]
        return [s for s in series if not modalities or s.modality in modalities]

    def search_instances(self, study_uid: str, series_uid: str) -> list[InstanceRef]:
        items = self._call("an instance search", self._client.search_for_instances, study_instance_uid=study_uid,
                           series_instance_uid=series_uid, fields=["SOPClassUID", "InstanceNumber"])
        return [InstanceRef(study_uid=study_uid, series_uid=series_uid, uid=str(_value(i, "00080018")),
                            sop_class_uid=_value(i, "00080016"))
                for i in items if _value(i, "00080018")]

    # --- WADO-RS -------------------------------------------------------------------------------------------------

    def retrieve_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The stored DICOM file of one instance, in the transfer syntax it is stored in, as bytes.

        A plain WADO-RS GET on the client's session rather than `dicomweb-client`'s `retrieve_instance`, which parses
        every part with an unbounded `pydicom.dcmread`: here the body is read in chunks up to `max_bytes` and the
        bytes go to the hardened `load_radiograph` untouched."""
        url = f"{self.shown_url.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        response = self._call("an image retrieval", self._get, url, accept)
        body = self._read_capped(response)
        return _first_part(body, response.headers.get("Content-Type", ""))

    def _get(self, url: str, accept: str) -> requests.Response:
        response = self._session.get(url, headers={"Accept": accept}, stream=True, timeout=self._timeout)
        if response.status_code >= 400:
            response.close()
        response.raise_for_status()
        return response

    def _read_capped(self, response: requests.Response) -> bytes:
        chunks, total = [], 0
        try:
            for chunk in response.iter_content(1 << 20):
                total += len(chunk)
                if total > self.max_bytes + (1 << 16):  # a little room for the multipart framing
                    raise PacsError(f"The image from the PACS is over the {self.max_bytes / 2**20:.0f} MB limit "
                                    "for one radiograph; it was not loaded.")
                chunks.append(chunk)
        except requests.exceptions.RequestException:
            raise PacsError(f"The PACS at {self.shown_url} broke off while sending the image; try again.") from None
        finally:
            response.close()
        return b"".join(chunks)

    def retrieve_image(self, instance: InstanceRef) -> RetrievedImage:
        """One instance as a `Radiograph` through the hardened DICOM reader (named `pacs-<hash>.dcm`)."""
        if instance.sop_class_uid and not instance.is_image:
            raise PacsError(f"The object pacs-{instance.key} is not a radiograph (SOP class "
                            f"{pydicom.uid.UID(instance.sop_class_uid).name}); pick a CR or DX image.")
        data = self.retrieve_bytes(instance.study_uid, instance.series_uid, instance.uid)
        try:
            radiograph = load_radiograph(data, name=f"pacs-{instance.key}.dcm", max_bytes=self.max_bytes)
        except UnsupportedDicomError as exc:
            raise PacsError(f"The object pacs-{instance.key} from the PACS is not an image the dashboard can open: "
                            f"{exc}") from None
        except RadiographError as exc:
            raise PacsError(f"The image pacs-{instance.key} from the PACS cannot be read: {exc}") from None
        return RetrievedImage(radiograph=radiograph, source=data, instance=instance)

    def open_study(self, study_uid: str) -> RetrievedImage:
        """The first CR/DX image of a study; `PacsError` when the study is missing or has none."""
        series = self.search_series(study_uid, modalities=())
        if not series:
            raise PacsError(f"The PACS has no such study (study {short_hash(study_uid)}): it may have been deleted "
                            "or moved; refresh the worklist.")
        for item in series:
            if item.modality not in CHEST_MODALITIES:
                continue
            for instance in self.search_instances(study_uid, item.uid):
                if instance.sop_class_uid is None or instance.is_image:
                    return self.retrieve_image(instance)
        raise PacsError(f"Study {short_hash(study_uid)} has no CR or DX image the dashboard can open (it may hold "
                        "only reports, derived objects or other modalities).")

    # --- STOW-RS -------------------------------------------------------------------------------------------------

    def store(self, datasets: Iterable[pydicom.Dataset]) -> int:
        """Store DICOM objects; returns how many the PACS accepted. `PacsError` if any was refused."""
        datasets = list(datasets)
        if not datasets:
            return 0
        study_uids = {str(ds.StudyInstanceUID) for ds in datasets}
        study = study_uids.pop() if len(study_uids) == 1 else None
        answer = self._call("storing results", self._client.store_instances, datasets, study_instance_uid=study)
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
            raise PacsError(f"The PACS refused {len(failed)} of {len(datasets)} object(s) (failure reason "
                            f"{', '.join(reasons)}); nothing else was changed.")
        return len(datasets)


def _first_part(body: bytes, content_type: str) -> bytes:
    """The first body part of a multipart/related answer (or the body itself when it is a single DICOM object)."""
    if not content_type.lower().startswith("multipart/"):
        return body
    message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if payload:
            return bytes(payload)
    raise PacsError("The PACS answered without a DICOM object for the image; it may have been deleted.")


def dataset_from_bytes(data: bytes) -> pydicom.Dataset:
    """A pydicom data set of DICOM bytes (already checked by `load_radiograph`) for writing results."""
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise PacsError(f"The source DICOM cannot be parsed ({type(exc).__name__}).") from None


def prepare_for_pacs(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy with the UIDs a PACS needs (Study, Series and Frame of Reference), derived deterministically from the
    SOP Instance UID where missing (the bundled samples have none), and the Study Date if absent."""
    ds = copy.deepcopy(ds)
    sop = str(ds.SOPInstanceUID)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, generate_uid(_UID_ROOT, entropy_srcs=[sop, keyword]))
    for keyword, default in (("StudyID", "1"), ("SeriesNumber", 1), ("InstanceNumber", 1)):
        if ds.get(keyword) in (None, ""):
            setattr(ds, keyword, default)
    return ds
