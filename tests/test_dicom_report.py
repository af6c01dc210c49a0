"""`explain --dicom-out` and the Structured Report: every object reads back with pydicom, is in the source study,
references the source and carries what the call computed; a non-DICOM input gets one clear line."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom_factory import SYNTHETIC_IDENTIFIERS, make_dataset, to_bytes
from xai_core.cli import main
from xai_core.dicomweb.results import NOT_FOR_DIAGNOSIS, ResultInfo, references_source, results_for, source_dataset
from xai_core.dicomweb.structured_report import (
    REVIEW_VERDICTS,
    SCHEME,
    MethodReport,
    finding_code,
    structured_report,
)
from xai_core.engine import Engine
from xai_core.errors import InputError
from xai_core.imaging import load_radiograph
from xai_core.phantom import generate_case
from xai_core.store import VERDICTS

SC = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
# a file name made of the synthetic patient's identifiers: it must never reach an output name
INPUT_NAME = f"{SYNTHETIC_IDENTIFIERS['PatientID']}_{SYNTHETIC_IDENTIFIERS['AccessionNumber']}.dcm"


def held_out_dicom(folder: Path, *, rows: int = 256, columns: int = 224) -> tuple[Path, pydicom.Dataset]:
    """A held-out phantom Effusion case (a seed no training used) as a 12-bit DX file with full UIDs."""
    case = generate_case("test", 3, seed=424242, size=rows, findings=["Effusion"])
    margin = (rows - columns) // 2
    pixels = np.round(np.clip(case.image[:, margin:margin + columns], 0, 1) * 4095).astype(np.uint16)
    ds = make_dataset(pixels, Modality="DX", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
                      FrameOfReferenceUID=generate_uid(), StudyDate="20240212", StudyID="7", SeriesNumber=1,
                      InstanceNumber=1, PatientSex="O", PatientOrientation=["P", "F"], ImagerPixelSpacing=[0.2, 0.2])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX For Presentation
    del ds.PixelSpacing  # a DX detector's spacing is Imager Pixel Spacing (highdicom 0.28 cannot read back a 2D
    # Segmentation whose Pixel Measures has Pixel Spacing without Slice Thickness)
    path = folder / INPUT_NAME
    path.write_bytes(to_bytes(ds))
    return path, ds


def _content_items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _content_items(item)


def _report(ds: pydicom.Dataset) -> hd.sr.MeasurementReport:
    return hd.sr.MeasurementReport.from_sequence([hd.sr.ComprehensiveSR.from_dataset(ds)])


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("cpu")


def test_explain_dicom_out_writes_overlays_segmentations_and_a_report(tmp_path, capsys, engine):
    path, source = held_out_dicom(tmp_path)
    out = tmp_path / "dicom"
    code = main(["explain", str(path), "--target", "Effusion", "--methods", "gradcam,random", "--segx",
                 "--segmenter", "demo-lesion", "--dicom-out", str(out), "--verdict", "gradcam=agree,random=unsure",
                 "--json", "--device", "cpu"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    listed = data["dicom"]
    assert [(i["method"], i["sop_class"]) for i in listed] == [
        ("gradcam", "Secondary Capture Image Storage"), ("gradcam", "Segmentation Storage"),
        ("random", "Secondary Capture Image Storage"), ("random", "Segmentation Storage"),
        (None, "Comprehensive SR Storage")]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(i["file"]).name for i in listed)

    objects = {}
    for item in listed:
        back = pydicom.dcmread(item["file"])
        assert Path(item["file"]).name == f"{back.SOPInstanceUID}.dcm"
        assert back.SOPClassUID == item["sop_class_uid"] == {"Secondary Capture Image Storage": SC,
                                                              "Segmentation Storage": SEG,
                                                              "Comprehensive SR Storage": COMPREHENSIVE_SR}[
            item["sop_class"]]
        assert back.StudyInstanceUID == source.StudyInstanceUID
        assert back.SeriesInstanceUID != source.SeriesInstanceUID
        assert NOT_FOR_DIAGNOSIS in back.SeriesDescription
        for value in (SYNTHETIC_IDENTIFIERS["PatientAddress"], SYNTHETIC_IDENTIFIERS["InstitutionName"]):
            assert value not in str(back)  # only the patient and study modules are copied
        if back.SOPClassUID != COMPREHENSIVE_SR:
            assert (back.Rows, back.Columns) == (source.Rows, source.Columns)
            assert references_source(back, source)
        objects[(item["method"], str(back.SOPClassUID))] = back
    text = json.dumps(data)
    for value in [path.stem, *SYNTHETIC_IDENTIFIERS.values()]:
        assert value not in text  # file names come from the new SOP Instance UIDs only

    for method in ("gradcam", "random"):
        seg = hd.seg.Segmentation.from_dataset(objects[(method, SEG)])
        assert seg.get_segment_numbers() == [1, 2]  # top-p% and SegX-refined
        assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID,
                                                source.SOPInstanceUID)]
        top = np.asarray(objects[(method, SEG)].pixel_array, bool)[0]
        assert 0.05 < top.mean() < 0.2

    sr = objects[(None, COMPREHENSIVE_SR)]
    assert sr.Modality == "SR" and sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PatientID == source.PatientID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME
    evidence = {uid for item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in item.ReferencedSeriesSequence for uid in
                (ref.ReferencedSOPInstanceUID for ref in series.ReferencedSOPSequence)}
    assert evidence == {source.SOPInstanceUID, *(o.SOPInstanceUID for k, o in objects.items() if k[0])}
    referenced = {ref.ReferencedSOPInstanceUID for item in _content_items(sr)
                  for ref in item.get("ReferencedSOPSequence") or []}
    assert source.SOPInstanceUID in referenced
    assert {objects[(m, SEG)].SOPInstanceUID for m in ("gradcam", "random")} <= referenced

    report = _report(sr)
    prediction = engine.predict(load_radiograph(path), "demo")
    groups = {str(g.tracking_identifier): g for g in report.get_image_measurement_groups()}
    assert len(groups) == len(prediction.labels)
    for finding in prediction.to_dict()["findings"]:
        group = groups[f"demo finding {finding['label']}"]
        assert group.finding_type.value == finding_code(finding["label"]).value
        values = {str(m.name.meaning): m.value for m in group.get_measurements()}
        assert values["Probability"] == pytest.approx(finding["probability"], abs=1e-12)
        assert values["CAD Operating Point"] == pytest.approx(finding["threshold"], abs=1e-12)
        (evaluation,) = group.get_qualitative_evaluations(name=finding_code(finding["label"]))
        assert evaluation.value.meaning == ("Present" if finding["positive"] else "Absent")

    planar = {str(g.tracking_identifier): g for g in report.get_planar_roi_measurement_groups()}
    assert set(planar) == {"gradcam Effusion", "gradcam Effusion SegX", "random Effusion", "random Effusion SegX"}
    algorithms = {str(i.TextValue) for i in _content_items(sr) if i.ValueType == "TEXT"}
    assert {"demo gradcam", "demo random"} <= algorithms
    assert planar["gradcam Effusion"].method.meaning == "Gradient-weighted class activation"
    assert planar["random Effusion"].method.value == "random"
    for method, verdict in (("gradcam", "agree"), ("random", "unsure")):
        group = planar[f"{method} Effusion"]
        assert group.reference_type.meaning == "Referenced Segmentation Frame"
        segu = data["methods"][method]["segu"]
        measured = {str(m.name.value): m.value for m in group.get_measurements()}
        for code, key in (("ciou", "ciou"), ("cauitc", "cauitc"), ("inside-mass", "inside_mass")):
            assert measured[code] == pytest.approx(segu[key], abs=1e-12)
        assert ("111012" in measured) == (segu["certainty"] is not None)  # DCM Certainty of Finding
        if segu["certainty"] is not None:
            assert measured["111012"] == pytest.approx(segu["certainty"], abs=1e-12)
        evaluations = {str(q.name.value): str(q.value.value) for q in group.get_qualitative_evaluations()}
        assert evaluations["review-verdict"] == verdict and evaluations["region"] == "top-p"
        assert evaluations.get("segu-verdict") == segu.get("verdict")
    assert data["methods"]["gradcam"]["segu"]["certainty"] is not None  # the bundled demo-lesion calibration


def test_a_non_dicom_input_gets_one_clear_line_and_nothing_is_written(tmp_path, capsys, sample_png):
    out = tmp_path / "dicom"
    code = main(["explain", str(sample_png), "--target", "Effusion", "--dicom-out", str(out), "--device", "cpu"])
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --dicom-out needs a DICOM source")
    assert "PNG" in lines[0] and "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()


def test_explain_without_dicom_out_is_unchanged_and_bad_verdicts_are_refused(tmp_path, capsys):
    path, _ = held_out_dicom(tmp_path, rows=128, columns=112)
    assert main(["explain", str(path), "--target", "Effusion", "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"model", "target", "methods", "out_of_domain", "ood_score", "ood_threshold", "ood_note"}
    assert set(data["methods"]["gradcam"]) == {"seconds", "map"}
    for argv in (["--verdict", "agree"], ["--dicom-out", str(tmp_path / "d"), "--verdict", "gradcam=maybe"],
                 ["--dicom-out", str(tmp_path / "d"), "--verdict", "ig=agree"],
                 ["--dicom-out", str(tmp_path / "d"), "--region-percent", "0"]):
        assert main(["explain", str(path), "--target", "Effusion", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
    assert tuple(REVIEW_VERDICTS) == tuple(VERDICTS)


def test_no_methods_or_an_unwritable_folder_give_one_clear_line(tmp_path, capsys):
    path, _ = held_out_dicom(tmp_path, rows=128, columns=112)
    assert main(["explain", str(path), "--target", "Effusion", "--methods", ",", "--dicom-out",
                 str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --methods names no method") and "Traceback" not in err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["explain", str(path), "--target", "Effusion", "--device", "cpu", "--dicom-out",
                 str(blocker / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the DICOM results") and len(err.strip().splitlines()) == 1


def test_report_leaves_undefined_values_out_and_needs_results_of_the_source_study(tmp_path):
    _, ds = held_out_dicom(tmp_path, rows=96, columns=80)
    source = source_dataset(to_bytes(ds))
    relevance = np.random.default_rng(1).random((source.Rows, source.Columns)).astype(np.float32)
    results = results_for(source, relevance, ResultInfo("ig", "Nodule", "demo"))
    findings = [{"label": "Nodule", "probability": 0.61, "threshold": 0.42, "positive": True},
                {"label": "Atelectasis", "probability": float("nan"), "threshold": 0.5, "positive": False}]
    sr = structured_report(source, model="demo", target="Nodule", findings=findings, methods=[
        MethodReport("ig", results, {"ciou": math.nan, "cauitc": 0.25, "inside_mass": 0.5, "certainty": None,
                                     "verdict": "doubt"}),
        MethodReport("xrai")])  # no result objects: the group refers to the source image
    back = pydicom.dcmread(io.BytesIO(to_bytes(sr)))
    report = _report(back)
    groups = {str(g.tracking_identifier): g for g in report.get_image_measurement_groups()}
    assert set(groups) == {"demo finding Nodule", "demo finding Atelectasis", "xrai Nodule"}
    assert [m.value for m in groups["demo finding Nodule"].get_measurements()] == [0.61, 0.42]
    assert [str(m.name.meaning) for m in groups["demo finding Atelectasis"].get_measurements()] == [
        "CAD Operating Point"]
    assert groups["xrai Nodule"].method.value == "xrai" and not groups["xrai Nodule"].get_measurements()
    assert finding_code("Atelectasis").scheme_designator == SCHEME and finding_code("Nodule").value == "27925004"
    (planar,) = report.get_planar_roi_measurement_groups()
    assert [str(m.name.value) for m in planar.get_measurements()] == ["cauitc", "inside-mass"]
    assert {str(q.name.value): str(q.value.value) for q in planar.get_qualitative_evaluations()
            if q.name.scheme_designator == SCHEME} == {"region": "top-p", "segu-verdict": "doubt"}
    # the source has Patient Orientation and Imager Pixel Spacing: it is described in the image library
    assert any(i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library" for i in _content_items(back))

    other = results_for(source, relevance, ResultInfo("ig", "Nodule", "demo"))
    other[0].StudyInstanceUID = generate_uid()
    with pytest.raises(InputError, match="source study"):
        structured_report(source, model="demo", target="Nodule", findings=findings, methods=[
            MethodReport("ig", other)])
    with pytest.raises(InputError, match="verdict"):
        structured_report(source, model="demo", target="Nodule", findings=findings, methods=[
            MethodReport("ig", results, verdict="maybe")])


def _out_of_domain_marks(listed: list[dict]) -> dict[str, bool]:
    marks = {}
    for item in listed:
        back = pydicom.dcmread(item["file"])
        if back.SOPClassUID == COMPREHENSIVE_SR:
            names = [str(i.ConceptNameCodeSequence[0].CodeMeaning) for i in _content_items(back)
                     if "ConceptNameCodeSequence" in i and "ConceptCodeSequence" in i]
            flagged = [str(i.ConceptCodeSequence[0].CodeMeaning) for i in _content_items(back)
                       if "ConceptNameCodeSequence" in i and "ConceptCodeSequence" in i
                       and "training domain" in str(i.ConceptNameCodeSequence[0].CodeMeaning)]
            assert any("training domain" in n for n in names), "every finding carries the guard's verdict"
            marks["sr"] = "OUT OF DOMAIN" in back.SeriesDescription and set(flagged) == {"Present"}
            assert marks["sr"] or set(flagged) == {"Absent"}
        elif back.SOPClassUID == SC:
            marks["overlay"] = "OUT OF DOMAIN" in str(back.get("ImageComments", ""))
        else:
            marks["segmentation"] = "OUT OF DOMAIN" in str(back.get("ContentDescription", ""))
    return marks


def test_every_dicom_result_carries_the_out_of_domain_verdict(tmp_path, capsys):
    path, source = held_out_dicom(tmp_path, columns=256)  # square, as the phantom films the model was trained on
    assert main(["explain", str(path), "--target", "Effusion", "--methods", "gradcam", "--dicom-out",
                 str(tmp_path / "in"), "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["out_of_domain"] is False
    assert _out_of_domain_marks(data["dicom"]) == {"overlay": False, "segmentation": False, "sr": False}

    noise = np.random.default_rng(0).integers(0, 4096, (source.Rows, source.Columns)).astype(np.uint16)
    source.PixelData = noise.tobytes()  # a film of noise: nothing like a chest radiograph
    odd = tmp_path / "noise.dcm"
    source.save_as(odd, enforce_file_format=True)
    assert main(["explain", str(odd), "--target", "Effusion", "--methods", "gradcam", "--dicom-out",
                 str(tmp_path / "out"), "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["out_of_domain"] is True
    assert _out_of_domain_marks(data["dicom"]) == {"overlay": True, "segmentation": True, "sr": True}
