"""facesim.pipeline.render: the 2-D PCA the embedding figure draws, and how many people the figures show."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facesim.pipeline.render import pca_2d, pca_figure, top_k_figure


def test_pca_2d_of_points_on_a_line_by_hand():
    # four points on the line y = 2x in 3-D, centred at (1.5, 3, 0): all the variance lies on one axis
    embeddings = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [3.0, 6.0, 0.0]])
    points, ratio = pca_2d(embeddings)
    assert ratio == pytest.approx([1.0, 0.0], abs=1e-12)
    # first coordinate: signed distance from the centre along the line, |(1, 2)| = sqrt(5) per step
    step = np.sqrt(5.0)
    assert np.abs(points[:, 0]) == pytest.approx([1.5 * step, 0.5 * step, 0.5 * step, 1.5 * step])
    assert np.sign(points[0, 0]) == -np.sign(points[3, 0])
    assert points[:, 1] == pytest.approx(np.zeros(4), abs=1e-12)


def test_pca_2d_keeps_distances_within_the_plane_of_the_data():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(10, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0].T  # two orthonormal directions in 5-D
    points, ratio = pca_2d(plane @ basis + 7.0)
    assert ratio.sum() == pytest.approx(1.0) and ratio[0] > ratio[1]
    original = np.linalg.norm(plane[:, None] - plane[None], axis=2)
    assert np.linalg.norm(points[:, None] - points[None], axis=2) == pytest.approx(original)


def held_out_table(people: int, faces: int) -> tuple[pd.DataFrame, np.ndarray]:
    names = [f"p{i}" for i in range(1, people + 1) for _ in range(faces)]
    table = pd.DataFrame({"path": [f"{n}/{k % faces}.png" for k, n in enumerate(names)], "person": names})
    return table, np.random.default_rng(0).normal(size=(len(names), 4))


def test_pca_figure_colours_the_first_people_by_name_and_greys_the_rest():
    table, embeddings = held_out_table(people=12, faces=3)
    labels = [t.get_text() for t in pca_figure("m", table, embeddings, max_people=4).axes[0].get_legend().get_texts()]
    assert labels == ["8 other people", "p1", "p2", "p3", "p4"]
    table, embeddings = held_out_table(people=3, faces=3)
    labels = [t.get_text() for t in pca_figure("m", table, embeddings, max_people=4).axes[0].get_legend().get_texts()]
    assert labels == ["p1", "p2", "p3"]  # everyone fits: as before


def test_top_k_figure_has_one_row_per_shown_person(tmp_path: Path):
    table, embeddings = held_out_table(people=12, faces=3)
    for path in table["path"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 10), 128).save(tmp_path / path)
    figure = top_k_figure("m", table, embeddings, tmp_path, k=2, max_people=4)
    assert len(figure.axes) == 4 * (2 + 1)
    assert [ax.get_title() for ax in figure.axes[::3]] == ["query p1", "query p2", "query p3", "query p4"]
