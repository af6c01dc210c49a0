"""One DICOM Structured Report per explained image, made with highdicom, for the PACS the source image came from.

The document is a Comprehensive SR (`hd.sr.ComprehensiveSR`, 1.2.840.10008.5.1.4.1.1.88.33) holding the TID 1500
Measurement Report template. Comprehensive rather than Comprehensive 3D: a projection radiograph has no patient-space
coordinates, so the document needs no SCOORD3D item, and Comprehensive SR is the IOD that allows everything it does
use (numeric measurements, coded evaluations, image references, a referenced segment). highdicom 0.28 builds TID 1500
for it without work-arounds; an Enhanced SR or a Key Object Selection document would not carry the numbers.

The report, in a new series of the source study (series description with "NOT FOR DIAGNOSTIC USE"):
- observation context: the model as a device observer (no person: the reviewer is never named);
- procedure reported: chest imaging, plain radiography (SCT); the image library describes the source where
  highdicom can (a CR/DX source needs Patient Orientation and Imager Pixel Spacing for it; without them the source
  is referenced by every group instead);
- one measurement group (TID 1501) per finding of the model: finding type, its probability (DCM 122157) and
  operating point (DCM 111071 "CAD Operating Point"), and whether the model reports it (SCT Present / Absent);
- one planar ROI group (TID 1410) per method explained, referencing segment 1 (the top-p% relevance region) of the
  method's Segmentation: the method, the target finding, SegU's cIoU, cAUITC and inside mass, the calibrated
  certainty (DCM 111012 "Certainty of Finding") and SegU's verdict where given, and the reviewer's verdict where
  given; with a SegX-refined region (segment 2), a second group references it (a method given without a
  Segmentation gets a TID 1501 group on the source image instead);
- the source image and every result object (Secondary Capture overlays, Segmentations) as evidence (Current
  Requested Procedure Evidence Sequence).
Findings, methods and measures without a code in pydicom's dictionaries use the private coding scheme `99XAI`,
declared in the Coding Scheme Identification Sequence. Values that are undefined (NaN, no calibration) are left out.

Like the other result objects the report carries the source's patient and study modules, as DICOM requires, and no
other identifier; it is meant for the PACS only and is never written to the case store, a cache or a log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from xai_core.dicomweb.results import (
    MANUFACTURER,
    MODEL_NAME,
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_VERSION,
    new_instance,
    source_dataset,
)
from xai_core.errors import InputError

SR_SERIES_NUMBER = 9003
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SCHEME = "99XAI"  # private coding scheme designator (DICOM keeps the "99" prefix for local schemes)
SCHEME_NAME = "XAI dashboard concepts"
REVIEW_VERDICTS = ("agree", "disagree", "unsure")  # as the case store's verdicts
_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")  # highdicom's projection radiography modalities


def xai_code(value: str, meaning: str) -> Code:
    """A concept of the private coding scheme (code values are at most 16 characters)."""
    return Code(value[:16], SCHEME, meaning[:64])


# Findings (NIH / torchxrayvision names) with a SNOMED CT concept in pydicom's dictionary; the others are private.
_FINDING_CODES: dict[str, Code] = {
    "Cardiomegaly": codes.SCT.Cardiomegaly,
    "Effusion": codes.SCT.PleuralEffusion,
    "Nodule": codes.SCT.Nodule,
    "Mass": codes.SCT.Mass,
    "Pneumothorax": codes.SCT.Pneumothorax,
    "Edema": codes.SCT.PulmonaryEdema,
    "Fibrosis": codes.SCT.Fibrosis,
}
_METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM",
                 "ig": "Integrated Gradients", "xrai": "XRAI", "nemt": "NEMt explanation module",
                 "random": "Random map (baseline)"}
CIOU = xai_code("ciou", "SegU cIoU (top-p% relevance vs SegU region)")
CAUITC = xai_code("cauitc", "SegU cAUITC (area under the IoU-threshold curve)")
INSIDE_MASS = xai_code("inside-mass", "SegU inside mass (relevance share inside the SegU region)")
SEGU_METHOD = xai_code("segu", "SegU calibrated certainty")
SEGU_VERDICT = xai_code("segu-verdict", "SegU verdict")
REVIEWER_VERDICT = xai_code("review-verdict", "Reviewer verdict")
OUT_OF_DOMAIN = xai_code("out-of-domain", "Input outside the model's training domain (findings unreliable)")
REGION = xai_code("region", "Relevance region")
TOP_REGION = xai_code("top-p", "Top-p% relevance pixels (Segmentation segment 1)")
REFINED_REGION = xai_code("segx-refined", "SegX: top-p% relevance inside the finding's anatomy (segment 2)")
_SEGU_VERDICTS = {"trust": xai_code("trust", "Explanation on the suspected lesion"),
                  "doubt": xai_code("doubt", "Explanation elsewhere")}
_REVIEW_CODES = {"agree": xai_code("agree", "Reviewer agrees with the explanation"),
                 "disagree": xai_code("disagree", "Reviewer disagrees with the explanation"),
                 "unsure": xai_code("unsure", "Reviewer is unsure about the explanation")}


def finding_code(label: str) -> Code:
    """The finding's SNOMED CT concept where pydicom has one, else a private concept named by the label."""
    return _FINDING_CODES.get(label) or xai_code("f-" + "".join(c for c in label.lower() if c.isalnum()), label)


