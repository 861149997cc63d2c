"""Stage `render`: the figures a reader looks at, from the evaluate and train outputs.

Matplotlib's object API (`Figure`) is used rather than pyplot: no global
figure state and no GUI backend, so rendering works headless and in tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from facesim.core.atomic import staged_outputs
from facesim.core.images import load_image
from facesim.core.retrieval import top_k_neighbours
from facesim.core.params import require
from facesim.mlops.runs import NULL_RUN, Run

MATCH_COLOUR, MISTAKE_COLOUR, UNKNOWN_COLOUR = "#1a9850", "#d73027", "#636363"
SAME_COLOUR, DIFFERENT_COLOUR = "#4575b4", "#f46d43"


@dataclass(frozen=True)
class RenderParams:
    dpi: int
    top_k: int  # neighbours shown per query in top5_<model>.png
    # held-out people in colour in the PCA figures and as query rows in the top-k ones (the first by name)
    max_people: int

    def validate(self) -> None:
        require(self.dpi >= 30, f"render.dpi must be >= 30, got {self.dpi}")
        require(self.top_k >= 1, f"render.top_k must be >= 1, got {self.top_k}")
        require(self.max_people >= 1, f"render.max_people must be >= 1, got {self.max_people}")


@dataclass(frozen=True)
class ModelOutputs:
    """What render reads for one model (the paths dvc.yaml gives it)."""

    name: str
    metrics: Path  # the evaluate stage's details: threshold, kept_epoch, each pair set's metrics
    roc: Path
    predictions: Path
    embeddings: Path
    history: Path
    robustness: Path  # the evaluate stage's robustness table: family, strength, acceptance rates

    @classmethod
    def under(cls, name: str, metrics_dir: str | os.PathLike, plots_dir: str | os.PathLike,
              eval_dir: str | os.PathLike) -> ModelOutputs:
        """Model `name`'s outputs where dvc.yaml puts them: <metrics_dir>/<name>_details.json,
        <plots_dir>/<name>/{roc,history,robustness}.csv, <eval_dir>/<name>/{predictions,embeddings}.csv."""
        plots, evaluated = Path(plots_dir) / name, Path(eval_dir) / name
        return cls(name=name, metrics=Path(metrics_dir) / f"{name}_details.json", roc=plots / "roc.csv",
                   history=plots / "history.csv", predictions=evaluated / "predictions.csv",
                   embeddings=evaluated / "embeddings.csv", robustness=plots / "robustness.csv")


def _embedding_table(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    table = pd.read_csv(path)
    columns = [c for c in table.columns if c.startswith("e") and c[1:].isdigit()]
    if not columns or not {"path", "person"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns path, person, e0..eN (as the evaluate stage and "
                         "`facesim embed --out x.csv` write them)")
    return table[["path", "person"]], table[columns].to_numpy()


def _person_order(persons) -> list[str]:
    return sorted(set(persons), key=lambda s: (len(s), s))


def pca_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings on their first two principal components (N, 2), and the share of the variance of each.

    Four lines of numpy rather than scikit-learn's PCA, whose import alone took
    3 s of this stage on a 2-core machine.
    """
    centred = np.asarray(embeddings, dtype=np.float64) - np.mean(embeddings, axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    # a component's sign is arbitrary: make its largest loading positive, so that the figure does not
    # mirror between LAPACK builds or CPUs
    largest = components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)]
    components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
    variance = singular**2
    return centred @ components[:2].T, variance[:2] / variance.sum()


