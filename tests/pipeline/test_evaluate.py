"""facesim.pipeline.evaluate: metrics from embeddings by hand, then the stage end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from helpers import (
    RecordingRun,
    evaluate_outputs,
    evaluate_stage_outputs,
    repo_params,
    tiny_train_params,
    train_samples,
    write_tiny_inputs,
)
from facesim.core.checkpoint import load_checkpoint
from facesim.core.inference import from_onnx
from facesim.pipeline import evaluate as evaluate_module
from facesim.core.params import ParamsError
from facesim.pipeline.evaluate import (
    PREDICTION_COLUMNS,
    EvaluateParams,
    calibration_faces,
    evaluate_embeddings,
    evaluate_model,
    evaluate_stage,
)
from facesim.pipeline.faces import Face
from facesim.pipeline.train import train_and_save

pytestmark = pytest.mark.usefixtures("torch_global_state")

# ---- evaluate_embeddings by hand ------------------------------------------------------

# Calibration: the faces of the validation people, P at x = 0 and 1, Q at x = 5 and 8. All 6 unordered
# pairs: same P-P = 1, Q-Q = 3; different 0-5 = 5, 0-8 = 8, 1-5 = 4, 1-8 = 7. Best accuracy (target_far
# None): accepting the k smallest distances, k = 2 gets all 6 right: threshold (3 + 4) / 2 = 3.5,
# calibration accuracy 1. The hand tests below about other things use this threshold.
# At a target FAR: the 4 different-person distances sorted are 4, 5, 7, 8; a target resolves only with
# at least 1 / target_far of them (target_far >= 1/4). target_far 1/4 allows floor(4/4) = 1 false
# accept: the first rejected different pair is 5, the largest distance below it 4, threshold
# (4 + 5) / 2 = 4.5 (accepts 1, 3 and 4: FAR 1/4, FRR 0, accuracy 5/6). target_far 1/2 allows 2: the
# first rejected is 7, the largest below it 5, threshold 6.
CAL_EMBEDDINGS = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [8.0, 0.0]])
CAL_SUBJECTS = ["P", "P", "Q", "Q"]

# Test: three people, two faces each.
#   0 A (0,0)   1 A (2,0)   2 B (5,0)   3 B (5,3)   4 C (0,4)   5 C (0,5)
# All 15 unordered pairs:
#   same:      0-1 = 2, 2-3 = 3, 4-5 = 1
#   different: 0-2 = 5, 0-3 = sqrt34 5.83, 0-4 = 4, 0-5 = 5, 1-2 = 3, 1-3 = sqrt18 4.24,
#              1-4 = sqrt20 4.47, 1-5 = sqrt29 5.39, 2-4 = sqrt41 6.40, 2-5 = sqrt50 7.07,
#              3-4 = sqrt26 5.10, 3-5 = sqrt29 5.39
# At threshold 3.5: all three same pairs accepted (tp 3, fn 0), and 1-2 = 3 (fp 1); tn 11.
#   accuracy 14/15, precision 3/4, recall 1, f1 2 (3/4)(1) / (7/4) = 6/7
# AUC: each same pair against the 12 different ones; 1 and 2 beat all 12, 3 beats 11 and ties
#   1-2 (a half): (12 + 12 + 11.5) / 36 = 71/72
# EER: ROC points (fpr, tpr) at distances 1, 2, 3: (0, 1/3), (0, 2/3), (1/12, 1).
#   Between the last two fnr goes 1/3 -> 0 and fpr 0 -> 1/12; equal at t with t/12 = (1 - t)/3,
#   t = 4/5: EER = 1/15
# Retrieval (each face against the 5 others; one relevant face each):
#   q0 -> 1 (2) hit; q1 -> 0 (2) hit; q2 -> 1 and 3 tie at 3, index 1 (different) first: miss,
#   the relevant face at rank 2; q3 -> 2 (3) hit; q4 -> 5 (1) hit; q5 -> 4 (1) hit.
#   precision@1 = 5/6; precision@5 = 1/5 for everyone (one relevant among all 5 others);
#   mAP = (1 + 1 + 1/2 + 1 + 1 + 1) / 6 = 11/12
TEST_EMBEDDINGS = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 0.0], [5.0, 3.0], [0.0, 4.0], [0.0, 5.0]])
TEST_SUBJECTS = ["A", "A", "B", "B", "C", "C"]
# Sampled test pairs: 0-1 = 2 (same), 2-3 = 3 (same), 0-2 = 5 (diff), 4-5 = 1 (same), 1-2 = 3 (diff).
# At 3.5: accept 0-1, 2-3, 4-5 (tp 3) and 1-2 (fp 1), reject 0-2 (tn 1): accuracy 4/5,
#   precision 3/4, recall 1, f1 6/7. (On these pairs alone the best threshold would be 2.5:
#   the threshold must come from calibration.)
# AUC: same {1, 2, 3} vs different {5, 3}: 5 wins and one tie -> 5.5/6 = 11/12
# EER: ROC (0, 1/3), (0, 2/3), (1/2, 1): t/2 = (1 - t)/3, t = 2/5 -> EER 1/5
TEST_PAIRS = (np.array([0, 2, 0, 4, 1]), np.array([1, 3, 2, 5, 2]), np.array([1, 1, 0, 1, 0]))
# TAR at FAR 1% and 0.1%: far fewer than 100 different pairs in every set, so the share of same pairs
# accepted with no false accept. Calibration: same 1, 3 both below every different pair -> 1. Test and
# all pairs: same 1 and 2 below every different pair, same 3 ties the different 1-2 = 3 -> 2/3.


@pytest.fixture
def hand_metrics():
    """At the best-accuracy threshold (3.5): the calibration pairs are too few for a 1% target."""
    return evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS,
                               retrieval_k=(1, 5), target_far=None)


def test_evaluate_embeddings_threshold_is_calibrated_on_all_pairs_of_the_validation_people(hand_metrics):
    metrics, _ = hand_metrics
    assert metrics["threshold"] == 3.5 and metrics["target_far"] is None  # None: the best accuracy
    assert metrics["validation"]["n_pairs"] == 6
    assert metrics["validation"]["accuracy"] == 1.0
    assert metrics["test"]["threshold"] == metrics["all_pairs"]["threshold"] == 3.5


def test_evaluate_embeddings_tar_at_far_in_every_pair_set_by_hand(hand_metrics):
    metrics, _ = hand_metrics
    for name, tar in (("validation", 1.0), ("test", 2 / 3), ("all_pairs", 2 / 3)):
        assert metrics[name]["tar_at_far_1e-2"] == pytest.approx(tar), name
        assert metrics[name]["tar_at_far_1e-3"] == pytest.approx(tar), name


@pytest.mark.parametrize("target_far, threshold", [(0.25, 4.5), (0.5, 6.0)])
def test_evaluate_embeddings_threshold_at_a_target_far_by_hand(target_far, threshold):
    metrics, _ = evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS,
                                     target_far=target_far)
    assert metrics["threshold"] == threshold and metrics["target_far"] == target_far
    assert metrics["test"]["threshold"] == metrics["all_pairs"]["threshold"] == threshold
    assert metrics["validation"]["far"] <= target_far  # what the threshold promises, on the calibration pairs


def test_evaluate_embeddings_at_a_target_far_of_a_quarter_by_hand():
    metrics, _ = evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS,
                                     target_far=0.25)
    # calibration at 4.5: same 1, 3 and different 4 accepted; 5, 7, 8 rejected
    assert {k: metrics["validation"][k] for k in ("far", "frr", "accuracy", "tp", "fp", "tn", "fn")} == \
        pytest.approx({"far": 1 / 4, "frr": 0.0, "accuracy": 5 / 6, "tp": 2, "fp": 1, "tn": 3, "fn": 0})
    # all test pairs at 4.5: the 3 same accepted; of the 12 different, 1-2 = 3, 0-4 = 4, 1-3 = 4.24 and
    # 1-4 = 4.47 accepted (fp 4, tn 8): FAR 1/3, FRR 0, accuracy 11/15, precision 3/7
    expected = {"far": 1 / 3, "frr": 0.0, "accuracy": 11 / 15, "precision": 3 / 7, "recall": 1.0,
                "tp": 3, "fp": 4, "tn": 8, "fn": 0}
    assert {k: metrics["all_pairs"][k] for k in expected} == pytest.approx(expected)
    # the sampled pairs [2, 3, 5, 1, 3] get the verdicts they got at 3.5: only 0-2 = 5 is above either
    assert {k: metrics["test"][k] for k in ("accuracy", "tp", "fp", "tn", "fn")} == \
        pytest.approx({"accuracy": 4 / 5, "tp": 3, "fp": 1, "tn": 1, "fn": 0})
    # the threshold-free numbers do not depend on the operating point
    best, _ = evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS,
                                  target_far=None)
    for key in ("roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3"):
        assert metrics["all_pairs"][key] == best["all_pairs"][key], key
    assert metrics["retrieval"] == best["retrieval"]


@pytest.mark.parametrize("target_far, pairs", [(0.01, 100), (0.24, 5)])
def test_evaluate_embeddings_refuses_a_target_far_the_calibration_pairs_cannot_resolve(target_far, pairs):
    # 4 different-person calibration pairs resolve a target of 1/4 and above, no less
    with pytest.raises(ParamsError, match=rf"^evaluate\.target_far={target_far:g} cannot be calibrated on the "
                                          rf"validation people: .*needs at least {pairs} different-person pairs "
                                          rf"to resolve it, got 4 .*; choose a larger evaluate\.target_far, .*or "
                                          rf"evaluate\.operating_point: best_accuracy$"):
        evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS,
                            target_far=target_far)


def test_evaluate_embeddings_calibrates_for_the_default_target_far():
    with pytest.raises(ParamsError, match=r"evaluate\.target_far=0\.004 "):
        evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS)


def test_evaluate_embeddings_sampled_test_pairs_by_hand(hand_metrics):
    metrics, distances = hand_metrics
    assert np.allclose(distances["test"], [2, 3, 5, 1, 3])
    expected = {"accuracy": 4 / 5, "precision": 3 / 4, "recall": 1.0, "f1": 6 / 7,
                "roc_auc": 11 / 12, "eer": 1 / 5, "tp": 3, "fp": 1, "tn": 1, "fn": 0, "n_pairs": 5}
    assert {k: metrics["test"][k] for k in expected} == pytest.approx(expected)


def test_evaluate_embeddings_all_pairs_by_hand(hand_metrics):
    metrics, distances = hand_metrics
    expected = {"accuracy": 14 / 15, "precision": 3 / 4, "recall": 1.0, "f1": 6 / 7,
                "roc_auc": 71 / 72, "eer": 1 / 15, "tp": 3, "fp": 1, "tn": 11, "fn": 0, "n_pairs": 15,
                "far": 1 / 12, "frr": 0.0}
    assert {k: metrics["all_pairs"][k] for k in expected} == pytest.approx(expected)
    # the pairs themselves: i < j, labels by subject, distances as listed above
    first, second = distances["all_pairs_first"], distances["all_pairs_second"]
    assert len(first) == 15 and np.all(first < second)
    assert distances["all_pairs_label"].tolist() == [TEST_SUBJECTS[i] == TEST_SUBJECTS[j]
                                                      for i, j in zip(first, second)]
    same = distances["all_pairs"][distances["all_pairs_label"] == 1]
    assert sorted(same.tolist()) == [1.0, 2.0, 3.0]
    # and the AUC agrees with scikit-learn's
    assert metrics["all_pairs"]["roc_auc"] == pytest.approx(
        roc_auc_score(distances["all_pairs_label"], -distances["all_pairs"]))


def test_evaluate_embeddings_retrieval_by_hand(hand_metrics):
    metrics, _ = hand_metrics
    assert metrics["retrieval"] == pytest.approx({"precision_at_1": 5 / 6, "precision_at_5": 1 / 5, "map": 11 / 12})


def test_evaluate_embeddings_returns_plain_numbers(hand_metrics):
    metrics, _ = hand_metrics
    json.dumps(metrics)  # raises on numpy scalars
    assert type(metrics["threshold"]) is float


def test_evaluate_embeddings_refuses_a_k_beyond_the_gallery():
    with pytest.raises(ValueError, match="between 1 and 5"):
        evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, TEST_PAIRS, retrieval_k=(6,),
                            target_far=None)


def test_evaluate_embeddings_refuses_single_class_test_pairs():
    same_only = (np.array([0, 2]), np.array([1, 3]), np.array([1, 1]))
    with pytest.raises(ValueError, match="single class"):
        evaluate_embeddings(CAL_EMBEDDINGS, CAL_SUBJECTS, TEST_EMBEDDINGS, TEST_SUBJECTS, same_only, target_far=None)


# ---- params -----------------------------------------------------------------------------


def evaluate_params(**changes) -> EvaluateParams:
    """This repository's evaluate section with `changes`."""
    return repo_params(EvaluateParams, "evaluate", **changes)


