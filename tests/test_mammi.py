"""MAMMI: representative selection, adaptive matching, concept extraction, the store, validation, end to end."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

from xai_core.mammi import (
    PROMPT_TEMPLATES,
    AnnotationStore,
    NeuronRecord,
    annotate_neurons,
    concept_scores,
    extract_concepts,
    representatives,
    select_concepts,
    validate_output_layer,
    write_annotation,
)

SMALL_VLM = "openclip:ViT-S-32:random"  # no checkpoint can be downloaded here: a randomly initialised open_clip model


def test_representatives_use_the_adaptive_threshold_and_cap():
    acts = np.array([[0.0, 5.0, 1.0], [10.0, 5.0, 1.0], [9.5, 5.0, 1.0], [9.0, 5.0, 1.0], [2.0, 5.0, 1.0]])
    acts[:, 2] = [0.0, 0.0, 0.0, 0.0, 100.0]  # a rare finding: one image only
    chosen = representatives(acts, percentile=93)
    # neuron 0: T = 10 - 0.07 * 10 = 9.3 -> images 1 (10) and 2 (9.5), most active first; 9.0 is below
    assert chosen[0].tolist() == [1, 2]
    assert chosen[1].tolist() == [], "a constant neuron has nothing to explain"
    assert chosen[2].tolist() == [4], "rare findings are not padded with unrelated images"
    assert representatives(acts, percentile=93, cap=1)[0].tolist() == [1]
    assert representatives(acts, percentile=99)[0].tolist() == [1], "T = 9.9: only the top image"
    with pytest.raises(ValueError):
        representatives(acts, percentile=0)


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_adaptive_matching_subtracts_the_base_prompt_and_keeps_near_ties():
    images = _unit([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])
    concepts = _unit([[1.0, 0.0, 0.2], [0.98, 0.0, 0.25], [0.0, 1.0, 0.0]])
    base = _unit([0.0, 0.0, 1.0])
    scores = concept_scores(images, concepts, base)
    expected = (images @ concepts.T - (images @ base)[:, None]).sum(0)
    np.testing.assert_allclose(scores, expected)
    found = select_concepts(scores, ["effusion", "pleural effusion", "nodule"], beta=0.95)
    assert found.concepts[0] == "effusion" and "nodule" not in found.concepts and not found.uncertain
    assert found.concepts == ["effusion", "pleural effusion"], "a near tie (> beta * max) is kept"


def test_non_positive_scores_fall_back_to_top_k_flagged_uncertain():
    found = select_concepts(np.array([-0.3, -0.1, -0.2, -0.5]), ["a", "b", "c", "d"], top_k=2)
    assert found.uncertain and found.concepts == ["b", "c"]
    with pytest.raises(ValueError):
        select_concepts(np.array([1.0]), ["a", "b"])


REAL_OPENI_STYLE = [  # report sentences in the OpenI style (plurals, lists, boilerplate)
    "The heart is normal in size. The mediastinum is unremarkable. Small bilateral pleural effusions.",
    "Left pleural effusion. No pneumothorax. Calcified granulomas in the right upper lobe.",
    "Stable calcified granuloma. Lungs are clear. No pleural effusion, pneumothorax, or focal consolidation.",
    "Mild cardiomegaly. Right pleural effusion with adjacent atelectasis. Degenerative changes of the spine.",
]


def test_concept_extractor_merges_plurals_drops_generic_words_and_finds_phrases():
    terms = extract_concepts(REAL_OPENI_STYLE, min_count=2)
    assert "pleural effusion" in terms and "effusion" in terms
    assert "effusions" not in terms and "pleural effusions" not in terms, "plurals merge into the singular"
    assert {"granuloma", "calcified granuloma"} <= set(terms) and "granulomas" not in terms
    for generic in ("right", "left", "small", "mild", "normal", "size", "stable", "pleural", "calcified"):
        assert generic not in terms, generic
    assert "pneumothorax" in terms


def test_real_openi_concept_set_is_large_medical_and_free_of_generic_words():
    from xai_core.mammi.concepts import GENERIC_WORDS, concept_set, openi_reports

    assert len(openi_reports()) > 3000
    terms = concept_set("openi")
    assert 200 <= len(terms) <= 1000
    for finding in ("effusion", "pleural effusion", "cardiomegaly", "pneumothorax", "nodule", "atelectasis",
                    "consolidation", "edema", "opacity", "emphysema"):
        assert finding in terms, finding
    assert not set(terms) & GENERIC_WORDS
    for word in ("increase", "remainder", "appropriate", "better", "indicate", "subtle", "sequelae"):
        assert word not in terms, f"'{word}' (report wording or a plural) is not a concept"
    assert "sequela" in terms
    assert not any("xxxx" in t for t in terms), "anonymisation marks are not concepts"


def test_store_round_trip(tmp_path):
    record = NeuronRecord(neuron=3, name="features.norm5:3", concepts=["nodule", "pulmonary nodule"],
                          scores=[2.5, 2.4], uncertain=False, representatives=["train-0-000007", "train-0-000001"],
                          activations=[1.5, 1.2], stats={"mean": 0.2, "std": 0.1, "min": 0.0, "max": 1.5,
                                                          "threshold": 1.395},
                          histogram={"counts": [3, 1], "edges": [0.0, 0.75, 1.5]}, weights={"Nodule": 0.8})
    path = write_annotation(tmp_path / "a.sqlite", {"model": "demo", "concepts": ["nodule"]}, [record],
                            {"train-0-000007": b"png"})
    store = AnnotationStore(path)
    assert store.meta() == {"model": "demo", "concepts": ["nodule"]}
    assert store.neuron(3) == record and store.neuron_ids() == [3]
    assert store.search("NODULE") == [3] and store.search("effusion") == []
    assert store.thumbnail("train-0-000007") == b"png" and store.thumbnail("nope") is None
    with pytest.raises(KeyError):
        store.neuron(4)
    store.close()
    assert not (tmp_path / "a.sqlite.tmp").exists(), "written atomically"


def test_output_layer_validation_metrics():
    assigned = [["pleural effusion", "effusion"], ["mass"], ["lung mass", "heart"]]
    result = validate_output_layer(["Effusion", "Nodule", "Mass"], assigned, [0.5, 0.7, 0.9])
    assert result["hit_rate"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert result["recall"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert result["f1"] == pytest.approx(0.5)
    assert result["mean_vlm_similarity"] == pytest.approx(0.7), "as given: measured in the VLM's own space"
    # independent of any VLM: the top concept's lexical similarity to the label (1, 0 and 1 here)
    assert result["mean_lexical_similarity"] == pytest.approx(2 / 3)


def test_annotate_end_to_end_with_an_open_clip_backend(tmp_path):
    out = tmp_path / "output.sqlite"
    # the random ViT-S-32 text tower is slow on a CPU: the other concept set is validated with demo-clip (below)
    summary = annotate_neurons("demo", "output", SMALL_VLM, "demo", "phantom:train", 48, out, progress=False,
                               validation_sets=())
    assert summary["neurons"] == 7 and summary["path"] == str(out)
    validation = summary["validation"]
    numbers = {"hit_rate", "precision", "recall", "f1", "mean_lexical_similarity", "mean_vlm_similarity"}
    assert numbers <= set(validation) and set(validation["concept_sets"]) == {"demo"}
    assert list(validation["templates"]) == list(PROMPT_TEMPLATES)
    store = AnnotationStore(out)
    meta = store.meta()
    assert meta["vlm"] == SMALL_VLM and meta["n"] == 48 and meta["layer"] == "output"
    effusion = store.neuron(store.meta()["labels"].index("Effusion"))
    assert effusion.name == "Effusion" and effusion.weights["Effusion"] == 1.0
    assert effusion.representatives and all(store.thumbnail(i) for i in effusion.representatives[:12])
    assert effusion.activations == sorted(effusion.activations, reverse=True)
    assert effusion.concepts, "every neuron with representatives gets concepts (or the flagged fallback)"
    assert not out.with_suffix(".activations.npz").exists(), "the resume cache is removed once the file is written"


def test_output_layer_validation_reports_both_concept_sets_and_every_template(tmp_path):
    out = tmp_path / "output.sqlite"
    summary = annotate_neurons("demo", "output", "demo-clip", "demo", "phantom:train", 48, out, progress=False)
    validation = summary["validation"]
    assert set(validation["concept_sets"]) == {"demo", "openi"}, "both concept sets, whichever the run used"
    own = validation["concept_sets"]["demo"]
    assert own["hit_rate"] == validation["hit_rate"] and own["templates"] == validation["templates"]
    assert own["terms"] == summary["concepts_in_set"] >= 100
    assert validation["concept_sets"]["openi"]["terms"] >= 200
    for result in validation["concept_sets"].values():
        assert list(result["templates"]) == list(PROMPT_TEMPLATES), "MAMMI's template and the two held-out ones"
        assert all(0.0 <= hit <= 1.0 for hit in result["templates"].values())
        assert result["templates"][PROMPT_TEMPLATES[0]] == result["hit_rate"]
        assert result["labels_in_set"] == 7, "every label has a term in both sets: a hit is possible for each"
        assert 0.0 <= result["mean_lexical_similarity"] <= 1.0
    assert AnnotationStore(out).meta()["validation"] == json.loads(json.dumps(validation)), "stored with the run"


def test_annotation_resumes_from_cached_activations(tmp_path, monkeypatch):
    import xai_core.mammi.annotate as annotate

    out = tmp_path / "features.sqlite"
    calls = []
    real = annotate.layer_activations

    def counting(handle, x, layer):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(handle, x, layer)

    monkeypatch.setattr(annotate, "layer_activations", counting)
    with pytest.raises(KeyboardInterrupt):
        annotate_neurons("demo", "features", SMALL_VLM, "demo", "phantom:train", 80, out, progress=False)
    assert out.with_suffix(".activations.npz").is_file() and not out.exists()
    summary = annotate_neurons("demo", "features", SMALL_VLM, "demo", "phantom:train", 80, out, progress=False)
    assert calls == [64, 16, 16], "interrupted in the second batch; the rerun computes only that batch"
    store = AnnotationStore(out)
    record = store.neuron(0)
    assert set(record.weights) == set(store.meta()["labels"]), "feature neurons carry their head weights"
    assert summary["validation"] is None


def test_output_neurons_fire_as_probabilities_and_caches_are_not_mixed(tmp_path):
    import xai_core.mammi.annotate as annotate
    from xai_core.models import load_model

    handle = load_model("demo")
    probe = annotate.probe_set("phantom:train", 8)
    x = annotate.to_model_range(probe.load(list(range(8)), handle.card.input.size), handle)
    probabilities = annotate.layer_activations(handle, x, "output")
    with torch.inference_mode():
        torch.testing.assert_close(probabilities, torch.sigmoid(handle.module(x)))
    cache = tmp_path / "acts.npz"
    features = annotate.probe_activations(handle, probe, "features", cache=cache, progress=False)
    output = annotate.probe_activations(handle, probe, "output", cache=cache, progress=False)
    assert features.shape[1] != output.shape[1] and ((output >= 0) & (output <= 1)).all()
    stored = dict(np.load(cache, allow_pickle=False))
    np.savez(cache, **{**stored, "acts": np.full_like(stored["acts"], 7.0)})
    assert (annotate.probe_activations(handle, probe, "output", cache=cache, progress=False) == 7.0).all(), \
        "the same weights resume from the cache"
    np.savez(cache, **{**stored, "acts": np.full_like(stored["acts"], 7.0), "weights": "other-weights"})
    np.testing.assert_allclose(annotate.probe_activations(handle, probe, "output", cache=cache, progress=False),
                               output, atol=1e-6, err_msg="another model's activations are recomputed")


def test_cli_annotate_neurons_json(tmp_path, capsys):
    from xai_core.cli import main

    out = tmp_path / "cli.sqlite"
    code = main(["annotate-neurons", "--layer", "output", "--vlm", "demo-clip", "--n", "32", "--out", str(out),
                 "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["path"] == str(out)
    assert {"hit_rate", "precision", "recall", "f1"} <= set(result["validation"])
    assert set(result["validation"]["concept_sets"]) == {"demo", "openi"}
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT COUNT(*) FROM neurons").fetchone()[0] == 7


def test_bad_backend_and_probe_specs_are_clear():
    from xai_core.mammi import load_backend, probe_set

    with pytest.raises(ValueError, match="openclip:<arch>:<pretrained>"):
        load_backend("openclip:ViT-S-32")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_backend("openclip:ViT-S-32:laion2b")
    with pytest.raises(ValueError, match="not an image-text model"):
        load_backend("demo")
    with pytest.raises(FileNotFoundError, match="phantom:<split>"):
        probe_set("/no/such/folder", 10)


def test_top_neurons_rank_by_contribution():
    from xai_core.engine import Engine
    from xai_core.imaging import Radiograph
    from xai_core.phantom import generate_case

    demo_engine = Engine("cpu")

    case = generate_case("test", 3, findings=["Effusion"])
    radiograph = Radiograph.from_array(case.image, source_name=case.case_id)
    top = demo_engine.top_neurons(radiograph, "demo", "Effusion", k=4)
    assert len(top) == 4
    contributions = [n["contribution"] for n in top]
    assert contributions == sorted(contributions, reverse=True)
    for n in top:
        assert n["contribution"] == pytest.approx(n["weight"] * n["activation"], rel=1e-5)
        assert n["map"].shape == (224, 224) and n["map"].min() >= 0.0 and n["map"].max() <= 1.0
