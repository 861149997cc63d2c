"""facesim.pipeline.render: the 2-D PCA the embedding figure draws."""

import numpy as np
import pytest

from facesim.pipeline.render import pca_2d


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
