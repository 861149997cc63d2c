"""What each model learns from: its training batches and its loss, one class per loss.

`ContrastiveObjective` learns from pairs (same person or not), `TripletObjective`
from triplets (anchor, positive, negative). Either draws its batches from its
sample CSV or, when its params ask for mining, as P x K batches (P people, K
faces each) with every pair or triplet of the batch in the loss. `OBJECTIVES`
names them as `params.yaml` and the stages do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pandas as pd
import torch

from facesim.core.data import FaceSet
from facesim.core.embedding import embed_all
from facesim.core.losses import BatchContrastiveLoss, BatchTripletLoss, ContrastiveLoss, TripletLoss, euclidean_distance
from facesim.core.metrics import roc_auc
from facesim.training.train_params import ContrastiveParams, TrainParams, TripletParams

PAIR_COLUMNS = ("image1", "image2")
TRIPLET_COLUMNS = ("anchor", "positive", "negative")

# A batch: a (B, 3) tensor of rows of the sample CSV (pairs: image1, image2, label; triplets: anchor,
# positive, negative), or P x K faces as (rows, person labels).
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def embed_rows(
    model: torch.nn.Module,
    images: torch.Tensor,
    rows: torch.Tensor,
    augment: Augmentation | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Embeddings for a tensor of row numbers of any shape: (*rows.shape, D).

    Each distinct image is embedded (and augmented) once, however often it
    appears in the batch.
    """
    unique, inverse = torch.unique(rows, return_inverse=True)
    x = images[unique]
    if augment is not None:
        x = augment(x, generator)
    device = next(model.parameters()).device
    return model(x.to(device))[inverse.to(device)]


def pair_rows(table: pd.DataFrame, faces: FaceSet) -> torch.Tensor:
    """(N, 3) long: the rows of image1 and image2, and the label."""
    return torch.cat([faces.table_rows(table, PAIR_COLUMNS),
                      torch.tensor(table["label"].to_numpy(), dtype=torch.long)[:, None]], dim=1)


