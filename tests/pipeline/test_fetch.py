"""facesim.pipeline.fetch: download, verify and publish the faces, or fail leaving data/raw/faces as it was."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import pytest

from helpers import repo_params
from facesim.pipeline import fetch
from facesim.core.digest import content_digest
from facesim.pipeline.fetch import DATA_URL_ENV, FetchError, FetchParams, fetch_faces
from facesim.core.params import ParamsError

# Well formed, but the digest of no tree these tests build.
OTHER_DIGEST = "sha256:" + "0" * 64


@pytest.fixture(autouse=True)
def _no_data_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_URL_ENV, raising=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def reference_digest(make_faces_dir, root: Path, **layout) -> str:
    """The digest of the faces that an archive built with the same `layout` holds."""
    return content_digest(make_faces_dir(root, **layout))


def params_for(source: str | Path, digest: str, **kw) -> FetchParams:
    """This repository's fetch section for `source` and `digest`, with `kw` (not validated: fetch_faces checks)."""
    return dataclasses.replace(repo_params(FetchParams, "fetch"), url=str(source), digest=digest, **kw)


def assert_nothing_left(out_dir: Path) -> None:
    """No output and no temporary file or directory beside it."""
    assert not out_dir.exists()
    assert list(out_dir.parent.iterdir()) == []


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """The publish target, alone in its parent directory so that stray temporaries show."""
    parent = tmp_path / "data" / "raw"
    parent.mkdir(parents=True)
    return parent / "faces"


# ---- fetching good archives ----------------------------------------------------------------


def test_fetch_from_a_local_path_publishes_exactly_the_images(tmp_path, out_dir, make_faces_archive, make_faces_dir):
    archive = make_faces_archive(tmp_path / "archives")
    reference = make_faces_dir(tmp_path / "reference")
    digest = content_digest(reference)

    result = fetch_faces(params_for(archive, digest), out_dir)

    # The .pgm.png copies, READMEs and directory entries are not kept; every image is, byte for byte.
    assert tree_bytes(out_dir) == tree_bytes(reference)
    assert len(tree_bytes(out_dir)) == 110
    assert content_digest(out_dir) == digest
    assert result.digest == digest
    assert (result.images, result.subjects) == (110, 11)
    assert result.bytes == sum(len(b) for b in tree_bytes(reference).values())
    assert result.source == str(archive)
    assert list(out_dir.parent.iterdir()) == [out_dir]  # no temporary left beside it


def test_fetch_from_a_file_url(tmp_path, out_dir, make_faces_archive, make_faces_dir):
    archive = make_faces_archive(tmp_path / "archives", subjects_training=(1, 2), subjects_testing=(3,))
    digest = reference_digest(make_faces_dir, tmp_path / "ref", subjects_training=(1, 2), subjects_testing=(3,))
    url = archive.as_uri()
    assert url.startswith("file:///")

    result = fetch_faces(params_for(url, digest), out_dir)

    assert result.source == url
    assert content_digest(out_dir) == digest
    assert sorted(p.name for p in (out_dir / "training").iterdir()) == ["s1", "s2"]
    assert sorted(p.name for p in (out_dir / "testing").iterdir()) == ["s3"]


def test_digest_does_not_depend_on_the_order_of_members(tmp_path, make_faces_archive, make_faces_dir):
    digest = reference_digest(make_faces_dir, tmp_path / "ref")
    trees = []
    for seed in (None, 1, 2):
        archive = make_faces_archive(tmp_path / f"archives{seed}", shuffle_seed=seed)
        out = tmp_path / f"out{seed}" / "faces"
        assert fetch_faces(params_for(archive, digest), out).digest == digest
        trees.append(tree_bytes(out))
    # the archives really list their members differently
    orders = [zipfile.ZipFile(tmp_path / f"archives{s}" / "faces.zip").namelist() for s in (None, 1, 2)]
    assert orders[0] != orders[1] and orders[1] != orders[2]
    assert trees[0] == trees[1] == trees[2]


def test_environment_variable_overrides_params_url(tmp_path, out_dir, monkeypatch, make_faces_archive,
                                                   make_faces_dir, unreachable_url):
    archive = make_faces_archive(tmp_path / "mirror", subjects_training=(1, 2), subjects_testing=(3,))
    digest = reference_digest(make_faces_dir, tmp_path / "ref", subjects_training=(1, 2), subjects_testing=(3,))
    monkeypatch.setenv(DATA_URL_ENV, str(archive))

    # params.url is unreachable: succeeding proves the mirror was read instead.
    result = fetch_faces(params_for(f"{unreachable_url}/faces.zip", digest, retries=0, timeout_s=2), out_dir)

    assert result.source == str(archive)
    assert content_digest(out_dir) == digest


