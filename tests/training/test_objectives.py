"""facesim.training.objectives: embedding rows, and what each loss trains on, counted by hand on tiny batches.

The objectives here see a FaceSet of blank 16x16 faces: batches, row numbers and counts do not depend on
the pixels. Training itself is tested in test_fit.py.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from helpers import counting_net, tiny_train_params
from facesim.core.data import FaceSet
from facesim.core.embedding import embed_all
from facesim.training import objectives
from facesim.training.objectives import (
    OBJECTIVES,
    ContrastiveObjective,
    TripletObjective,
    embed_rows,
    pair_rows,
    validation_groups,
)

# Three people, a b c, with faces 0-3 (a), 4-7 (b), 8-11 (c).
PEOPLE = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
FACES = FaceSet(paths=[f"{p}/{i}.pgm" for i, p in enumerate(PEOPLE)], subjects=PEOPLE,
                tensor=torch.zeros(len(PEOPLE), 1, 16, 16))


def name(row: int) -> str:
    return FACES.paths[row]


def pairs(*rows: tuple[int, int, int]) -> pd.DataFrame:
    return pd.DataFrame({"image1": [name(r[0]) for r in rows], "image2": [name(r[1]) for r in rows],
                         "label": [r[2] for r in rows]})


def triplets(*rows: tuple[int, int, int]) -> pd.DataFrame:
    return pd.DataFrame({column: [name(r[i]) for r in rows] for i, column in enumerate(("anchor", "positive",
                                                                                         "negative"))})


TABLES = {
    "pairs_train": pairs((0, 1, 1), (1, 4, 0), (5, 6, 1), (8, 2, 0), (9, 10, 1)),
    "pairs_val": pairs((2, 3, 1), (3, 7, 0), (7, 11, 0), (10, 11, 1)),
    "triplets_train": triplets((0, 1, 4), (1, 2, 8), (4, 5, 9), (6, 7, 0), (8, 9, 1), (10, 11, 5)),
    "triplets_val": triplets((2, 3, 7), (7, 6, 11)),
}


def objective(model_name: str, mining: str = "none", **loss) -> ContrastiveObjective | TripletObjective:
    params = tiny_train_params(batch_size=4)
    params = dataclasses.replace(params, **{model_name: dataclasses.replace(params.loss_params(model_name),
                                                                            mining=mining, **loss)})
    return OBJECTIVES[model_name](params, TABLES, FACES)


# ---- embed_rows --------------------------------------------------------------------------------------------


def test_embed_rows_embeds_each_distinct_image_once():
    model = counting_net()
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([[0, 3], [3, 4], [0, 4], [4, 4]])  # distinct rows: 0, 3, 4
    with torch.no_grad():
        embeddings = embed_rows(model, images, rows)
        expected = model.net(images[rows.flatten()]).view(4, 2, 8)
    assert model.batch_sizes == [3]
    assert embeddings.shape == (4, 2, 8)
    assert torch.allclose(embeddings, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 2, 3)])
def test_embed_rows_keeps_the_shape_of_rows(shape):
    model = counting_net()
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embeddings = embed_rows(model, images, rows)
    assert embeddings.shape == (*shape, 8)
    assert model.batch_sizes == [len(torch.unique(rows))]


def test_embed_rows_augments_each_distinct_image_once():
    model = counting_net()
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []

    def brighten(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(batch)
        return batch + 1.0

    rows = torch.tensor([[1, 2], [2, 1], [1, 1]])
    with torch.no_grad():
        embeddings = embed_rows(model, images, rows, brighten, torch.Generator())
        expected = model.net(images[[1, 2]] + 1.0)
    assert len(seen) == 1 and torch.equal(seen[0], images[[1, 2]])
    # the same augmented face wherever a row repeats
    assert torch.allclose(embeddings[0, 0], expected[0], atol=1e-6)
    assert torch.allclose(embeddings[1, 0], expected[1], atol=1e-6)
    assert torch.equal(embeddings[2, 0], embeddings[2, 1])


# ---- rows of the sample tables -------------------------------------------------------------------------------


def test_pair_rows_are_the_face_rows_and_the_label():
    assert pair_rows(TABLES["pairs_val"], FACES).tolist() == [[2, 3, 1], [3, 7, 0], [7, 11, 0], [10, 11, 1]]


def test_objectives_are_named_as_in_params_and_read_their_own_tables():
    assert OBJECTIVES == {"contrastive": ContrastiveObjective, "triplet": TripletObjective}
    assert (ContrastiveObjective.train_table, ContrastiveObjective.val_table) == ("pairs_train", "pairs_val")
    assert (TripletObjective.train_table, TripletObjective.val_table) == ("triplets_train", "triplets_val")
    assert objective("contrastive").train_rows.tolist() == pair_rows(TABLES["pairs_train"], FACES).tolist()
    assert objective("triplet").train_rows[:2].tolist() == [[0, 1, 4], [1, 2, 8]]


@pytest.mark.parametrize("model_name, missing", [("contrastive", "pairs_train"), ("triplet", "triplets_val"),
                                                 ("triplet", "pairs_val")])
def test_an_objective_names_the_sample_table_it_lacks(model_name, missing):
    tables = {k: v for k, v in TABLES.items() if k != missing}
    with pytest.raises(ValueError, match=f"{OBJECTIVES[model_name].__name__} needs the sample tables {missing}"):
        OBJECTIVES[model_name](tiny_train_params(), tables, FACES)


# ---- batches, counted by hand -------------------------------------------------------------------------------


def test_a_contrastive_csv_batch_by_hand():
    batch = torch.tensor([[3, 4, 1], [4, 5, 0], [4, 3, 0]])  # labels are no faces: 0 and 1 are not counted
    counted = objective("contrastive")
    assert counted.batch_size(batch) == 3  # pairs: the weight of the batch's loss in the epoch's mean
    assert counted.examples_in(batch) == 3  # three pairs
    assert counted.faces_in(batch) == 3  # faces 3, 4, 5, each once


def test_a_triplet_csv_batch_by_hand():
    batch = torch.tensor([[0, 1, 4], [1, 0, 4], [8, 9, 2]])
    counted = objective("triplet")
    assert counted.batch_size(batch) == 3 and counted.examples_in(batch) == 3
    assert counted.faces_in(batch) == 6  # 0, 1, 4, 8, 9, 2


def test_a_pk_batch_by_hand_for_each_loss():
    # P x K faces: two people with 3 faces and one with 2, as the last batch of an epoch may have
    batch = (torch.tensor([0, 1, 2, 4, 5, 6, 8, 9]), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2]))
    contrastive, triplet = objective("contrastive", "all"), objective("triplet", "semihard")
    for counted in (contrastive, triplet):
        assert counted.batch_size(batch) == 8 and counted.faces_in(batch) == 8  # faces, not pairs
    assert contrastive.examples_in(batch) == 8 * 7 // 2 == 28  # every pair of the 8 faces
    # (anchor, positive) per person, each with a negative mined: 3 * 2 + 3 * 2 + 2 * 1
    assert triplet.examples_in(batch) == 14


def test_csv_batches_take_every_training_row_once_an_epoch():
    for model_name in ("contrastive", "triplet"):
        counted = objective(model_name)
        batches = list(counted.batches(torch.Generator().manual_seed(0)))
        assert [len(b) for b in batches] == [4] * (len(counted.train_rows) // 4) + (
            [len(counted.train_rows) % 4] if len(counted.train_rows) % 4 else [])
        rows = sorted(map(tuple, torch.cat(batches).tolist()))
        assert rows == sorted(map(tuple, counted.train_rows.tolist())), model_name


def test_pk_batches_hold_p_people_with_k_of_their_training_faces():
    counted = objective("triplet", "hard", people_per_batch=2, faces_per_person=2)
    pool = set(counted.pool.tolist())
    assert pool == {0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11}  # the faces of the training triplets
    batches = list(counted.batches(torch.Generator().manual_seed(0)))
    assert len(batches) == math.ceil(len(pool) / 4)
    for rows, labels in batches:
        assert set(rows.tolist()) <= pool and len(set(rows.tolist())) == len(rows) == 4
        assert torch.equal(labels, FACES.subject_ids()[rows])  # each face with its own person
        assert torch.unique(labels, return_counts=True)[1].tolist() == [2, 2]


def test_validate_reports_the_loss_and_the_roc_auc_of_the_validation_pairs():
    counted = objective("contrastive")
    # embeddings that put each person at its own point: every same pair at 0, every different one apart
    embeddings = FACES.subject_ids().float()[:, None] * torch.tensor([[3.0, 0.0]])
    scores = counted.validate(embeddings)
    assert scores["val_roc_auc"] == 1.0
    # contrastive loss of the validation pairs: same pairs at distance 0, different ones 3 > margin 2 apart
    assert scores["val_loss"] == pytest.approx(0.0, abs=1e-6)


def test_validation_groups_are_one_batch_up_to_the_limit() -> None:
    faces, labels = torch.arange(10, 80), torch.arange(70) // 10  # ORL's validation: 7 people x 10 faces
    groups, weights = validation_groups(faces, labels)
    assert len(groups) == 1 and torch.equal(groups[0][0], faces) and torch.equal(groups[0][1], labels)
    assert weights.tolist() == [1.0]  # the loss exactly as one batch gives it


def test_validation_groups_deal_whole_people_in_turn(monkeypatch) -> None:
    monkeypatch.setattr(objectives, "VAL_GROUP_FACES", 8)
    # people 0..5 with 3 faces each, then person 6 alone with 1: 19 faces -> ceil(19 / 8) = 3 batches;
    # people dealt 0, 1, 2, 0, 1, 2, 0: batch 0 = people 0, 3, 6 (7 faces), 1 = 1, 4 (6), 2 = 2, 5 (6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6])
    faces = torch.arange(100, 119)
    groups, weights = validation_groups(faces, labels)
    assert [sorted(set(own.tolist())) for _, own in groups] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(rows) for rows, _ in groups] == [7, 6, 6]
    assert torch.allclose(weights, torch.tensor([7, 6, 6], dtype=torch.float64) / 19)
    assert torch.equal(groups[1][0], torch.tensor([103, 104, 105, 112, 113, 114]))


def test_validation_groups_leave_out_a_batch_without_a_triplet(monkeypatch) -> None:
    monkeypatch.setattr(objectives, "VAL_GROUP_FACES", 2)
    # people 0 (2 faces), 1, 2, 3 (1 face each): 5 faces -> 3 batches: {0, 3}, {1}, {2}; only the first
    # has a person with 2 faces and another person
    labels, faces = torch.tensor([0, 0, 1, 2, 3]), torch.arange(5)
    groups, weights = validation_groups(faces, labels)
    assert [own.tolist() for _, own in groups] == [[0, 0, 3]] and weights.tolist() == [1.0]


@pytest.mark.parametrize("model_name, read", [("contrastive", [2, 3, 7, 10, 11]),  # the validation pairs' faces
                                               ("triplet", [2, 3, 6, 7, 10, 11])])  # ... and its triplets'
def test_validation_embeds_only_the_faces_it_reads(model_name, read) -> None:
    counted = objective(model_name, mining="semihard" if model_name == "triplet" else "all")
    assert counted.val_rows.tolist() == read
    images = torch.rand(len(PEOPLE), 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 3))
    embedded = counted.validation_embeddings(network, images)
    everyone = embed_all(network, images)
    assert torch.allclose(embedded[read], everyone[read], atol=1e-6)
    unread = [row for row in range(len(PEOPLE)) if row not in read]
    assert torch.count_nonzero(embedded[unread]) == 0
    # the scores are those of every face embedded
    assert counted.validate(embedded) == pytest.approx(counted.validate(everyone), rel=1e-5)
