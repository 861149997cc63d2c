"""The plain helpers and constants the tests share, in every folder (`from helpers import ...`; pyproject puts
tests/ on the import path): tiny ORL-like faces, as GitHub's archive or as data/raw/faces; tiny models,
params and a tiny repository; where this repository's own pipeline outputs are; servers and commands to run.
The fixtures built on them are in conftest.py, which no test module imports (tests/test_test_layout.py).

The images are real 8-bit grey PGMs (like the ORL faces, only 10x12 instead of 92x112) whose
bytes depend only on (subject, image): a fixed random pattern per subject plus a little seeded
noise per image. So the same arguments always give byte-identical files and digests, and images
of one subject are closer to each other than to another subject's, which a small model can learn.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from facesim.mlops.runs import NullRun

# Like the real archive: testing subjects s5-s7 sit among the training subjects.
DEFAULT_TRAINING = (1, 2, 3, 4, 8, 9, 10, 11)
DEFAULT_TESTING = (5, 6, 7)
DEFAULT_PREFIX = "Face-Similarity-Siamese-Network-f67c5ffc041b8f95687f414fd205231feb740466/"
IMAGE_SIZE = (10, 12)  # (width, height)
NOISE_STD = 12.0  # per-pixel noise; subject patterns differ by ~50 grey levels on average

# A fixed timestamp, so that the archive's bytes do not depend on when the test ran.
_ZIP_TIME = (2019, 3, 1, 12, 0, 0)

# This repository, and what its own pipeline (`dvc repro`) left in it: tests on the real models and
# faces are skipped where it has not run.
REPO = Path(__file__).resolve().parents[1]
TESTING = REPO / "data" / "raw" / "faces" / "testing"  # the held-out ORL faces, s5 .. s7 among them
# The models the pipeline trains on the compact backbone (`<backbone>-<loss>`, as dvc.yaml names them): the
# real-model tests use these, which every run of the pipeline trains; the tiny repository has the same names.
MODELS = ("compact-contrastive", "compact-triplet")
PIPELINE_RAN = all((REPO / p).exists() for p in (
    *(f"models/{name}.pt" for name in MODELS), *(f"reports/metrics/{name}.json" for name in MODELS),
    "data/raw/faces/testing/s5/1.pgm"))
real = pytest.mark.skipif(not PIPELINE_RAN, reason="needs the pipeline's models and faces (dvc repro)")
needs_orl = pytest.mark.skipif(not (TESTING / "s5" / "1.pgm").exists(),
                               reason="needs the ORL faces (dvc repro fetch)")
TINY_THRESHOLD = 0.05  # the distance threshold of the tiny repository's models
# The cross-validation EER of each tiny model (reports/cv/compact/<loss>.json): triplet the lower, so that
# 'best' picks compact-triplet, which is neither the first model by name nor the first in MODELS.
TINY_CV_EER = {"compact-contrastive": 0.125, "compact-triplet": 0.0625}


def face_pixels(subject: int, image: int, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """The uint8 pixels (height x width) of image `image` of subject `subject`."""
    width, height = size
    pattern = np.random.default_rng([0, subject]).uniform(40, 216, size=(height, width))
    noise = np.random.default_rng([1, subject, image]).normal(0.0, NOISE_STD, size=(height, width))
    return np.clip(np.rint(pattern + noise), 0, 255).astype(np.uint8)


def random_grey_pixels(height: int = 12, width: int = 10, seed: int = 0) -> np.ndarray:
    """Uniformly random 8-bit grey pixels (height x width), the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)


def constant_image(level: int, size: tuple[int, int], mode: str = "L") -> Image.Image:
    """A (width, height) image of one grey level (or one colour when mode is RGB)."""
    return Image.new(mode, size, level)


