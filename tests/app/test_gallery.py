"""facesim.app.gallery: files in natural order, faces framed like ORL, the gallery's embedding cache.

The cache tests search the tiny repository of conftest (untrained 16x16 models, synthetic faces) through
`facesim.app.api`, which is how the cache is used; the framing tests need the real ORL faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TESTING, face, face_image_bytes, needs_orl, write_tiny_model
from facesim.app import api
from facesim.app.gallery import CACHE_DIR, EmbeddingCache, cache_for, face_label, list_files, load_face
from facesim.core.images import ImageError

ORL_FACE = TESTING / "s5" / "1.pgm"


# ---- files and labels ------------------------------------------------------------------------------------


def test_list_files_is_recursive_natural_and_leaves_hidden_files_out(tmp_path: Path):
    for name in ("s10/1.pgm", "s2/10.pgm", "s2/9.pgm", "s2/.thumbs/9.png", ".git/config", "s2/.DS_Store",
                 "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    listed = [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path)]
    assert listed == ["notes.txt", "s2/9.pgm", "s2/10.pgm", "s10/1.pgm"]
    with pytest.raises(FileNotFoundError, match="nowhere: folder not found"):
        list_files(tmp_path / "nowhere")


def test_face_label_names_a_file_and_says_what_a_picture_in_memory_is(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert face_label(tmp_path / "a" / "b.png") == "a/b.png"
    assert face_label(Image.new("L", (4, 4))) == "<image>"


def test_load_face_names_a_missing_file(tmp_path: Path):
    with pytest.raises(ImageError, match=r"absent\.png: image file not found"):
        load_face(tmp_path / "absent.png")


# ---- the embedding cache ---------------------------------------------------------------------------------


def test_the_cache_file_keeps_vectors_by_key_across_instances(tmp_path: Path):
    cache = EmbeddingCache(tmp_path / "cache", "digest")
    assert cache.get("a") is None and not cache.path.exists()
    cache.update({})  # nothing to add: no file either
    assert not cache.path.exists()
    cache.update({"a": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([3.0, 4.0], dtype=np.float32)})
    again = EmbeddingCache(tmp_path / "cache", "digest")
    assert again.get("a").tolist() == [1.0, 2.0] and again.get("b").tolist() == [3.0, 4.0]
    assert EmbeddingCache(tmp_path / "cache", "other digest").get("a") is None  # one file a model
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["digest.npz"]  # no staged leftovers


def test_cache_for_is_none_when_asked_for_none_or_outside_a_repository(tiny_repo: Path, tmp_path_factory,
                                                                        monkeypatch):
    model = api.load_model("compact-triplet", root=tiny_repo)
    assert cache_for(model, tiny_repo, cache=False) is None
    assert cache_for(model, tiny_repo, cache=True).path == tiny_repo / CACHE_DIR / f"{model.digest}.npz"
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert cache_for(model, None, cache=True) is None


def test_cache_hit_then_miss_after_a_file_changes(tiny_repo: Path):
    query = face(tiny_repo, 5, 1)
    first = api.search(query, root=tiny_repo, k=3)
    assert (first.embedded, first.cached) == (30, 0)
    assert len(list((tiny_repo / CACHE_DIR).glob("*.npz"))) == 1
    second = api.search(query, root=tiny_repo, k=3)
    assert (second.embedded, second.cached) == (0, 30)
    assert [(m.path, m.distance) for m in second.matches] == [(m.path, m.distance) for m in first.matches]
    # a file whose bytes change is embedded again, and found where it now belongs
    changed = face(tiny_repo, 6, 4)
    changed.write_bytes(face_image_bytes(5, 11))
    third = api.search(query, root=tiny_repo, k=3)
    assert (third.embedded, third.cached) == (1, 29)
    fresh = api.search(query, root=tiny_repo, k=3, cache=False)
    assert fresh.embedded == 30
    assert [m.path for m in third.matches] == [m.path for m in fresh.matches]
    assert [m.distance for m in third.matches] == pytest.approx([m.distance for m in fresh.matches], abs=1e-6)


def test_cache_is_per_model(tiny_repo: Path):
    query = face(tiny_repo, 5, 1)
    api.search(query, root=tiny_repo, model="compact-triplet")
    other = api.search(query, root=tiny_repo, model="compact-contrastive")
    assert (other.embedded, other.cached) == (30, 0)
    assert len(list((tiny_repo / CACHE_DIR).glob("*.npz"))) == 2
    # a retrained checkpoint (other bytes) misses as well
    write_tiny_model(tiny_repo / "models" / "compact-triplet.pt", threshold=None, seed=7)
    assert api.search(query, root=tiny_repo, model="compact-triplet").embedded == 30


def test_a_damaged_cache_is_rebuilt(tiny_repo: Path):
    query = face(tiny_repo, 5, 1)
    api.search(query, root=tiny_repo)
    (cache_file,) = (tiny_repo / CACHE_DIR).glob("*.npz")
    cache_file.write_bytes(b"garbage")
    assert api.search(query, root=tiny_repo).embedded == 30
    assert api.search(query, root=tiny_repo).embedded == 0


# ---- photos: the face found and framed like ORL --------------------------------------------------------


def small_face_photo(path: Path) -> Path:
    """An ORL face at half size, pasted into a 400 x 300 grey photo away from its centre."""
    face_image = Image.open(ORL_FACE).resize((46, 56))
    photo = Image.new("L", (400, 300), 120)
    photo.paste(face_image, (250, 60))
    photo.save(path)
    return path


@needs_orl
def test_load_face_crops_a_small_face_with_orl_framing(tmp_path: Path):
    framed = load_face(small_face_photo(tmp_path / "photo.png"))
    width, height = framed.size
    assert abs(width / height - 92 / 112) < 0.02 and 40 <= width <= 70  # about the pasted face, not the photo
    assert load_face(ORL_FACE).size == (92, 112)  # ORL faces are framed already: unchanged
    assert load_face(small_face_photo(tmp_path / "again.png"), detect=False).size == (400, 300)


@needs_orl
def test_a_gallery_photo_without_a_face_is_skipped_with_a_warning(tmp_path: Path):
    model = write_tiny_model(tmp_path / "tiny.pt")
    gallery = tmp_path / "gallery" / "s5"
    gallery.mkdir(parents=True)
    (gallery / "1.pgm").write_bytes(ORL_FACE.read_bytes())
    small_face_photo(gallery / "2.png")
    Image.new("L", (300, 200), 90).save(gallery / "3.png")
    with pytest.warns(api.SkippedFilesWarning, match="skipped 1 file.*show no face.*3.png"):
        result = api.embed([tmp_path / "gallery"], model, cache=False)
    assert [Path(p).name for p in result.to_frame()["path"]] == ["1.pgm", "2.png"]