def test_members_that_are_not_face_images_are_ignored(tmp_path, out_dir, make_faces_archive, make_faces_dir):
    prefix = "repo-abc/"
    layout = dict(subjects_training=(1, 2), subjects_testing=(3,), images_per_subject=3)
    extras = {
        f"{prefix}notebook.ipynb": b"{}",
        f"{prefix}data/faces/training/s1/notes.txt": b"not an image",
        f"{prefix}data/faces/training/s1/x.pgm": b"not a numbered image",
        f"{prefix}data/faces/validation/s9/1.pgm": b"not a kept group",
        f"{prefix}docs/data/faces/training/s9/1.pgm": b"data/faces too deep",
        f"{prefix}data/faces/training/1.pgm": b"no subject folder",
    }
    archive = make_faces_archive(tmp_path / "a", extra_members=extras, prefix=prefix, **layout)
    reference = make_faces_dir(tmp_path / "ref", **layout)
    names = zipfile.ZipFile(archive).namelist()
    assert f"{prefix}data/faces/training/s1/1.pgm.png" in names and f"{prefix}README.md" in names

    result = fetch_faces(params_for(archive, content_digest(reference)), out_dir)

    assert tree_bytes(out_dir) == tree_bytes(reference)
    assert result.images == 9


def test_archive_without_a_prefix_folder_is_read_too(tmp_path, out_dir, make_faces_archive, make_faces_dir):
    layout = dict(subjects_training=(1,), subjects_testing=(2,), images_per_subject=2)
    archive = make_faces_archive(tmp_path / "a", prefix="", **layout)
    digest = reference_digest(make_faces_dir, tmp_path / "ref", **layout)
    assert fetch_faces(params_for(archive, digest), out_dir).images == 4


# ---- failures leave data/raw/faces as it was ----------------------------------------------------


def test_digest_mismatch_names_both_digests_and_keeps_the_previous_copy(tmp_path, out_dir, make_faces_archive,
                                                                        make_faces_dir):
    good = make_faces_archive(tmp_path / "good")
    good_digest = reference_digest(make_faces_dir, tmp_path / "ref_good")
    fetch_faces(params_for(good, good_digest), out_dir)
    before = tree_bytes(out_dir)

    other_layout = dict(subjects_training=(1, 2), subjects_testing=(3,), images_per_subject=4)
    other = make_faces_archive(tmp_path / "other", **other_layout)
    other_digest = reference_digest(make_faces_dir, tmp_path / "ref_other", **other_layout)
    assert other_digest != good_digest

    with pytest.raises(FetchError) as caught:
        fetch_faces(params_for(other, good_digest), out_dir)

    message = str(caught.value)
    assert f"expected {good_digest}" in message
    assert f"got {other_digest}" in message
    assert "fetch.digest" in message
    assert tree_bytes(out_dir) == before
    assert list(out_dir.parent.iterdir()) == [out_dir]


@pytest.mark.parametrize(
    "member",
    [
        "../evil.pgm",
        "repo-abc/data/faces/training/s1/../../../../../evil.pgm",
        "..\\evil.pgm",
    ],
)
def test_member_pointing_outside_is_refused(tmp_path, out_dir, make_faces_archive, member):
    archive = make_faces_archive(tmp_path / "a", subjects_training=(1,), subjects_testing=(2,),
                                 images_per_subject=2, extra_members={member: b"P5\n1 1\n255\n\x00"})
    with pytest.raises(FetchError, match=r"outside the archive.*refused") as caught:
        fetch_faces(params_for(archive, OTHER_DIGEST), out_dir)
    assert repr(member) in str(caught.value)
    assert not (tmp_path / "evil.pgm").exists()
    assert_nothing_left(out_dir)


@pytest.mark.parametrize("member", ["/tmp/data/faces/training/s1/1.pgm", "C:/data/faces/training/s1/1.pgm",
                                    "\\data\\faces\\training\\s1\\1.pgm"])
def test_member_with_an_absolute_path_is_refused(tmp_path, out_dir, make_faces_archive, member):
    archive = make_faces_archive(tmp_path / "a", subjects_training=(1,), subjects_testing=(2,),
                                 images_per_subject=2, extra_members={member: b"P5\n1 1\n255\n\x00"})
    with pytest.raises(FetchError, match="absolute path; refused"):
        fetch_faces(params_for(archive, OTHER_DIGEST), out_dir)
    assert_nothing_left(out_dir)