def face_image_bytes(subject: int, image: int, fmt: str = "PPM", size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    """The file bytes of one face: binary PGM ('P5', Pillow's PPM writer in 'L' mode) or PNG."""
    out = io.BytesIO()
    Image.fromarray(face_pixels(subject, image, size)).save(out, format=fmt)
    return out.getvalue()


def repo_params(cls, section: str, **changes):
    """Section `section` of this repository's params.yaml (where every default lives) as a `cls`, with `changes` put
    over its keys as `cv.train` is put over `train` (a nested section key by key: `triplet={"margin": 0.3}`),
    parsed and validated as the stages parse it. The params a test starts from."""
    from facesim.core.params import parse_section
    from facesim.training.train_params import merge

    raw = dict(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))[section])
    if section == "cv":
        raw.pop("train", None)  # put over the train section, not one of cv's keys
    return parse_section(cls, merge(raw, changes), section)


def model_config(**changes):
    """A `ModelConfig`: the contrastive model's network of this repository's params.yaml as one network (members 1),
    with `changes` replacing fields (not validated: bad configs are what some tests build)."""
    import dataclasses

    from facesim.training.train_params import TrainParams

    network = repo_params(TrainParams, "train").model_config("contrastive")
    return dataclasses.replace(network, **{"members": 1, **changes})


def tiny_sample_params(**changes):
    """`SampleParams` of the tiny faces' tests: one similar, one dissimilar pair and one triplet per image, the
    validation pairs drawn from the training people's pairs (split_by pairs), the rest as params.yaml has it."""
    from facesim.pipeline.sample import SampleParams

    return repo_params(SampleParams, "sample", **{"similar_per_image": 1, "dissimilar_per_image": 1,
                                                  "triplets_per_image": 1, "split_by": "pairs", **changes})


def _groups(subjects_training: Sequence[int], subjects_testing: Sequence[int]):
    return (("training", tuple(subjects_training)), ("testing", tuple(subjects_testing)))


def write_tiny_samples(faces_dir: Path, samples_dir: Path) -> dict[str, dict[str, Path]]:
    """The sample stage's CSVs for `faces_dir`, one similar, one dissimilar pair and one triplet per
    image, under `samples_dir`: {"pairs" | "triplets": {"train" | "val" | "test": path}}."""
    from facesim.pipeline.sample import write_samples

    outputs = {kind: {split: samples_dir / f"{kind}_{split}.csv" for split in ("train", "val", "test")}
               for kind in ("pairs", "triplets")}
    write_samples(tiny_sample_params(), faces_dir, outputs)
    return outputs


# The tables `fit` and the objectives take, by their name in the sample stage.
TABLE_NAMES = ("pairs_train", "pairs_val", "triplets_train", "triplets_val")


def tiny_training_data(directory: Path, preprocess=None):
    """(faces_dir, tables, faces): the tiny faces (`write_faces_dir`) under `directory/faces`; one similar and one dissimilar
    pair and one triplet per training image, split as the sample stage does (128 + 32 pairs, 64 + 16
    triplets), as the `TABLE_NAMES` tables `fit` takes; and their faces in a `FaceSet`, prepared as
    `preprocess` says (default: 16x16, as `tiny_train_params`)."""
    import pandas as pd

    from facesim.core.data import FaceSet
    from facesim.pipeline.sample import build_samples

    faces_dir = write_faces_dir(directory / "faces")
    samples = build_samples(tiny_sample_params(), faces_dir)
    tables = {name: samples[name.split("_")[0]][name.split("_")[1]] for name in TABLE_NAMES}
    paths = pd.concat([tables[n][c] for n in tables for c in tables[n].columns
                       if c in ("image1", "image2", "anchor", "positive", "negative")])
    return faces_dir, tables, FaceSet.load(faces_dir, paths, preprocess or tiny_train_params().preprocess())


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


# Formats of `write_people_dir`: Pillow's name, the file suffix, the mode it is saved in.
PEOPLE_FORMATS = (("PNG", ".png", "L"), ("JPEG", ".jpg", "RGB"), ("PPM", ".pgm", "L"), ("BMP", ".bmp", "RGB"))