def test_evaluate_params_parse():
    assert evaluate_params(retrieval_k=[1, 3, 10]).retrieval_k == (1, 3, 10)
    assert evaluate_params().retrieval_k == (1, 5)


def test_evaluate_params_operating_point():
    # the threshold evaluate_embeddings is given: the target FAR, or None for the best accuracy
    assert evaluate_params(target_far=0.001).target() == 0.001
    best = evaluate_params(operating_point="best_accuracy", target_far=0.001)
    assert best.target() is None


@pytest.mark.parametrize("raw, key", [
    ({"target_far": 0}, "target_far"), ({"target_far": 1}, "target_far"), ({"target_far": -0.01}, "target_far"),
    ({"target_far": 1.5}, "target_far"), ({"target_far": "1%"}, "target_far"),
    ({"operating_point": "best_accuracy", "target_far": 2}, "target_far"),
    ({"operating_point": "eer"}, "operating_point"), ({"operating_point": "target-far"}, "operating_point"),
])
def test_evaluate_params_refuse_a_bad_operating_point(raw, key):
    with pytest.raises(ParamsError, match=rf"evaluate\.{key} must "):
        evaluate_params(**raw)


@pytest.mark.parametrize("raw", [{"retrieval_k": [0]}, {"retrieval_k": [1, -5]}, {"retrieval_k": []},
                                 {"retrieval_k": [1.5]}, {"retrieval_k": 5}, {"k": [1]}])