def _member_data_offset(data: bytes, name: str) -> int:
    """Where the (compressed) bytes of member `name` start in the zip `data`."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    header = data[info.header_offset : info.header_offset + 30]
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _not_a_zip(data: bytes) -> bytes:
    return b"<html><body>404 Not Found</body></html>\n" * 20


def _bad_crc(data: bytes) -> bytes:
    # Flip the CRC-32 that the central directory records for the first image.
    name = b"p/data/faces/training/s1/1.pgm"
    central = data.index(b"PK\x01\x02")  # the first central directory header
    while data[central + 46 : central + 46 + int.from_bytes(data[central + 28 : central + 30], "little")] != name:
        central = data.index(b"PK\x01\x02", central + 4)
    crc_at = central + 16
    return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]


def _bad_deflate(data: bytes) -> bytes:
    # A first deflate byte of 0xFF declares the reserved block type 3: invalid compressed data.
    at = _member_data_offset(data, "p/data/faces/training/s1/1.pgm")
    return data[:at] + b"\xff" + data[at + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        _truncated,
        _not_a_zip,
        _bad_crc,
        _bad_deflate,
    ],
)
def test_corrupt_archive_is_refused_with_a_clear_message(tmp_path, out_dir, make_faces_archive, damage):
    archive = make_faces_archive(tmp_path / "a", subjects_training=(1,), subjects_testing=(2,),
                                 images_per_subject=2, prefix="p/")
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(damage(archive.read_bytes()))

    with pytest.raises(FetchError, match=r"not a readable zip archive \(corrupt or truncated\?\)") as caught:
        fetch_faces(params_for(damaged, OTHER_DIGEST), out_dir)
    assert str(damaged) in str(caught.value)
    assert_nothing_left(out_dir)


def test_archive_without_faces_is_refused(tmp_path, out_dir, make_faces_archive):
    archive = make_faces_archive(tmp_path / "a", subjects_training=(), subjects_testing=())
    assert len(zipfile.ZipFile(archive).namelist()) > 0  # READMEs and folders, but no faces
    with pytest.raises(FetchError, match=r"holds no images: no file below fetch.faces_folder 'data/faces' .* fetch.image_pattern "):
        fetch_faces(params_for(archive, OTHER_DIGEST), out_dir)
    assert_nothing_left(out_dir)


def test_archive_larger_than_max_bytes_is_refused(tmp_path, out_dir, make_faces_archive):
    archive = make_faces_archive(tmp_path / "a")
    assert archive.stat().st_size > 5000
    with pytest.raises(FetchError, match=r"larger than fetch\.max_bytes=5000 bytes; refused"):
        fetch_faces(params_for(archive, OTHER_DIGEST, max_bytes=5000), out_dir)
    assert_nothing_left(out_dir)


def test_images_unpacking_beyond_max_bytes_are_refused(tmp_path, out_dir, make_faces_archive):
    # A small archive whose one image inflates to 200 000 bytes (a zip bomb in miniature).
    archive = make_faces_archive(tmp_path / "a", subjects_training=(), subjects_testing=(),
                                 extra_members={"p/data/faces/training/s1/1.pgm": bytes(200_000)}, prefix="p/")
    assert archive.stat().st_size < 100_000
    with pytest.raises(FetchError, match=r"unpack to 200000 bytes > fetch\.max_bytes=100000; refused"):
        fetch_faces(params_for(archive, OTHER_DIGEST, max_bytes=100_000), out_dir)
    assert_nothing_left(out_dir)


def test_missing_local_archive_is_refused(tmp_path, out_dir):
    missing = tmp_path / "nowhere.zip"
    with pytest.raises(FetchError, match="no such archive file"):
        fetch_faces(params_for(missing, OTHER_DIGEST), out_dir)
    assert_nothing_left(out_dir)


def test_unsupported_scheme_is_refused(out_dir):
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        fetch_faces(params_for("ftp://example.org/faces.zip", OTHER_DIGEST), out_dir)


def test_unreachable_url_retries_then_points_to_the_environment_variable(out_dir, monkeypatch, unreachable_url):
    sleeps: list[float] = []
    monkeypatch.setattr(fetch.time, "sleep", sleeps.append)
    url = f"{unreachable_url}/x.zip"

    with pytest.raises(FetchError) as caught:
        fetch_faces(params_for(url, OTHER_DIGEST, retries=1, timeout_s=2), out_dir)

    message = str(caught.value)
    assert f"could not download {url} after 2 attempt(s)" in message
    assert DATA_URL_ENV in message
    assert sleeps == [1]  # one back-off between the two attempts
    assert_nothing_left(out_dir)


# ---- params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        "md5:" + "0" * 32,
        "sha256:" + "A" * 64,  # upper case: content_digest writes lower case
        "sha256:" + "0" * 63,
        "0" * 64,
        "sha256: " + "0" * 64,
    ],
)
def test_validate_refuses_a_malformed_digest(digest):
    with pytest.raises(ParamsError, match="fetch.digest") as caught:
        repo_params(FetchParams, "fetch", url="https://example.org/a.zip", digest=digest)
    assert repr(digest) in str(caught.value)


def test_validate_accepts_a_digest_as_content_digest_writes_it(tmp_path):
    (tmp_path / "a.pgm").write_bytes(b"x")
    params = repo_params(FetchParams, "fetch", url="https://example.org/a.zip", digest=content_digest(tmp_path))
    assert params.digest == content_digest(tmp_path)
    assert (params.max_bytes, params.timeout_s, params.retries) == (100_000_000, 60.0, 3)


@pytest.mark.parametrize(
    "key, value, expected",
    [("url", "", "fetch.url"), ("max_bytes", 0, "fetch.max_bytes"), ("timeout_s", 0, "fetch.timeout_s"),
     ("retries", -1, "fetch.retries")],
)
def test_validate_refuses_out_of_range_values(key, value, expected):
    raw = {"url": "https://example.org/a.zip", "digest": OTHER_DIGEST, key: value}
    with pytest.raises(ParamsError, match=expected):
        repo_params(FetchParams, "fetch", **raw)


# ---- any face set: a local folder, another folder inside the archive, other formats -------------------

PEOPLE_PATTERN = r"[^/]+/[^/]+\.(?i:png|jpe?g|pgm|bmp)"


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_fetch_from_a_local_folder_keeps_only_the_images(tmp_path, out_dir):
    from helpers import write_people_dir

    source = tmp_path / "my-faces"
    faces = write_people_dir(source / "photos", {"ann": 3, "bob": 2, "cy": 1}, sizes=[(10, 12), (31, 20)])
    reference, digest = tree_bytes(faces), content_digest(faces)
    (source / "photos" / "ann" / "notes.txt").write_text("not a face")
    (source / "photos" / ".DS_Store").write_bytes(b"\0")
    (source / "README.md").write_text("not below faces_folder")

    params = params_for(source, digest, faces_folder="photos", image_pattern=PEOPLE_PATTERN)
    result = fetch_faces(params, out_dir)

    assert tree_bytes(out_dir) == reference
    assert (result.images, result.subjects) == (6, 3)
    assert result.source == str(source)
    assert (source / "photos" / "ann" / "notes.txt").exists()  # the source folder is only read


def test_folder_and_its_zip_give_the_same_digest(tmp_path, out_dir):
    from helpers import write_people_dir

    faces = write_people_dir(tmp_path / "src", {"ann": 2, "bob": 2})
    digest = content_digest(faces)
    archive = zip_folder(faces, tmp_path / "faces.zip", prefix="dataset-v1/")
    kw = dict(faces_folder="", image_pattern=PEOPLE_PATTERN)
    assert fetch_faces(params_for(archive, digest, **kw), out_dir).digest == digest
    assert fetch_faces(params_for(faces, digest, **kw), tmp_path / "again" / "faces").digest == digest
    # a changed byte in the folder no longer matches the pinned digest
    path = next(faces.rglob("*.png"))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(FetchError, match="content digest mismatch"):
        fetch_faces(params_for(faces, digest, **kw), tmp_path / "third" / "faces")


def test_local_folder_without_faces_folder_is_named(tmp_path, out_dir):
    (tmp_path / "src").mkdir()
    with pytest.raises(FetchError, match=r"no folder 'pictures' \(fetch.faces_folder\)"):
        fetch_faces(params_for(tmp_path / "src", OTHER_DIGEST, faces_folder="pictures"), out_dir)
    assert_nothing_left(out_dir)


@pytest.mark.parametrize("key, value, expected", [
    ("faces_folder", "../up", "fetch.faces_folder must be a relative POSIX path"),
    ("faces_folder", "/abs", "fetch.faces_folder must be a relative POSIX path"),
    ("image_pattern", "([a-z", "fetch.image_pattern is not a regular expression"),
])
def test_validate_refuses_bad_folder_or_pattern(key, value, expected):
    raw = {"url": "x.zip", "digest": OTHER_DIGEST, key: value}
    with pytest.raises(ParamsError, match=expected):
        repo_params(FetchParams, "fetch", **raw)