def write_people_dir(root: str | Path, images: Mapping[str, int], sizes: Sequence[tuple[int, int]] = (IMAGE_SIZE,)) -> Path:
    """Faces laid out one folder per person, `root/<person>/<k><suffix>`, `images[person]` of them each:
    the formats of `PEOPLE_FORMATS` in turn (grey PNG, colour JPEG, PGM, colour BMP) and the (width,
    height) `sizes` in turn, so that one set mixes formats, colour and sizes. Deterministic. Returns `root`."""
    root = Path(root)
    for number, (person, count) in enumerate(images.items(), start=1):
        (root / person).mkdir(parents=True, exist_ok=True)
        for k in range(1, count + 1):
            fmt, suffix, mode = PEOPLE_FORMATS[(number + k) % len(PEOPLE_FORMATS)]
            size = sizes[(number + k) % len(sizes)]
            image = Image.fromarray(face_pixels(number, k, size)).convert(mode)
            image.save(root / person / f"{k}{suffix}", format=fmt)
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


def write_tiny_inputs(root: Path) -> tuple[Path, dict[str, dict[str, Path]]]:
    """(faces_dir, samples): the tiny faces under `root/faces` (`write_faces_dir`) and the sample stage's CSVs
    for them under `root/samples` (`write_tiny_samples`), the inputs of the train and evaluate stages."""
    faces_dir = write_faces_dir(root / "faces")
    return faces_dir, write_tiny_samples(faces_dir, root / "samples")


@contextlib.contextmanager
def running_server(command: Sequence[str], ready_url: str, log: Path, *, start_s: float, **popen) -> Iterator[None]:
    """Run `command` (a server, in its own process group) until the block ends; first wait until `ready_url`
    answers 200, failing the test with the end of `log` (its output) when it exits or `start_s` pass first.
    The whole group is stopped afterwards: SIGTERM, then SIGKILL after 20 s (uvicorn's workers end with it)."""
    from facesim.app.servers import stop_group, wait_until_answering

    with log.open("w") as out:
        server = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        problem = wait_until_answering(server, ready_url, start_s)
        if problem is not None:
            pytest.fail(f"{' '.join(command[:4])} {problem}:\n{log.read_text()[-3000:]}")
        yield
    finally:
        stop_group(server, 20)


def modules_imported_by(module: str, candidates: Sequence[str]) -> list[str]:
    """Which of `candidates` importing `module` imports, in a fresh interpreter (slow imports kept lazy)."""
    import sys

    code = f"import sys, {module}; print(' '.join(m for m in {list(candidates)!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


class RecordingRun(NullRun):
    """A Run that keeps what a stage logs, in order (and, like NullRun, logs to no MLflow: run_id None):
    `metrics` as (dict, step), `artifacts` as (path, artifact_path), `models` as (model, input_example,
    metadata), `onnx_models` as (the file's bytes, input_example, metadata). With `fail_on_log_model`,
    logging a model raises, as an unreachable registry would."""

    def __init__(self, fail_on_log_model: bool = False):
        self.metrics: list[tuple[dict, int | None]] = []
        self.artifacts: list[tuple[Path, str | None]] = []
        self.models: list[tuple[object, object, dict]] = []
        self.onnx_models: list[tuple[bytes, object, dict]] = []
        self.fail_on_log_model = fail_on_log_model

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path), artifact_path))

    def log_model(self, model, input_example, metadata):
        if self.fail_on_log_model:
            raise RuntimeError("model registry is down")
        self.models.append((model, input_example, dict(metadata)))

    def log_onnx_model(self, path, input_example, metadata):
        if self.fail_on_log_model:
            raise RuntimeError("model registry is down")
        self.onnx_models.append((Path(path).read_bytes(), input_example, dict(metadata)))


# ---- tiny models and a tiny repository ------------------------------------------------------------------