def test_evaluate_params_refuse_bad_retrieval_k(raw):
    with pytest.raises(ParamsError, match=r"evaluate\.(retrieval_k|k)"):
        evaluate_params(**raw)


def test_calibration_faces_are_all_of_them_up_to_the_limit_then_whole_people() -> None:
    # people a..f with 3, 1, 4, 2, 5, 3 faces: 18 in all
    counts = {"a": 3, "b": 1, "c": 4, "d": 2, "e": 5, "f": 3}
    faces = [Face(f"{person}/{k}.png", person) for person, n in counts.items() for k in range(n)]
    assert calibration_faces(faces, 18, seed=0) == faces
    chosen = calibration_faces(faces, 7, seed=0)
    people = {f.subject for f in chosen}
    assert len(chosen) <= 7 and len(chosen) == sum(counts[p] for p in people)  # whole people, within the limit
    assert chosen == [f for f in faces if f.subject in people]  # in their order
    # the seeded shuffle, by hand: people in natural order, permuted with default_rng(0), taken while they fit
    order = np.random.default_rng(0).permutation(sorted(counts)).tolist()
    taken, total = set(), 0
    for person in order:
        if total + counts[person] <= 7:
            taken.add(person)
            total += counts[person]
    assert people == taken
    assert calibration_faces(faces, 7, seed=0) == chosen
    assert any({f.subject for f in calibration_faces(faces, 7, seed=s)} != people for s in range(1, 6))


