"""Fixtures shared by the tests: tiny ORL-like faces, as GitHub's archive or as data/raw/faces.

The images are real 8-bit grey PGMs (like the ORL faces, only 10x12 instead of 92x112) whose
bytes depend only on (subject, image): a fixed random pattern per subject plus a little seeded
noise per image. So the same arguments always give byte-identical files and digests, and images
of one subject are closer to each other than to another subject's, which a small model can learn.
"""

from __future__ import annotations

import io
import socket
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Like the real archive: testing subjects s5-s7 sit among the training subjects.
DEFAULT_TRAINING = (1, 2, 3, 4, 8, 9, 10, 11)
DEFAULT_TESTING = (5, 6, 7)
DEFAULT_PREFIX = "Face-Similarity-Siamese-Network-f67c5ffc041b8f95687f414fd205231feb740466/"
IMAGE_SIZE = (10, 12)  # (width, height)
NOISE_STD = 12.0  # per-pixel noise; subject patterns differ by ~50 grey levels on average

# A fixed timestamp, so that the archive's bytes do not depend on when the test ran.
_ZIP_TIME = (2019, 3, 1, 12, 0, 0)


def face_pixels(subject: int, image: int, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """The uint8 pixels (height x width) of image `image` of subject `subject`."""
    width, height = size
    pattern = np.random.default_rng([0, subject]).uniform(40, 216, size=(height, width))
    noise = np.random.default_rng([1, subject, image]).normal(0.0, NOISE_STD, size=(height, width))
    return np.clip(np.rint(pattern + noise), 0, 255).astype(np.uint8)


def face_image_bytes(subject: int, image: int, fmt: str = "PPM", size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    """The file bytes of one face: binary PGM ('P5', Pillow's PPM writer in 'L' mode) or PNG."""
    out = io.BytesIO()
    Image.fromarray(face_pixels(subject, image, size)).save(out, format=fmt)
    return out.getvalue()


def _groups(subjects_training: Sequence[int], subjects_testing: Sequence[int]):
    return (("training", tuple(subjects_training)), ("testing", tuple(subjects_testing)))


def write_tiny_samples(faces_dir: Path, samples_dir: Path) -> dict[str, dict[str, Path]]:
    """The sample stage's CSVs for `faces_dir`, one similar, one dissimilar pair and one triplet per
    image, under `samples_dir`: {"pairs" | "triplets": {"train" | "val" | "test": path}}."""
    from facesim.sample import SampleParams, write_samples

    outputs = {kind: {split: samples_dir / f"{kind}_{split}.csv" for split in ("train", "val", "test")}
               for kind in ("pairs", "triplets")}
    write_samples(SampleParams(similar_per_image=1, dissimilar_per_image=1, triplets_per_image=1), faces_dir,
                  outputs)
    return outputs


def write_faces_dir(
    root: str | Path,
    subjects_training: Sequence[int] = DEFAULT_TRAINING,
    subjects_testing: Sequence[int] = DEFAULT_TESTING,
    images_per_subject: int = 10,
    size: tuple[int, int] = IMAGE_SIZE,
) -> Path:
    """Lay out faces as the fetch stage publishes them: `root/{training,testing}/sN/K.pgm`, K = 1..n.

    Returns `root`. The files are byte-identical to the `.pgm` members of an archive built by
    `build_faces_archive` with the same subjects, images and size.
    """
    root = Path(root)
    for group, subjects in _groups(subjects_training, subjects_testing):
        for subject in subjects:
            folder = root / group / f"s{subject}"
            folder.mkdir(parents=True, exist_ok=True)
            for image in range(1, images_per_subject + 1):
                (folder / f"{image}.pgm").write_bytes(face_image_bytes(subject, image, size=size))
    return root


def build_faces_archive(
    directory: str | Path,
    subjects_training: Sequence[int] = DEFAULT_TRAINING,
    subjects_testing: Sequence[int] = DEFAULT_TESTING,
    images_per_subject: int = 10,
    extra_members: Mapping[str, bytes] | None = None,
    prefix: str = DEFAULT_PREFIX,
    *,
    name: str = "faces.zip",
    shuffle_seed: int | None = None,
    size: tuple[int, int] = IMAGE_SIZE,
) -> Path:
    """Write `directory/name`, a zip laid out like GitHub's archive of the faces repository.

    - `subjects_training`, `subjects_testing`: subject numbers N of `<prefix>data/faces/training/sN/`
      and `.../testing/sN/` (either may be empty; both empty gives an archive without faces).
    - `images_per_subject`: images `1.pgm .. n.pgm` per subject, each with a `K.pgm.png` copy
      (as in the real archive; the fetch stage must ignore the copies).
    - `extra_members`: name -> bytes, stored verbatim (no prefix added) after the regular members:
      e.g. `{"../evil.pgm": b"x"}` or `{prefix + "notes.txt": b"..."}`.
    - `prefix`: the top folder GitHub puts everything under (`<repo>-<commit>/`); "" for none.
    - `shuffle_seed`: when given, the file members are written in an order shuffled by this seed
      (the content, hence the extracted tree and its digest, stays the same).
    - `size`: (width, height) of the images.

    The archive also holds directory entries and two READMEs (`<prefix>README.md`,
    `<prefix>data/faces/training/README`) which are not faces. Its bytes are deterministic.
    Returns the archive's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    folders = [prefix, f"{prefix}data/", f"{prefix}data/faces/"] if prefix else ["data/", "data/faces/"]
    files: list[tuple[str, bytes]] = [
        (f"{prefix}README.md", b"# Face similarity with Siamese networks\n"),
        (f"{prefix}data/faces/training/README", b"The ORL Database of Faces (a tiny stand-in).\n"),
    ]
    for group, subjects in _groups(subjects_training, subjects_testing):
        if subjects:
            folders.append(f"{prefix}data/faces/{group}/")
        for subject in subjects:
            folders.append(f"{prefix}data/faces/{group}/s{subject}/")
            for image in range(1, images_per_subject + 1):
                stem = f"{prefix}data/faces/{group}/s{subject}/{image}.pgm"
                files.append((stem, face_image_bytes(subject, image, size=size)))
                files.append((f"{stem}.png", face_image_bytes(subject, image, fmt="PNG", size=size)))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(files))
        files = [files[i] for i in order]
    files.extend((extra_members or {}).items())

    path = directory / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for folder in [f for f in folders if f]:
            info = zipfile.ZipInfo(folder, date_time=_ZIP_TIME)
            info.external_attr = (0o40755 << 16) | 0x10  # a directory, as zip tools mark it
            archive.writestr(info, b"")
        for member, data in files:
            info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return path


@pytest.fixture
def make_faces_archive():
    """The factory `build_faces_archive(directory, subjects_training=..., subjects_testing=...,
    images_per_subject=10, extra_members=None, prefix=DEFAULT_PREFIX, *, name="faces.zip",
    shuffle_seed=None, size=(10, 12))` -> path of the zip; see its docstring."""
    return build_faces_archive


@pytest.fixture
def make_faces_dir():
    """The factory `write_faces_dir(root, subjects_training=..., subjects_testing=...,
    images_per_subject=10, size=(10, 12))` -> root, laid out like data/raw/faces."""
    return write_faces_dir


@pytest.fixture
def faces_dir(tmp_path: Path) -> Path:
    """`tmp_path/data/raw/faces` holding 8 training subjects (s1-s4, s8-s11) and 3 testing
    subjects (s5-s7), 10 images each: 110 tiny PGMs, the layout the fetch stage publishes."""
    return write_faces_dir(tmp_path / "data" / "raw" / "faces")


@pytest.fixture
def unreachable_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """`http://127.0.0.1:<port>` where nothing listens: a port the OS just handed out and took back.

    Also clears the proxy variables for the test, so that urllib connects to it directly and is
    refused at once instead of asking a proxy.
    """
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def torch_global_state():
    """Put back torch's process-wide settings that `facesim.train.fit` changes (CPU threads,
    deterministic algorithms), so that a module training models leaves none of them behind.

    Use with `pytestmark = pytest.mark.usefixtures("torch_global_state")`.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
