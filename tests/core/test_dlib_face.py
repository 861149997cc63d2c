"""facesim.core.dlib_face and the dlib backbone: descriptors, their cache, the head, a checkpoint used as a model."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TESTING, model_config, needs_orl, random_grey_pixels, tiny_train_params
from facesim.core import dlib_face
from facesim.core.data import Preprocess, prepare_pixels
from facesim.core.images import load_pixels
from facesim.core.embedding import embed_all
from facesim.core.models import DescriptorHead, build_embedding_net

dlib = pytest.importorskip("dlib", reason="the dlib extra is not installed (pip install -e '.[dlib]')")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACESIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "dlib"


def orl(subject: int, image: int) -> np.ndarray:
    return load_pixels(TESTING / f"s{subject}" / f"{image}.pgm")


@needs_orl
def test_orl_faces_are_found_and_the_same_person_lies_closer(cache: Path):
    faces = [orl(5, 1), orl(5, 2), orl(6, 1)]
    described = dlib_face.describe(faces)
    assert described.vectors.shape == (3, 128) and described.vectors.dtype == np.float32
    assert described.found.tolist() == [True, True, True]
    same = np.linalg.norm(described.vectors[0] - described.vectors[1])
    other = np.linalg.norm(described.vectors[0] - described.vectors[2])
    # dlib's own rule: the same person below 0.6
    assert same < 0.6 < other


def test_a_picture_without_a_face_is_described_in_the_crop_box_and_counted(cache: Path, capsys: pytest.CaptureFixture):
    blank = np.full((112, 92), 128, dtype=np.uint8)
    described = dlib_face.describe([blank, random_grey_pixels(112, 92)])
    assert described.found.tolist() == [False, False]
    assert np.isfinite(described.vectors).all()
    assert "no face found by HOG in 2 of 2 pictures" in capsys.readouterr().err


def test_crop_box_scales_with_the_picture():
    # CROP_BOX (0.065, 0.259, 0.924, 0.973) of a 92x112 ORL face: 0.065 * 91 = 5.9, 0.259 * 111 = 28.7,
    # 0.924 * 91 = 84.1, 0.973 * 111 = 108.0
    assert dlib_face.crop_box(92, 112) == (6, 29, 84, 108)
    assert dlib_face.crop_box(1001, 1001) == (65, 259, 924, 973)


def test_descriptors_come_from_the_cache_the_second_time(cache: Path, monkeypatch: pytest.MonkeyPatch):
    pixels = [random_grey_pixels(60, 50, seed=1), random_grey_pixels(60, 50, seed=2)]
    first = dlib_face.describe(pixels)
    assert len(list(cache.rglob("*.npy"))) == 2

    def no_dlib(self, array):
        raise AssertionError("dlib ran although the descriptor was cached")

    monkeypatch.setattr(dlib_face.DlibFaces, "describe_one", no_dlib)
    again = dlib_face.describe(pixels)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_array_equal(again.found, first.found)


def test_a_damaged_cache_entry_is_computed_again(cache: Path):
    pixels = [random_grey_pixels(60, 50, seed=3)]
    first = dlib_face.describe(pixels)
    (entry,) = cache.rglob("*.npy")
    entry.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(dlib_face.describe(pixels).vectors, first.vectors)
    assert np.load(entry).shape == (129,)


@needs_orl
def test_several_processes_describe_as_one_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    faces = [orl(5, i) for i in range(1, 6)] + [np.full((112, 92), 128, dtype=np.uint8)]  # found and not found
    one = dlib_face.describe(faces, cache=tmp_path / "one", processes=1)
    seen: list[int] = []  # a forked worker appends to its own copy: only faces described here land in this one
    real = dlib_face.DlibFaces.describe_one

    def recording(self, array):
        seen.append(os.getpid())
        return real(self, array)

    monkeypatch.setattr(dlib_face.DlibFaces, "describe_one", recording)
    two = dlib_face.describe(faces, cache=tmp_path / "two", processes=2)
    assert seen == []  # every face was described in a worker
    np.testing.assert_array_equal(two.vectors, one.vectors)
    assert two.found.tolist() == one.found.tolist() == [True] * 5 + [False]
    # and the cache the workers' results went into gives them back
    np.testing.assert_array_equal(dlib_face.describe(faces, cache=tmp_path / "two", processes=1).vectors, one.vectors)


def test_workers_are_not_forked_from_this_process_and_die_on_sigterm():
    # a stage's process runs other threads and raises on SIGTERM (facesim.mlops.tracking): a worker forked from it
    # could inherit a held lock and a handler that keeps it alive through the pool's terminate
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        pool = dlib_face.worker_pool(2)
        parents = set(pool.starmap(os.getppid, [()] * 4))
        handlers = set(pool.starmap(signal.getsignal, [(signal.SIGTERM,)] * 4))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.getpid() not in parents
    assert handlers == {signal.SIG_DFL}
    assert dlib_face.worker_pool(2) is pool  # one pool for the process's every batch of new faces


def test_processes_below_one_are_refused(cache: Path):
    with pytest.raises(ValueError, match="processes >= 1, got 0"):
        dlib_face.describe([random_grey_pixels(60, 50, seed=4)] * 2, processes=0)


def test_without_dlib_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    dlib_face.dlib_faces.cache_clear()
    try:
        with pytest.raises(dlib_face.DlibUnavailable, match=r"pip install -e '\.\[dlib\]'"):
            dlib_face.describe([random_grey_pixels(20, 20)])
    finally:
        dlib_face.dlib_faces.cache_clear()


def test_preprocess_features_dlib_gives_descriptors(cache: Path):
    pixels = [random_grey_pixels(60, 50, seed=4)]
    prepared = prepare_pixels(pixels, Preprocess(features="dlib"))
    assert prepared.shape == (1, 128) and prepared.dtype == torch.float32
    np.testing.assert_array_equal(prepared.numpy(), dlib_face.describe(pixels).vectors)
    with pytest.raises(ValueError, match="preprocess.features"):
        prepare_pixels(pixels, Preprocess(features="rgb"))


def test_the_head_starts_as_the_identity_on_the_descriptor():
    x = torch.randn(5, 128)
    torch.testing.assert_close(DescriptorHead(128)(x), x)
    torch.testing.assert_close(DescriptorHead(16)(x), x[:, :16])
    network = build_embedding_net(model_config(backbone="dlib", embedding_dim=128, normalize=True))
    torch.testing.assert_close(embed_all(network, x), torch.nn.functional.normalize(x, dim=1))
    with pytest.raises(ValueError, match=r"dlib descriptors \(N, 128\)"):
        network(torch.zeros(2, 1, 40, 32))


def test_the_dlib_backbone_trains_without_augmentation():
    params = tiny_train_params(backbone="dlib", embedding_dim=128, augment=True)
    assert params.augmentation_applied() is None
    assert params.preprocess().features == "dlib"
    compact = tiny_train_params(augment=True)
    assert compact.augmentation_applied() == compact.augmentation
    assert compact.preprocess().features == "pixels"


@needs_orl
def test_a_dlib_checkpoint_is_a_face_model_for_pictures(cache: Path, tmp_path: Path):
    from facesim.core.inference import from_checkpoint

    config = model_config(backbone="dlib", embedding_dim=128)
    network = build_embedding_net(config)
    checkpoint = tmp_path / "dlib.pt"
    torch.save({"model_state": network.state_dict(), "model_config": config.to_dict(),
                "preprocess": Preprocess(features="dlib").to_dict(), "epoch": 1}, checkpoint)
    model = from_checkpoint(checkpoint, threshold=0.6)
    pictures = [Image.open(TESTING / "s5" / "1.pgm"), Image.open(TESTING / "s5" / "2.pgm"),
                Image.open(TESTING / "s7" / "1.pgm")]
    np.testing.assert_allclose(model.embed(pictures), dlib_face.describe([orl(5, 1), orl(5, 2), orl(7, 1)]).vectors,
                               atol=1e-6)
    distances = model.distances(pictures[:2], pictures[1:])
    assert distances[0] < model.threshold < distances[1]