def test_evaluate_model_reports_a_reduced_calibration_set(stage, tmp_path: Path):
    metrics = evaluate_model("compact-contrastive", evaluate_params(max_calibration_faces=25, seed=3),
                             *stage["loaded"], stage["faces_dir"],
                             stage["pairs"],
                             evaluate_outputs(tmp_path / "eval"))
    val = pd.read_csv(stage["pairs"]["pairs_val"])
    n_validation = len(set(val["image1"]) | set(val["image2"]))
    calibration = metrics["calibration"]
    assert calibration["of_validation_faces"] == n_validation > 25 >= calibration["faces"]
    assert metrics["validation"]["n_pairs"] == calibration["faces"] * (calibration["faces"] - 1) // 2
    assert "calibration" not in stage["metrics"]  # all validation faces fit: nothing said


# ---- evaluate_model end to end ----------------------------------------------------------

TINY = tiny_train_params(seed=5, epochs=2, batch_size=32)
N_TEST_IMAGES = 30  # write_tiny_inputs: 3 testing subjects x 10 images
METRIC_KEYS = ["threshold", "test.accuracy", "test.precision", "test.recall", "test.f1", "test.roc_auc",
               "test.eer", "test.tar_at_far_1e-2", "validation.far", "validation.frr", "all_pairs.accuracy",
               "all_pairs.far", "all_pairs.frr", "all_pairs.tar_at_far_1e-2", "all_pairs.tar_at_far_1e-3",
               "all_pairs.roc_auc", "all_pairs.eer", "retrieval.precision_at_1", "retrieval.precision_at_5",
               "retrieval.map"]