class Objective:
    """The interface of the training loop: `batches`, `train_loss`, `validate`; and, for benchmarks,
    how many pairs or triplets (`examples_in`) and faces (`faces_in`) a batch holds."""

    # the sample CSVs it reads, by their name in the sample stage: its own training and validation
    # CSV, and the validation pairs (ROC AUC after each epoch) that both models report
    train_table: str
    val_table: str

    def __init__(self, params: TrainParams, loss: ContrastiveParams | TripletParams,
                 tables: dict[str, pd.DataFrame], faces: FaceSet):
        missing = [name for name in (self.train_table, self.val_table, "pairs_val") if name not in tables]
        if missing:
            raise ValueError(f"{type(self).__name__} needs the sample tables {', '.join(dict.fromkeys(missing))}")
        self.params, self.loss = params, loss
        self.mined = loss.mining != "none"  # P x K batches, pairs or triplets found in each
        self.pairs_val = pair_rows(tables["pairs_val"], faces)
        self.train_rows = self._training_rows(tables, faces)
        self.val_rows = torch.unique(self.pairs_val[:, :2])  # the faces `validate` reads (a loss may add its own)
        if self.mined:
            # The faces of the training CSV, with their person, for P x K batches.
            self.subject_ids = faces.subject_ids()
            self.pool = torch.unique(self._face_columns(self.train_rows).flatten())
            self.pool_labels = self.subject_ids[self.pool]

    # ---- what a loss defines
    def _training_rows(self, tables: dict[str, pd.DataFrame], faces: FaceSet) -> torch.Tensor:
        raise NotImplementedError

    def _face_columns(self, rows: torch.Tensor) -> torch.Tensor:
        """The face columns of CSV rows (pairs carry their label as a third column)."""
        raise NotImplementedError

    def _csv_loss(self, embeddings: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """The loss of a CSV batch, from the embeddings of its face columns (B, faces per row, D)."""
        raise NotImplementedError

    def _mined_examples(self, labels: torch.Tensor) -> int:
        raise NotImplementedError

    def _val_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- shared
    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        if self.mined:
            yield from self._pk_batches(generator)
            return
        order = torch.randperm(len(self.train_rows), generator=generator)
        for start in range(0, len(order), self.params.batch_size):
            yield self.train_rows[order[start : start + self.params.batch_size]]

    def _pk_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p, k = self.loss.people_per_batch, self.loss.faces_per_person
        people = torch.unique(self.pool_labels)
        p = min(p, len(people))
        for _ in range(math.ceil(len(self.pool) / (p * k))):
            chosen = people[torch.randperm(len(people), generator=generator)[:p]]
            rows, labels = [], []
            for person in chosen:
                own = self.pool[self.pool_labels == person]
                take = own[torch.randperm(len(own), generator=generator)[:k]]
                rows.append(take)
                labels.append(torch.full((len(take),), int(person)))
            yield torch.cat(rows), torch.cat(labels)

    def train_loss(self, model: torch.nn.Module, images: torch.Tensor, batch: Batch,
                   augment: Augmentation | None, generator: torch.Generator) -> torch.Tensor:
        if isinstance(batch, tuple):  # P x K faces with their person labels
            rows, labels = batch
            embeddings = embed_rows(model, images, rows, augment, generator)
            return self.loss_fn(embeddings, labels.to(embeddings.device))
        return self._csv_loss(embed_rows(model, images, self._face_columns(batch), augment, generator), batch)

    def batch_size(self, batch: Batch) -> int:
        """Pairs or triplets (CSV) or faces (P x K) in a batch: the weight of its loss in the epoch's mean."""
        return len(batch[0]) if isinstance(batch, tuple) else len(batch)

    def examples_in(self, batch: Batch) -> int:
        """Pairs or triplets a batch trains on."""
        return self._mined_examples(batch[1]) if isinstance(batch, tuple) else len(batch)

    def faces_in(self, batch: Batch) -> int:
        """Faces a batch passes through the network: each distinct one once."""
        rows = batch[0] if isinstance(batch, tuple) else self._face_columns(batch)
        return int(torch.unique(rows).numel())

    def validation_embeddings(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """What `validate` takes, computed for the faces it reads only (`val_rows`, a fifth of ORL's; embedding
        all of them each epoch took a fifth of training): (len(images), D), the other rows zero."""
        embedded = embed_all(model, images[self.val_rows])
        embeddings = embedded.new_zeros((len(images), embedded.shape[1]))
        embeddings[self.val_rows] = embedded
        return embeddings

    def validate(self, embeddings: torch.Tensor) -> dict[str, float]:
        """Validation loss (the early-stopping criterion) and ROC AUC on the validation pairs: `embeddings`
        holds a face's embedding at its row of the images (those of `val_rows` are read)."""
        pairs = self.pairs_val
        distances = euclidean_distance(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])
        return {"val_loss": float(self._val_loss(embeddings)),
                "val_roc_auc": roc_auc(distances.numpy(), pairs[:, 2].numpy())}


class ContrastiveObjective(Objective):
    """Pairs: same person pulled together, different people pushed `margin` apart."""

    train_table, val_table = "pairs_train", "pairs_val"

    def __init__(self, params: TrainParams, tables: dict[str, pd.DataFrame], faces: FaceSet):
        super().__init__(params, params.contrastive, tables, faces)
        self.pair_loss_fn = ContrastiveLoss(margin=params.contrastive.margin)
        self.loss_fn = BatchContrastiveLoss(margin=params.contrastive.margin) if self.mined else self.pair_loss_fn

    def _training_rows(self, tables, faces):
        return pair_rows(tables[self.train_table], faces)

    def _face_columns(self, rows):
        return rows[:, :2]

    def _csv_loss(self, embeddings, batch):
        return self.loss_fn(embeddings[:, 0], embeddings[:, 1], batch[:, 2].to(embeddings))

    def _mined_examples(self, labels):
        """Every pair of a P x K batch's N faces: N * (N - 1) / 2."""
        return len(labels) * (len(labels) - 1) // 2

    def _val_loss(self, embeddings):
        pairs = self.pairs_val
        return self.pair_loss_fn(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], pairs[:, 2].float())