def pca_figure(model: str, table: pd.DataFrame, embeddings: np.ndarray, max_people: int = 10) -> Figure:
    """Held-out embeddings in 2-D by PCA (of every face), one colour per person for the first `max_people`
    people by name, the others' faces small and grey behind them."""
    points, ratio = pca_2d(embeddings)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    people = _person_order(table["person"])
    if len(people) > max_people:
        rest = (~table["person"].isin(people[:max_people])).to_numpy()
        ax.scatter(points[rest, 0], points[rest, 1], s=8, color="0.75", alpha=0.5,
                   label=f"{len(people) - max_people} other people")
    for person in people[:max_people]:
        mask = (table["person"] == person).to_numpy()
        ax.scatter(points[mask, 0], points[mask, 1], s=40, label=person, alpha=0.85, edgecolors="white")
    ax.set_xlabel(f"PC 1 ({ratio[0]:.1%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.1%} of variance)")
    ax.set_title(f"{model}: held-out faces, embeddings by PCA")
    ax.legend(title="person", loc="best")
    ax.grid(alpha=0.3)
    return fig


def top_k_figure(model: str, table: pd.DataFrame, embeddings: np.ndarray, faces_dir: Path, k: int,
                 max_people: int = 10) -> Figure:
    """One row per held-out person (the first `max_people` by name): their first face as query, then its
    k closest other faces among every held-out face."""
    persons = table["person"].to_numpy()
    queries = [int(np.flatnonzero(persons == s)[0]) for s in _person_order(persons)[:max_people]]
    neighbours, distances = top_k_neighbours(embeddings, embeddings, k, exclude_self=True)

    def face(index: int) -> Image.Image:
        return load_image(faces_dir / table["path"].iloc[index])

    rows = [(face(query), persons[query],
             [(face(i), persons[i], distance) for i, distance in zip(neighbours[query], distances[query])])
            for query in queries]
    title = f"{model}: {k} closest held-out faces per query (green: same person, red: mistake)"
    return neighbours_figure(rows, k, title)


def neighbours_figure(
    rows: list[tuple[Image.Image, str | None, list[tuple[Image.Image, str, float]]]], k: int, title: str
) -> Figure:
    """One row per query: the query face, then its matches, each titled with its person and distance.

    rows: (query image, query person, [(image, person, distance), ...]). A match is framed green when
    its person is the query's and red when not; grey when the query's person is unknown (None).
    Shared by the render stage's top-k figure and `facesim search --figure`.
    """
    fig = Figure(figsize=(1.5 * (k + 1), 2.1 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for row, (query_image, query_person, matches) in enumerate(rows):
        cells = [(query_image, query_person, None)] + list(matches)
        for col, (image, person, distance) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if distance is None:
                ax.set_title("query" if person is None else f"query {person}", fontsize=9, fontweight="bold")
                continue
            if query_person is None:
                colour, label = UNKNOWN_COLOUR, f"{person}  d={distance:.2f}"
            else:
                match = person == query_person
                colour = MATCH_COLOUR if match else MISTAKE_COLOUR
                label = f"{'✓' if match else '✗'} {person}  d={distance:.2f}"
            ax.set_title(label, fontsize=8, color=colour)
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=colour, linewidth=4))
    fig.suptitle(title, fontsize=10)
    return fig


def roc_figure(models: list[ModelOutputs]) -> Figure:
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for outputs in models:
        roc = pd.read_csv(outputs.roc)
        metrics = json.loads(outputs.metrics.read_text())
        ax.plot(roc["fpr"], roc["tpr"], drawstyle="steps-post", linewidth=2,
                label=f"{outputs.name} (AUC {metrics['all_pairs']['roc_auc']:.4f}, "
                      f"EER {metrics['all_pairs']['eer']:.2%})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set_xlabel("false positive rate (different people accepted)")
    ax.set_ylabel("true positive rate (same person accepted)")
    ax.set_title("ROC, all pairs of held-out faces")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def distances_figure(outputs: ModelOutputs) -> Figure:
    predictions = pd.read_csv(outputs.predictions)
    pairs = predictions[predictions["set"] == "all_pairs"]
    threshold = json.loads(outputs.metrics.read_text())["threshold"]
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, pairs["distance"].max() * 1.05, 40)
    ax.hist(pairs.loc[pairs["label"] == 1, "distance"], bins=bins, alpha=0.7, color=SAME_COLOUR, density=True,
            label=f"same person ({int((pairs['label'] == 1).sum())} pairs)")
    ax.hist(pairs.loc[pairs["label"] == 0, "distance"], bins=bins, alpha=0.7, color=DIFFERENT_COLOUR,
            density=True, label=f"different people ({int((pairs['label'] == 0).sum())} pairs)")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f} (calibrated)")
    ax.set_xlabel("embedding distance")
    ax.set_ylabel("density")
    ax.set_title(f"{outputs.name}: distances between held-out faces")
    ax.legend()
    return fig