def method_code(method: str) -> Code:
    """Grad-CAM is DCM 130403 (gradient-weighted class activation); every other method is a private concept."""
    if method == "gradcam":
        return codes.DCM.GradientWeightedClassActivation
    return xai_code(method, _METHOD_NAMES.get(method, method))


@dataclass(frozen=True)
class MethodReport:
    """What the report says about one explained method: its result objects (the overlay Secondary Capture and the
    region Segmentation), SegU's scores and certainty (`Engine.certainty`'s dict) and the reviewer's verdict."""

    method: str
    results: Sequence[Dataset] = ()
    segu: Mapping[str, Any] | None = None
    verdict: str | None = None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _measurement(name: Code, value: Any, unit: Code = codes.UCUM.NoUnits, **kwargs: Any) -> hd.sr.Measurement | None:
    number = _number(value)
    return None if number is None else hd.sr.Measurement(name=name, value=number, unit=unit, **kwargs)


def _algorithm(model: str, method: str | None = None) -> hd.sr.AlgorithmIdentification:
    name = f"{model} {method}" if method else model
    return hd.sr.AlgorithmIdentification(name=name[:64], version=SOFTWARE_VERSION,
                                         family=codes.DCM.ArtificialIntelligence, manufacturer=MANUFACTURER)


def _finding_group(finding: Mapping[str, Any], model: str, source: Dataset,
                   out_of_domain: bool | None = None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    label = str(finding["label"])
    code = finding_code(label)
    measurements = [m for m in (_measurement(codes.DCM.Probability, finding.get("probability")),
                                _measurement(codes.DCM.CADOperatingPoint, finding.get("threshold"))) if m]
    evaluations = []
    if finding.get("positive") is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=code, value=codes.SCT.Present if finding["positive"] else codes.SCT.Absent))
    if out_of_domain is not None:  # None: the model has no out-of-domain statistics, nothing was checked
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=OUT_OF_DOMAIN, value=codes.SCT.Present if out_of_domain else codes.SCT.Absent))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{model} finding {label}"[:64]),
        finding_type=code,
        algorithm_id=_algorithm(model),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )


def _segu_items(segu: Mapping[str, Any] | None) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    if not segu:
        return [], []
    measurements = [_measurement(CIOU, segu.get("ciou")), _measurement(CAUITC, segu.get("cauitc")),
                    _measurement(INSIDE_MASS, segu.get("inside_mass")),
                    _measurement(codes.DCM.CertaintyOfFinding, segu.get("certainty"), method=SEGU_METHOD)]
    verdict = _SEGU_VERDICTS.get(str(segu.get("verdict")))
    evaluations = [hd.sr.QualitativeEvaluation(name=SEGU_VERDICT, value=verdict)] if verdict else []
    return [m for m in measurements if m], evaluations


def _segmentation(results: Iterable[Dataset]) -> Dataset | None:
    return next((r for r in results if str(r.SOPClassUID) == SEGMENTATION_STORAGE), None)