HEADLINE_KEYS = ["threshold", "far", "frr", "accuracy", "tar_at_far_1e-2", "tar_at_far_1e-3", "auc", "eer",
                 "p_at_1", "map"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Faces, samples and a 2-epoch contrastive checkpoint, evaluated once for the whole module at the default
    operating point (a 1% FAR: the tiny validation faces give enough different-person pairs for it)."""
    root = tmp_path_factory.mktemp("evaluate")
    faces_dir, outputs = write_tiny_inputs(root)
    pair_paths = {f"pairs_{split}": outputs["pairs"][split] for split in ("train", "val", "test")}
    checkpoint = root / "models" / "compact-contrastive.pt"
    train_and_save("contrastive", TINY, faces_dir, train_samples(outputs), checkpoint, root / "history.csv")
    paths = evaluate_outputs(root / "eval")
    loaded = load_checkpoint(checkpoint)
    metrics = evaluate_model("compact-contrastive", evaluate_params(), *loaded, faces_dir, pair_paths, paths)
    return {"root": root, "faces_dir": faces_dir, "pairs": pair_paths, "checkpoint": checkpoint, "loaded": loaded,
            "outputs": paths, "metrics": metrics}


def nested(metrics: dict, dotted: str):
    for part in dotted.split("."):
        metrics = metrics[part]
    return metrics


def test_evaluate_model_writes_headline_metrics_and_details(stage):
    headline = json.loads(stage["outputs"]["metrics"].read_text())
    metrics, all_pairs = stage["metrics"], stage["metrics"]["all_pairs"]
    # the DVC metric: the threshold and the held-out headline, under the keys the CV summary uses too
    assert list(headline) == HEADLINE_KEYS
    assert headline == {"threshold": metrics["threshold"], "far": all_pairs["far"], "frr": all_pairs["frr"],
                        "accuracy": all_pairs["accuracy"], "tar_at_far_1e-2": all_pairs["tar_at_far_1e-2"],
                        "tar_at_far_1e-3": all_pairs["tar_at_far_1e-3"], "auc": all_pairs["roc_auc"],
                        "eer": all_pairs["eer"], "p_at_1": metrics["retrieval"]["precision_at_1"],
                        "map": metrics["retrieval"]["map"]}
    written = json.loads(stage["outputs"]["details"].read_text())
    assert written == metrics
    assert written["model"] == "compact-contrastive" and written["kept_epoch"] in (1, 2)
    assert written["target_far"] == 0.004  # the default
    for key in METRIC_KEYS:
        value = nested(written, key)
        assert isinstance(value, float) and np.isfinite(value), key
    for key in METRIC_KEYS[1:]:
        assert 0.0 <= nested(written, key) <= 1.0, key


def test_evaluate_model_calibrates_for_the_target_far_on_the_validation_people(stage):
    """The threshold is `calibrate`'s at 1% on the validation faces, set against the training faces too."""
    from facesim.core.data import FaceSet, Preprocess
    from facesim.core.checkpoint import load_checkpoint
    from facesim.core.embedding import embed_all
    from facesim.pipeline.calibration import calibrate
    from facesim.pipeline.faces import held_out_faces, load_tables

    model, checkpoint = load_checkpoint(stage["checkpoint"])
    tables = load_tables(stage["pairs"])

    def embedded(table):
        faces = FaceSet.load(stage["faces_dir"], [f.path for f in held_out_faces(table)],
                             Preprocess(**checkpoint["preprocess"]))
        return embed_all(model, faces.tensor).numpy(), faces.subjects

    validation, people = embedded(tables["pairs_val"])
    training, _ = embedded(tables["pairs_train"])
    assert stage["metrics"]["threshold"] == calibrate(validation, people, 0.01, training)
    assert stage["metrics"]["threshold"] != calibrate(validation, people, 0.01)  # the training faces count


def test_evaluate_model_at_the_best_accuracy(stage, tmp_path: Path):
    params = evaluate_params(operating_point="best_accuracy", target_far=0.01)
    metrics = evaluate_model("compact-contrastive", params, *stage["loaded"], stage["faces_dir"],
                             stage["pairs"],
                             evaluate_outputs(tmp_path / "eval"))
    assert metrics["target_far"] is None
    # no threshold does better on the calibration pairs, the one at a 1% FAR included
    assert metrics["validation"]["accuracy"] >= stage["metrics"]["validation"]["accuracy"]
    # and the threshold-free numbers are the same
    for key in ("roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3"):
        assert metrics["all_pairs"][key] == stage["metrics"]["all_pairs"][key], key
    headline = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(headline) == HEADLINE_KEYS and headline["threshold"] == metrics["threshold"]


def test_evaluate_model_counts_every_pair(stage):
    metrics = stage["metrics"]
    assert metrics["all_pairs"]["n_pairs"] == N_TEST_IMAGES * (N_TEST_IMAGES - 1) // 2 == 435
    assert metrics["test"]["n_pairs"] == len(pd.read_csv(stage["pairs"]["pairs_test"]))
    val = pd.read_csv(stage["pairs"]["pairs_val"])
    n_calibration = len(set(val["image1"]) | set(val["image2"]))  # every unordered pair of those faces
    assert metrics["validation"]["n_pairs"] == n_calibration * (n_calibration - 1) // 2


def test_evaluate_model_predictions(stage):
    predictions = pd.read_csv(stage["outputs"]["predictions"])
    metrics = stage["metrics"]
    threshold = metrics["threshold"]
    assert list(predictions.columns) == PREDICTION_COLUMNS
    counts = predictions["set"].value_counts().to_dict()
    assert counts == {"test": metrics["test"]["n_pairs"], "all_pairs": 435}
    # distances are written to 6 significant digits; away from the threshold the verdict must agree
    clear = (predictions["distance"] - threshold).abs() > 1e-5 * max(threshold, 1.0)
    assert clear.mean() > 0.95
    assert (predictions["predicted"] == (predictions["distance"] <= threshold))[clear].all()
    for name in ("test", "all_pairs"):
        part = predictions[predictions["set"] == name]
        assert (part["predicted"] == part["label"]).mean() == pytest.approx(metrics[name]["accuracy"])
        assert int(part["label"].sum()) == metrics[name]["tp"] + metrics[name]["fn"]
    # label 1 exactly for same-subject pairs, in both sets
    assert (predictions["label"] == (predictions["subject1"] == predictions["subject2"])).all()
    test_pairs = pd.read_csv(stage["pairs"]["pairs_test"])
    assert predictions.loc[predictions["set"] == "test", "image1"].tolist() == test_pairs["image1"].tolist()


def test_evaluate_model_embeddings_match_the_predictions(stage):
    embeddings = pd.read_csv(stage["outputs"]["embeddings"])
    columns = [f"e{i}" for i in range(TINY.embedding_dim)]
    assert list(embeddings.columns) == ["path", "person"] + columns
    assert len(embeddings) == N_TEST_IMAGES and embeddings["path"].is_unique
    assert embeddings["path"].str.startswith("testing/").all()
    assert (embeddings["person"] == embeddings["path"].str.split("/").str[1]).all()
    # all-pairs distances recomputed from the written embeddings
    vectors = embeddings[columns].to_numpy()
    row = {path: i for i, path in enumerate(embeddings["path"])}
    predictions = pd.read_csv(stage["outputs"]["predictions"])
    all_pairs = predictions[predictions["set"] == "all_pairs"]
    recomputed = np.linalg.norm(vectors[all_pairs["image1"].map(row)] - vectors[all_pairs["image2"].map(row)], axis=1)
    assert np.allclose(recomputed, all_pairs["distance"], rtol=1e-4, atol=1e-5)
    # precision@1 recomputed by brute force from the same embeddings
    distances = np.linalg.norm(vectors[:, None] - vectors[None, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    people = embeddings["person"].to_numpy()
    assert stage["metrics"]["retrieval"]["precision_at_1"] == pytest.approx(np.mean(people[nearest] == people))


def test_evaluate_model_writes_the_roc_curve(stage):
    roc = pd.read_csv(stage["outputs"]["roc"])
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[0]) == (0.0, 0.0)
    assert (roc["fpr"].iloc[-1], roc["tpr"].iloc[-1]) == (1.0, 1.0)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(stage["metrics"]["all_pairs"]["roc_auc"], abs=1e-4)


def test_evaluate_stage_names_a_missing_checkpoint(stage, tmp_path: Path):
    outputs = evaluate_stage_outputs(tmp_path / "out")
    missing = tmp_path / "models" / "never_trained.pt"
    with pytest.raises(FileNotFoundError, match="never_trained.pt") as info:
        evaluate_stage("compact-contrastive", evaluate_params(), missing, stage["faces_dir"], stage["pairs"], outputs)
    assert "checkpoint" in str(info.value)
    assert not any(path.exists() for path in outputs.values())


def test_evaluate_model_names_a_missing_pairs_file(stage, tmp_path: Path):
    outputs = evaluate_outputs(tmp_path, ".out")
    pairs = {**stage["pairs"], "pairs_test": tmp_path / "no_test_pairs.csv"}
    with pytest.raises(FileNotFoundError, match="no_test_pairs.csv"):
        evaluate_model("compact-contrastive", evaluate_params(), *stage["loaded"], stage["faces_dir"], pairs,
                       outputs)
    assert not any(path.exists() for path in outputs.values())


# ---- evaluate_stage: the metrics, the robustness and the export in one process, published together -------------


def test_evaluate_stage_writes_every_output_at_the_calibrated_threshold(stage, tmp_path: Path):
    outputs = evaluate_stage_outputs(tmp_path / "stage")
    run = RecordingRun()
    metrics, robustness, exported = evaluate_stage("compact-contrastive", evaluate_params(), stage["checkpoint"],
                                                   stage["faces_dir"], stage["pairs"], outputs, run)
    assert metrics == stage["metrics"]  # what evaluate_model alone computes
    for name in ("metrics", "details", "roc", "predictions", "embeddings"):
        assert outputs[name].read_bytes() == stage["outputs"][name].read_bytes(), name
    assert json.loads(outputs["robustness_metrics"].read_text()) == robustness
    assert len(pd.read_csv(outputs["robustness_table"], keep_default_na=False)) > 1
    # the export carries the evaluate part's threshold exactly, and says which file publishes it
    assert exported.threshold == metrics["threshold"] == from_onnx(outputs["onnx"]).threshold
    assert exported.threshold_source == f"calibrated on people unseen in training, {outputs['metrics'].as_posix()}"
    logged = {key for batch, _ in run.metrics for key in batch}
    assert {"threshold", "worst_same", "onnx_max_abs_difference"} <= logged and len(run.onnx_models) == 1
    assert sorted(p.name for p in outputs["onnx"].parent.iterdir()) == sorted(p.name for p in outputs.values())


@pytest.mark.parametrize("failing", ["evaluate_robustness", "export_model"])
def test_a_failure_in_any_part_publishes_nothing(stage, tmp_path: Path, monkeypatch, failing: str):
    def fail(*args, **kwargs):
        raise OSError(f"{failing} failed")

    monkeypatch.setattr(evaluate_module, failing, fail)
    fresh = evaluate_stage_outputs(tmp_path / "fresh")
    with pytest.raises(OSError, match=f"{failing} failed"):
        evaluate_stage("compact-contrastive", evaluate_params(), stage["checkpoint"], stage["faces_dir"],
                       stage["pairs"], fresh)
    assert not [p for p in (tmp_path / "fresh").rglob("*") if p.is_file()]  # none at all
    # a stage run before: its outputs stay as they were, none of the new ones published beside them
    before = evaluate_stage_outputs(tmp_path / "before")
    for path in before.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from the run before")
    with pytest.raises(OSError, match=f"{failing} failed"):
        evaluate_stage("compact-contrastive", evaluate_params(), stage["checkpoint"], stage["faces_dir"],
                       stage["pairs"], before)
    assert all(path.read_text() == "from the run before" for path in before.values())
    assert sorted(p.name for p in (tmp_path / "before").iterdir()) == sorted(p.name for p in before.values())
