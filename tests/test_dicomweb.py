"""The PACS layer against a real Orthanc (DICOMweb plugin) on a free loopback port: search, retrieve, explain, store
the results (overlay, Segmentation, Structured Report) back and read them again; errors; credentials and identifiers
kept out of messages, logs and cases."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, SAMPLES
from tests.dicom_factory import SYNTHETIC_IDENTIFIERS, make_dataset
from tests.orthanc import OrthancServer, OrthancUnavailable, free_port, running_orthanc
from xai_core.dicomweb import PacsClient, PacsSettings, prepare_for_pacs, short_hash
from xai_core.dicomweb.results import (
    NOT_FOR_DIAGNOSIS,
    ResultInfo,
    references_source,
    region_segmentation,
    relevance_overlay,
    results_for,
    source_dataset,
)
from xai_core.dicomweb.structured_report import MethodReport, structured_report
from xai_core.engine import Engine
from xai_core.errors import InputError, PacsError
from xai_core.imaging import load_radiograph

SAMPLE = SAMPLES / "dicom" / "samples-0-000003.dcm"
INFO = ResultInfo(method="gradcam", target="Effusion", model="demo")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[OrthancServer]:
    try:
        with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
            yield server
    except OrthancUnavailable as exc:
        pytest.fail(str(exc))  # the Makefile / CI install it (scripts/setup-pacs): never a skip


@pytest.fixture(scope="module")
def client(orthanc) -> PacsClient:
    return PacsClient(orthanc.dicomweb_url, user=orthanc.user, password=orthanc.password)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("cpu")


def _identifiers(ds: pydicom.Dataset) -> list[str]:
    return [str(ds.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
            if ds.get(k) not in (None, "")]


def test_round_trip_search_retrieve_explain_store_and_read_back(client, engine):
    source = prepare_for_pacs(pydicom.dcmread(SAMPLE))
    assert client.store([source]) == 1

    studies = {study.uid: study for study in client.search_studies()}
    assert source.StudyInstanceUID in studies
    assert studies[source.StudyInstanceUID].modalities == ("DX",)
    series = client.search_series(source.StudyInstanceUID)
    assert [s.uid for s in series] == [source.SeriesInstanceUID]

    retrieved = client.open_study(source.StudyInstanceUID)
    direct = load_radiograph(SAMPLE)
    case = retrieved.radiograph
    assert case.shape == direct.shape
    np.testing.assert_array_equal(case.pixels, direct.pixels)
    np.testing.assert_array_equal(case.raw, direct.raw)
    assert case.meta == direct.meta
    assert case.source_name == f"pacs-{short_hash(source.SOPInstanceUID)}.dcm"

    explanation = engine.explain(case, "demo", "gradcam", "Effusion")
    relevance = explanation.resized_to_image(case.shape)
    results = results_for(retrieved.source, relevance, INFO, percent=10.0)
    assert client.store(results) == 2

    listed = {s.uid: s for s in client.search_series(source.StudyInstanceUID, modalities=())}
    assert set(listed) == {source.SeriesInstanceUID, *(r.SeriesInstanceUID for r in results)}
    for result in results:
        assert listed[result.SeriesInstanceUID].modality == result.Modality
        (instance,) = client.search_instances(source.StudyInstanceUID, result.SeriesInstanceUID)
        data = client.retrieve_bytes(source.StudyInstanceUID, result.SeriesInstanceUID, instance.uid)
        back = pydicom.dcmread(io.BytesIO(data))
        assert back.SOPClassUID == result.SOPClassUID
        assert (back.Rows, back.Columns) == (source.Rows, source.Columns)
        assert references_source(back, source)
        assert back.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert NOT_FOR_DIAGNOSIS in back.SeriesDescription
    overlay, segmentation = (pydicom.dcmread(io.BytesIO(client.retrieve_bytes(
        source.StudyInstanceUID, r.SeriesInstanceUID,
        client.search_instances(source.StudyInstanceUID, r.SeriesInstanceUID)[0].uid))) for r in results)
    assert overlay.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert overlay.PhotometricInterpretation == "RGB" and overlay.BurnedInAnnotation == "YES"
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert overlay.pixel_array.shape == (source.Rows, source.Columns, 3)
    seg = hd.seg.Segmentation.from_dataset(segmentation)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.get_segment_numbers() == [1]
    (seg_source,) = seg.get_source_image_uids()
    assert seg_source == (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
    region = np.asarray(segmentation.pixel_array, bool).reshape(source.Rows, source.Columns)
    assert 0.05 < region.mean() < 0.2  # the top 10 % of the map
    assert region[np.unravel_index(np.argmax(relevance), relevance.shape)]

    # the Structured Report of the explained image goes back too and is found by QIDO-RS under the source study
    findings = engine.predict(case, "demo").to_dict()["findings"]
    report = structured_report(retrieved.source, model="demo", target="Effusion", findings=findings,
                               methods=[MethodReport("gradcam", results, verdict="agree")])
    assert client.store([report]) == 1
    (sr_series,) = client.search_series(source.StudyInstanceUID, modalities=("SR",))
    assert sr_series.uid == report.SeriesInstanceUID and NOT_FOR_DIAGNOSIS in sr_series.description
    (instance,) = client.search_instances(source.StudyInstanceUID, report.SeriesInstanceUID)
    assert instance.uid == report.SOPInstanceUID and instance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
    back = pydicom.dcmread(io.BytesIO(client.retrieve_bytes(source.StudyInstanceUID, report.SeriesInstanceUID,
                                                            instance.uid)))
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.Modality == "SR"
    evidence = hd.sr.ComprehensiveSR.from_dataset(back).get_evidence()
    assert {sop for _, _, sop, _ in evidence} == {source.SOPInstanceUID, *(r.SOPInstanceUID for r in results)}
    measured = hd.sr.MeasurementReport.from_sequence([hd.sr.ComprehensiveSR.from_dataset(back)])
    probabilities = {str(g.tracking_identifier): g.get_measurements(name=codes.DCM.Probability)[0].value
                     for g in measured.get_image_measurement_groups()}
    assert probabilities == {f"demo finding {f['label']}": pytest.approx(f["probability"]) for f in findings}
    (planar,) = measured.get_planar_roi_measurement_groups()
    assert str(planar.tracking_identifier) == "gradcam Effusion"
    assert planar.referenced_segmentation_frame.referenced_sop_instance_uid == segmentation.SOPInstanceUID


def test_a_refined_region_is_a_second_segment_and_a_wrong_grid_is_refused():
    source = source_dataset(SAMPLE.read_bytes())
    relevance = np.random.default_rng(0).random((source.Rows, source.Columns)).astype(np.float32)
    refined = np.zeros_like(relevance, bool)
    refined[100:140, 100:150] = True
    seg = region_segmentation(source, relevance, INFO, percent=5, refined=refined)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["top 5% gradcam relevance", "SegX-refined gradcam region"]
    with pytest.raises(InputError, match="resize it to the image"):
        relevance_overlay(source, relevance[:100], INFO)
    with pytest.raises(InputError, match="source grid"):
        region_segmentation(source, relevance, INFO, refined=refined[:10])


def test_the_source_is_not_modified_and_results_are_each_in_a_new_series():
    original = pydicom.dcmread(SAMPLE)
    before = original.to_json()
    results = results_for(original, np.ones((original.Rows, original.Columns), np.float32), INFO)
    assert original.to_json() == before
    series = {r.SeriesInstanceUID for r in results}
    assert len(series) == 2 and len({r.StudyInstanceUID for r in results}) == 1


def test_worklist_and_cases_carry_no_identifier_and_nothing_leaks_to_logs(orthanc, client, caplog):
    pixels = (np.arange(96 * 80, dtype=np.uint16).reshape(96, 80) % 4096).astype(np.uint16)
    ds = prepare_for_pacs(make_dataset(pixels, StudyDate="20240131"))
    caplog.set_level(logging.DEBUG)
    client.store([ds])
    studies = {s.uid: s for s in client.search_studies()}
    study = studies[ds.StudyInstanceUID]
    row = study.row()
    assert row == {"study": short_hash(ds.StudyInstanceUID), "modalities": "CR", "date": "2024-01-31", "series": 1,
                   "images": 1}
    retrieved = client.open_study(ds.StudyInstanceUID)
    case = retrieved.radiograph
    kept = " ".join([repr(study), repr(row), repr(case.meta), case.source_name, repr(retrieved)])
    for value in [*SYNTHETIC_IDENTIFIERS.values(), ds.StudyInstanceUID, ds.SOPInstanceUID, orthanc.password]:
        assert value not in kept
        assert value not in caplog.text
    # the results go back to the PACS only, and carry the source patient module as DICOM requires
    (overlay, _) = results_for(retrieved.source, np.zeros(case.shape, np.float32), INFO)
    assert str(overlay.PatientID) == SYNTHETIC_IDENTIFIERS["PatientID"]


def test_clear_errors_for_a_server_that_is_down_refuses_the_sign_in_or_lacks_the_object(orthanc, client, caplog):
    caplog.set_level(logging.DEBUG)
    down = PacsClient(f"http://127.0.0.1:{free_port()}/dicom-web", user="u", password="secret-down", timeout=2)
    with pytest.raises(PacsError, match="cannot be reached"):
        down.search_studies()
    wrong = PacsClient(orthanc.dicomweb_url, user=orthanc.user, password="wrong-password-123")
    with pytest.raises(PacsError, match=r"refused the sign-in.*check XAI_PACS_USER") as refused:
        wrong.search_studies()
    anonymous = PacsClient(orthanc.dicomweb_url)
    with pytest.raises(PacsError, match=r"refused the sign-in.*set XAI_PACS_USER"):
        anonymous.open_study("1.2.3")
    missing = generate_uid()
    with pytest.raises(PacsError, match="no such study"):
        client.open_study(missing)
    with pytest.raises(PacsError, match="no such object"):
        client.retrieve_bytes(missing, generate_uid(), generate_uid())
    for secret in ("secret-down", "wrong-password-123", orthanc.password):
        assert secret not in caplog.text and secret not in str(refused.value) and secret not in repr(wrong)


def test_a_study_without_an_image_and_an_object_that_is_not_an_image(client):
    source = prepare_for_pacs(pydicom.dcmread(SAMPLES / "dicom" / "samples-0-000004.dcm"))
    (_, segmentation) = results_for(source, np.ones((source.Rows, source.Columns), np.float32), INFO)
    report_only = pydicom.Dataset(segmentation)  # a study that holds only a derived object, no radiograph
    report_only.StudyInstanceUID = generate_uid()
    report_only.file_meta = segmentation.file_meta
    client.store([report_only])
    with pytest.raises(PacsError, match="has no CR or DX image"):
        client.open_study(report_only.StudyInstanceUID)
    (instance,) = client.search_instances(report_only.StudyInstanceUID, report_only.SeriesInstanceUID)
    with pytest.raises(PacsError, match=r"is not a radiograph .*Segmentation"):
        client.retrieve_image(instance)


def test_settings_come_from_the_environment_and_never_show_the_password():
    assert PacsSettings.from_env({}) is None
    with pytest.raises(PacsError, match="XAI_PACS_URL"):
        PacsClient.from_env({})
    settings = PacsSettings.from_env({"XAI_PACS_URL": "http://127.0.0.1:1/dicom-web", "XAI_PACS_USER": "ann",
                                      "XAI_PACS_PASSWORD": "pa55-word"})
    assert settings.user == "ann" and "pa55-word" not in repr(settings)
    client = PacsClient("http://ann:pa55-word@127.0.0.1:1/dicom-web")
    assert client.shown_url == "http://127.0.0.1:1/dicom-web" and "pa55-word" not in repr(client)
    with pytest.raises(PacsError, match="not an http"):
        PacsClient("ftp://pacs/dicom-web")


# --- the worklist page ------------------------------------------------------------------------------------------


def _page(monkeypatch, tmp_path, environment: dict[str, str]) -> AppTest:
    for name in ("XAI_PACS_URL", "XAI_PACS_USER", "XAI_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XAI_STORE_PATH", str(tmp_path / "cases.sqlite"))
    monkeypatch.setenv("XAI_ALLOW_RANDOM_WEIGHTS", "1")
    at = AppTest.from_file(str(ROOT / "pages" / "pacs_page.py"), default_timeout=120)
    at.run()
    assert not at.exception
    return at


def _everything_shown(at: AppTest) -> str:
    return "\n".join([*(str(e.proto) for e in at.main), *(e.value.to_string() for e in at.dataframe)])


def test_worklist_page_lists_de_identified_studies_opens_one_and_sends_results(orthanc, client, engine, monkeypatch,
                                                                              tmp_path):
    pixels = (np.arange(128 * 112, dtype=np.uint16).reshape(128, 112) % 4096).astype(np.uint16)
    ds = prepare_for_pacs(make_dataset(pixels, StudyDate="20230704"))
    client.store([ds])
    at = _page(monkeypatch, tmp_path, orthanc.environment())
    key = short_hash(ds.StudyInstanceUID)
    assert key in at.dataframe[0].value["study"].tolist()
    shown = _everything_shown(at)
    for value in [*SYNTHETIC_IDENTIFIERS.values(), ds.StudyInstanceUID, orthanc.password]:
        assert value not in shown

    at.selectbox(key="pacs_study").set_value(key).run()
    at.button[1].click().run()  # Open study
    assert not at.exception and not at.error
    case = at.session_state["case"]
    np.testing.assert_array_equal(case.pixels, load_radiograph(_file_bytes(ds)).pixels)
    assert case.source_name == f"pacs-{short_hash(ds.SOPInstanceUID)}.dcm"
    assert any("is the current case" in s.value for s in at.success)

    at.session_state["explanations"] = {"gradcam": engine.explain(case, "demo", "gradcam", "Effusion")}
    at.run()
    send = next(b for b in at.button if b.label == "Send to PACS")
    send.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("2 result object(s) sent" in s.value for s in at.success)
    modalities = sorted(s.modality for s in client.search_series(ds.StudyInstanceUID, modalities=()))
    assert modalities == ["CR", "OT", "SEG"]


def _file_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_worklist_page_says_what_to_do_without_a_pacs_or_when_it_is_down(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path, {})
    assert any("XAI_PACS_URL" in i.value for i in at.info)
    at = _page(monkeypatch, tmp_path, {"XAI_PACS_URL": f"http://127.0.0.1:{free_port()}/dicom-web"})
    assert any("cannot be reached" in e.value for e in at.error)
    at.button[0].click().run()  # refresh: still a message, the session keeps working
    assert not at.exception and any("cannot be reached" in e.value for e in at.error)