def loss_figure(models: list[ModelOutputs]) -> Figure:
    fig = Figure(figsize=(5 * len(models), 4), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, outputs in zip(axes, models):
        history = pd.read_csv(outputs.history)
        # the checkpointed epoch: the best validation loss (train.keep: best) or the last (keep: last)
        kept = int(json.loads(outputs.metrics.read_text())["kept_epoch"])
        ax.plot(history["epoch"], history["train_loss"], marker="o", markersize=3, label="train")
        ax.plot(history["epoch"], history["val_loss"], marker="o", markersize=3, label="validation")
        ax.axvline(kept, color="grey", linestyle=":", label=f"epoch kept ({kept})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{outputs.name} loss")
        ax.set_title(f"{outputs.name}: loss per epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def robustness_figure(models: list[ModelOutputs]) -> Figure:
    """Same-person acceptance of every photo change, per model, with different-person acceptance beneath."""
    tables = {outputs.name: pd.read_csv(outputs.robustness, keep_default_na=False) for outputs in models}
    first = next(iter(tables.values()))
    cases = ["unchanged" if f == "none" else f"{f} {s}" for f, s in zip(first["family"], first["strength"])]
    fig = Figure(figsize=(7.5, 0.28 * len(cases) + 2.2), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(tables)
    rows = np.arange(len(cases))
    for i, (name, table) in enumerate(tables.items()):
        offset = rows + (i - (len(tables) - 1) / 2) * height
        ax.barh(offset, table["same_person_acceptance"], height=height, color=f"C{i}",
                label=f"{name}: same person accepted")
        ax.scatter(table["different_person_acceptance"], offset, marker="x", color="black", zorder=3,
                   label="different people accepted" if i == 0 else None)
    ax.axvline(0.95, color="grey", linestyle=":", label="95%")
    ax.set_yticks(rows, cases)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("share of pairs called the same person, at the deployed threshold")
    ax.set_title("Held-out faces under ordinary photo changes vs. their other photos")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2, fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def render_figures(
    params: RenderParams,
    models: list[ModelOutputs],
    faces_dir: str | os.PathLike,
    figures_dir: str | os.PathLike,
    run: Run = NULL_RUN,
) -> list[str]:
    """Write every figure into `figures_dir` (replaced as a whole) and log them; returns the file names."""
    faces_dir = Path(faces_dir)
    figures: dict[str, Figure] = {}
    for outputs in models:
        table, embeddings = _embedding_table(outputs.embeddings)
        figures[f"pca_{outputs.name}.png"] = pca_figure(outputs.name, table, embeddings, params.max_people)
        figures[f"top{params.top_k}_{outputs.name}.png"] = top_k_figure(
            outputs.name, table, embeddings, faces_dir, params.top_k, params.max_people)
        figures[f"distances_{outputs.name}.png"] = distances_figure(outputs)
    figures["roc.png"] = roc_figure(models)
    figures["loss_curves.png"] = loss_figure(models)
    figures["robustness.png"] = robustness_figure(models)
    with staged_outputs(figures_dir) as (staged,):
        staged.mkdir()
        for name, fig in figures.items():
            # No timestamp in the file: the same inputs give the same bytes.
            fig.savefig(staged / name, dpi=params.dpi, metadata={"Software": None})
        run.log_artifact(staged, "figures")
    return sorted(figures)