# The training recipe the training tests were written for, over params.yaml's train section: one network per
# model (two 3x3 blocks of 4 and 8 channels, for 16x16 faces) trained on the CSVs (no mining), for the epochs train.epochs says, kept at its best validation loss with
# early stopping, fixed pixel normalisation, no border trimming, no blur.
TINY_RECIPE = {
    "normalization": "fixed", "trim_borders": False, "lr_schedule": "constant", "patience": 5, "keep": "best",
    "augmentation": {"max_blur": 0.0},
    "contrastive": {"epochs": 0, "mining": "none", "people_per_batch": 16, "members": 1, "channels": [4, 8]},
    "triplet": {"margin": 0.2, "epochs": 0, "members": 1, "channels": [4, 8]},
}


def tiny_train_params(**changes):
    """`TrainParams` for a 16x16 two-block CNN with 8 dimensions, on the CPU, without augmentation (`TINY_RECIPE`
    over params.yaml's train section): a fit of the tiny faces takes well under a second an epoch. `changes`
    replace any field (a nested section's as a whole, as `dataclasses.replace` does)."""
    import dataclasses

    from facesim.training.train_params import TrainParams

    base = repo_params(TrainParams, "train", device="cpu", input_height=16, input_width=16,
                       embedding_dim=8, augment=False, **TINY_RECIPE)
    return dataclasses.replace(base, **changes)


def tiny_fit_params(epochs: int = 3, **changes):
    """The `tiny_train_params` the training tests fit with (pipeline/test_fit.py, test_train.py, test_cv.py,
    ...): seed 3, `epochs` epochs, batches of 16; `changes` replace any other field."""
    return tiny_train_params(seed=3, epochs=epochs, batch_size=16, **changes)


def train_samples(samples: Mapping[str, Mapping[str, Path]], model_name: str = "contrastive") -> dict[str, Path]:
    """The `samples` argument of `train_and_save` for `model_name`, from `write_tiny_samples`'s CSVs: its own
    training and validation CSV, and the validation pairs."""
    kind = "pairs" if model_name == "contrastive" else "triplets"
    return {"train": samples[kind]["train"], "val": samples[kind]["val"], "val_pairs": samples["pairs"]["val"]}


def counting_net():
    """A seeded, untrained 16x16 embedding net (8 dimensions) in eval mode, wrapped so that `batch_sizes`
    records the batch size of every forward call; `.net` is the network itself."""
    import torch

    from facesim.core.models import build_embedding_net

    class CountingNet(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net
            self.batch_sizes: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.batch_sizes.append(x.shape[0])
            return self.net(x)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_embedding_net(model_config(embedding_dim=8, input_height=16, input_width=16, channels=(4, 8)))
    return CountingNet(net).eval()


def write_tiny_model(path: Path, threshold: float | None = TINY_THRESHOLD, seed: int = 0) -> Path:
    """An untrained 16x16 network saved as a facesim checkpoint (and `<stem>.json` with a threshold)."""
    import torch

    from facesim.core.data import Preprocess
    from facesim.core.models import build_embedding_net

    config = model_config(input_height=16, input_width=16, channels=(4, 8), embedding_dim=8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = build_embedding_net(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_name": "contrastive", "model_state": network.state_dict(), "epoch": 1,
                "kept_val_loss": 1.0, "model_config": config.to_dict(),
                "preprocess": Preprocess(height=16, width=16).to_dict()}, path)
    if threshold is not None:
        path.with_suffix(".json").write_text(json.dumps({"threshold": threshold}))
    return path


def export_tiny_models(root: Path) -> list[Path]:
    """What the evaluate stage's export leaves in `tiny_repo` (`root`): `models/<name>.onnx` of each of `MODELS`."""
    from facesim.core.checkpoint import load_checkpoint
    from facesim.core.model_files import read_threshold
    from facesim.pipeline.export import example_faces, export_model

    exported, examples = [], example_faces(root / "data" / "raw" / "faces")
    for name in MODELS:
        out = root / "models" / f"{name}.onnx"
        metrics = root / "reports" / "metrics" / f"{name}.json"
        export_model(name, *load_checkpoint(root / "models" / f"{name}.pt"), read_threshold(metrics), metrics,
                     examples, out)
        exported.append(out)
    return exported


def write_cv_summary(root: Path, name: str, eer: float) -> Path:
    """The cv summary stage's `reports/cv/<backbone>/<loss>.json` for model `<backbone>-<loss>`, with this EER."""
    backbone, loss = name.rsplit("-", 1)
    path = root / "reports" / "cv" / backbone / f"{loss}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": 0.9, "auc": 0.95, "eer": eer, "p_at_1": 0.9, "map": 0.8,
                                "eer_std": 0.01}))
    return path