def _segment_reference(seg: Dataset, number: int, source: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """A reference to segment `number` of a Segmentation and its frame (highdicom's `from_segmentation` does not
    read a segment identification in the shared functional groups, where a one-segment Segmentation keeps it)."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        identification = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        if identification and int(identification[0].ReferencedSegmentNumber) == number:
            return hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=frame,
                segment_number=number,
                source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID))
    raise InputError(f"the Segmentation has no frame for segment {number}.")


def _method_groups(item: MethodReport, target: str, model: str, source: Dataset) -> list[Any]:
    """The planar ROI group of a method (its top-p% segment) and, with a SegX-refined segment, a second one."""
    measurements, evaluations = _segu_items(item.segu)
    if item.verdict is not None:
        if item.verdict not in REVIEW_VERDICTS:
            raise InputError(f"the verdict for {item.method} is {item.verdict!r}; expected one of "
                             f"{', '.join(REVIEW_VERDICTS)}.")
        evaluations.append(hd.sr.QualitativeEvaluation(name=REVIEWER_VERDICT, value=_REVIEW_CODES[item.verdict]))
    common = {"finding_type": finding_code(target), "method": method_code(item.method),
              "algorithm_id": _algorithm(model, item.method), "finding_category": codes.DCM.VisualExplanation}
    identifier = f"{item.method} {target}"
    seg = _segmentation(item.results)
    if seg is None:  # no region: the scores refer to the source image
        return [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=identifier[:64]),
            measurements=measurements, qualitative_evaluations=evaluations,
            source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
            **common)]
    groups = [hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=identifier[:64]),
        referenced_segment=_segment_reference(seg, 1, source), measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=REGION, value=TOP_REGION), *evaluations], **common)]
    if len(seg.SegmentSequence) > 1:
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{identifier} SegX"[:64]),
            referenced_segment=_segment_reference(seg, 2, source),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=REGION, value=REFINED_REGION)], **common))
    return groups


def _describable(ds: Dataset) -> bool:
    """Whether highdicom can describe the source in the image library: a projection radiograph needs its Patient
    Orientation and Imager Pixel Spacing (many CR/DX files lack them; the source is referenced elsewhere then)."""
    if ds.get("Modality") not in _PROJECTION:
        return True
    return len(ds.get("PatientOrientation") or ()) == 2 and len(ds.get("ImagerPixelSpacing") or ()) == 2


def structured_report(source: Dataset | bytes, *, model: str, target: str, findings: Sequence[Mapping[str, Any]],
                      methods: Sequence[MethodReport], out_of_domain: bool | None = None,
                      series_number: int = SR_SERIES_NUMBER) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one explained image: `findings` are `Prediction.finding` dicts (label, probability,
    threshold, positive), `methods` the explained methods with their result objects (which must be of the source
    study), SegU scores and verdicts; `out_of_domain` the guard's verdict (every finding then carries it; None: not
    checked). A new series of the source study."""
    ds = source_dataset(source)
    if not methods:
        raise InputError("a structured report needs at least one explained method.")
    evidence = [ds, *(r for item in methods for r in item.results)]
    if {str(r.StudyInstanceUID) for r in evidence} != {str(ds.StudyInstanceUID)}:
        raise InputError("every result object in the report must be in the source study.")
    groups: list[Any] = [_finding_group(f, model, ds, out_of_domain) for f in findings]
    for item in methods:
        groups.extend(_method_groups(item, target, model, ds))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, model]), name=model[:64],
        manufacturer_name=MANUFACTURER, model_name=MODEL_NAME)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    content = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=[codes.SCT.ChestImaging, codes.SCT.PlainRadiography],
        imaging_measurements=groups,
        referenced_images=[ds] if _describable(ds) else None,
    )
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content[0],
        **new_instance(series_number),
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=(f"{NOT_FOR_DIAGNOSIS} - XAI report {target}"
                            + (" - OUT OF DOMAIN" if out_of_domain else ""))[:64],
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=SCHEME, name=SCHEME_NAME, version=SOFTWARE_VERSION, responsible_organization=MANUFACTURER)],
    )