class TripletObjective(Objective):
    """Triplets: the anchor closer to its positive than to its negative by `margin`."""

    train_table, val_table = "triplets_train", "triplets_val"

    def __init__(self, params: TrainParams, tables: dict[str, pd.DataFrame], faces: FaceSet):
        super().__init__(params, params.triplet, tables, faces)
        self.val_triplets = faces.table_rows(tables[self.val_table], TRIPLET_COLUMNS)
        self.val_rows = torch.unique(torch.cat([self.val_rows, self.val_triplets.flatten()]))
        if self.mined:
            self.loss_fn = BatchTripletLoss(margin=params.triplet.margin, mining=params.triplet.mining)
            val_pool = torch.unique(self.val_triplets.flatten())
            self.val_groups, self.val_weights = validation_groups(val_pool, self.subject_ids[val_pool])
        else:
            self.loss_fn = TripletLoss(margin=params.triplet.margin)

    def _training_rows(self, tables, faces):
        return faces.table_rows(tables[self.train_table], TRIPLET_COLUMNS)

    def _face_columns(self, rows):
        return rows

    def _csv_loss(self, embeddings, batch):
        return self.loss_fn(embeddings[:, 0], embeddings[:, 1], embeddings[:, 2])

    def _mined_examples(self, labels):
        """(anchor, positive) triplets of a P x K batch: sum over people of K * (K - 1)."""
        counts = torch.unique(labels, return_counts=True)[1]
        return int((counts * (counts - 1)).sum())

    def _val_loss(self, embeddings):
        if not self.mined:
            t = self.val_triplets
            return self.loss_fn(embeddings[t[:, 0]], embeddings[t[:, 1]], embeddings[t[:, 2]])
        # The training objective over all validation faces as one batch (or a few, `validation_groups`):
        # random CSV triplets are too easy to tell one epoch from the next.
        losses = torch.stack([self.loss_fn(embeddings[rows], labels) for rows, labels in self.val_groups])
        return (losses * self.val_weights.to(losses)).sum()


# The most validation faces one mined triplet batch holds: semihard mining builds (N, N, N) arrays, 67 MB
# of float32 at 256 faces, 256 GB at 40,000.
VAL_GROUP_FACES = 256


def validation_groups(faces: torch.Tensor, labels: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                          torch.Tensor]:
    """The validation faces as batches of whole people for the mined triplet loss, and each batch's weight
    (its share of the faces): one batch of all of them up to VAL_GROUP_FACES (ORL's 70), else
    ceil(faces / VAL_GROUP_FACES) batches, the people dealt in turn. A batch without a valid triplet
    (fewer than 2 people, or no one with 2 faces) is left out."""
    groups = max(1, math.ceil(len(faces) / VAL_GROUP_FACES))
    people = torch.unique(labels)
    batch_of_person = torch.empty(int(people.max()) + 1, dtype=torch.long)
    batch_of_person[people] = torch.arange(len(people)) % groups
    batch_of = batch_of_person[labels]
    chosen = []
    for batch in range(groups):
        rows, own = faces[batch_of == batch], labels[batch_of == batch]
        counts = torch.unique(own, return_counts=True)[1]
        if len(counts) >= 2 and bool((counts >= 2).any()):
            chosen.append((rows, own))
    if not chosen:
        chosen = [(faces, labels)]  # the loss says what is missing
    sizes = torch.tensor([len(rows) for rows, _ in chosen], dtype=torch.float64)
    return chosen, sizes / sizes.sum()


OBJECTIVES: dict[str, type[Objective]] = {"contrastive": ContrastiveObjective, "triplet": TripletObjective}