def face(root: Path, person: int, image: int) -> Path:
    """A testing face of `tiny_repo` (or of any folder laid out like data/raw/faces)."""
    return root / "data" / "raw" / "faces" / "testing" / f"s{person}" / f"{image}.pgm"


def write_dvc_lock(root: Path, outs: dict[str, list[str]]) -> Path:
    """A dvc.lock (schema 2.0, as `dvc repro` writes it) whose stages record these outputs."""
    stages = {stage: {"cmd": f"python stages/{stage.split('@')[0]}.py",
                      "outs": [{"path": path, "hash": "md5", "md5": "0" * 32, "size": 1} for path in paths]}
              for stage, paths in outs.items()}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))
    return root / "dvc.lock"


def evaluate_outputs(folder: Path, suffix: str = "") -> dict[str, Path]:
    """The `outputs` of `evaluate_model` under `folder`: metrics, details, roc, predictions, embeddings
    (`<name>.json` / `.csv`, or `<name><suffix>` when a suffix is given)."""
    kinds = {"metrics": ".json", "details": ".json", "roc": ".csv", "predictions": ".csv", "embeddings": ".csv"}
    return {name: folder / f"{name}{suffix or ext}" for name, ext in kinds.items()}


def evaluate_stage_outputs(folder: Path) -> dict[str, Path]:
    """The `outputs` of `evaluate_stage` under `folder`: `evaluate_outputs`, the robustness metrics and table, the
    ONNX model."""
    return {**evaluate_outputs(folder), "robustness_metrics": folder / "robustness.json",
            "robustness_table": folder / "robustness.csv", "onnx": folder / "model.onnx"}


# ---- an MLflow store with a registered model ---------------------------------------------------------------

REGISTERED_MODEL = "compact-contrastive"  # the tiny model the evaluate stage registers in `registry` (conftest)
REGISTERED = f"facesim-{REGISTERED_MODEL}"  # its registered name


# ---- the whole pipeline in a copy of the repository (the integration tests) -------------------------------

PIPELINE_BACKBONES = ("compact", "dlib")  # pipeline.backbones and cv.backbones of params.yaml


def run_checked(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `args` in `cwd` with `env` (30 minutes at most: test_team's tiny `dvc repro --all-pipelines` ran past 10
    on a 2-core machine ~2.7x slower than usual); fail with the end of its output unless it exits 0."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def tiny_pipeline_params(digest: str) -> dict:
    """This repository's params.yaml, made tiny so that `dvc repro` (both pipelines) trains in seconds, with the
    fetch stage expecting faces of content digest `digest`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["fetch"]["digest"] = digest
    params["train"].update(
        input_height=16, input_width=16, embedding_dim=8, epochs=2, batch_size=32,
        device="cpu",
    )
    params["runtime"]["threads"] = 1
    params["train"]["triplet"].update(people_per_batch=4, faces_per_person=3, epochs=0, members=2, channels=[4, 8])
    params["train"]["contrastive"].update(people_per_batch=4, faces_per_person=3, epochs=0, members=1, channels=[4, 8])
    params["render"]["dpi"] = 40
    params["cv"].update(folds=[1, 2], seeds=[1], train={"epochs": 1, "triplet": {"epochs": 1}})
    # 2 validation people of 10 faces: 100 different-person pairs resolve a target FAR of 1/20
    params["evaluate"]["target_far"] = 0.05
    # the dlib backbone as params.yaml has it: dlib describes the tiny faces (no face found in any)
    assert params["cv"]["backbones"] == params["pipeline"]["backbones"] == list(PIPELINE_BACKBONES)
    return params
