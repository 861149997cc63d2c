"""Stage `fetch`: download a faces archive (or copy a local folder), verify it, publish data/raw/faces.

By default the archive is GitHub's zip of the pinned commit of
Ruturaj123/Face-Similarity-Siamese-Network (the ORL faces); only the files
below `fetch.faces_folder` (`data/faces`) whose path there matches
`fetch.image_pattern` (`training|testing/sN/K.pgm`) are kept. Any other face
set laid out as one folder per person works the same way, from a zip archive
or a local folder. The content digest of the kept files is pinned in
params.yaml, so a mirror and the real URL give the same bytes in `data/raw/`,
or the stage fails.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from facesim.core.atomic import staged_outputs
from facesim.core.digest import content_digest
from facesim.core.params import ParamsError, require
from facesim.mlops.runs import NULL_RUN, Run

# The environment variable that replaces params' fetch.url (a mirror, an offline copy).
DATA_URL_ENV = "FACESIM_DATA_URL"

_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The archive could not be obtained, or is not what params.yaml pins."""


@dataclass(frozen=True)
class FetchParams:
    url: str  # a zip archive (http(s)://, file:// or a path) or a local folder; FACESIM_DATA_URL overrides it
    digest: str  # "sha256:<hex>" over the extracted images (see content_digest)
    # where the faces lie inside the archive (below GitHub's '<repo>-<commit>/' folder, if any) or the
    # folder: a relative POSIX path, "" or "." for the top
    faces_folder: str
    # the files kept: a regular expression their path below faces_folder matches in full
    image_pattern: str
    max_bytes: int  # refuse archives (and their unpacked images) beyond this size
    timeout_s: float  # per network attempt
    retries: int  # network attempts after the first one

    def validate(self) -> None:
        require(bool(self.url), "fetch.url must not be empty")
        require(
            bool(re.fullmatch(r"sha256:[0-9a-f]{64}", self.digest)),
            f"fetch.digest must be 'sha256:' followed by 64 hex digits, got {self.digest!r}",
        )
        require(self.max_bytes > 0, f"fetch.max_bytes must be positive, got {self.max_bytes}")
        require(self.timeout_s > 0, f"fetch.timeout_s must be positive, got {self.timeout_s}")
        require(self.retries >= 0, f"fetch.retries must be >= 0, got {self.retries}")
        folder = PurePosixPath(self.faces_folder or ".")
        require(not folder.is_absolute() and ".." not in folder.parts and "\\" not in self.faces_folder,
                f"fetch.faces_folder must be a relative POSIX path inside the archive or folder, "
                f"got {self.faces_folder!r}")
        try:
            re.compile(self.image_pattern)
        except re.error as exc:
            raise ParamsError(f"fetch.image_pattern is not a regular expression ({exc}): "
                              f"{self.image_pattern!r}") from None

    def folder_parts(self) -> tuple[str, ...]:
        """faces_folder as path parts; () for the top."""
        return tuple(part for part in PurePosixPath(self.faces_folder or ".").parts if part != ".")

    def keeps(self, rel: str) -> bool:
        """Whether the file at `rel` (below faces_folder, POSIX) is one of the images."""
        return re.fullmatch(self.image_pattern, rel) is not None


@dataclass(frozen=True)
class FetchResult:
    source: str
    digest: str
    images: int
    subjects: int
    bytes: int
    seconds: float


def resolve_source(url: str) -> str:
    """The source to read: $FACESIM_DATA_URL when set, else params' url."""
    return os.environ.get(DATA_URL_ENV) or url


def _local_path(source: str) -> Path | None:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(source)
    return None


def _copy_capped(stream, dest, max_bytes: int, source: str) -> int:
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"{source}: archive is larger than fetch.max_bytes={max_bytes} bytes; refused")
        dest.write(chunk)
    return total


def download(source: str, dest: Path, *, max_bytes: int, timeout_s: float, retries: int) -> int:
    """Copy the archive at `source` (http(s)/file URL or local path) to `dest`; return its size."""
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise FetchError(f"{source}: no such archive file or folder")
        with local.open("rb") as src, dest.open("wb") as out:
            return _copy_capped(src, out, max_bytes, source)

    scheme = urllib.parse.urlparse(source).scheme
    if scheme not in ("http", "https"):
        raise FetchError(f"{source}: unsupported URL scheme '{scheme}' (use http(s)://, file:// or a path)")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 8))  # 1 s, 2 s, 4 s, 8 s ...
        try:
            request = urllib.request.Request(source, headers={"User-Agent": "facesim-fetch"})
            with urllib.request.urlopen(request, timeout=timeout_s) as response, dest.open("wb") as out:
                return _copy_capped(response, out, max_bytes, source)
        except urllib.error.HTTPError as exc:
            last_error = exc
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # a client error will not go away by retrying
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last_error = exc
    raise FetchError(
        f"could not download {source} after {attempt + 1} attempt(s): {last_error}. "
        f"Without network access, point {DATA_URL_ENV} at a copy of the archive "
        f"(a local path, file:// or http(s):// URL), e.g. "
        f"{DATA_URL_ENV}=../shared/datasets/<archive>.zip dvc repro"
    )


def _faces_path(name: str, params: FetchParams) -> PurePosixPath | None:
    """The path below faces_folder of an archive member, or None for members we do not keep.

    Raises FetchError for members that could escape the extraction directory.
    """
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise FetchError(f"archive member {name!r} has an absolute path; refused")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise FetchError(f"archive member {name!r} points outside the archive ('..'); refused")
    folder = params.folder_parts()
    # GitHub's archives put everything under one '<repo>-<commit>/' folder.
    for start in range(min(2, len(parts))):
        if parts[start : start + len(folder)] == folder:
            rel = parts[start + len(folder) :]
            if rel and params.keeps("/".join(rel)):
                return PurePosixPath(*rel)
            if folder:
                return None
    return None


def _no_images(source: str, params: FetchParams) -> FetchError:
    return FetchError(f"{source}: holds no images: no file below fetch.faces_folder '{params.faces_folder}' "
                      f"has a path there that matches fetch.image_pattern {params.image_pattern}")


def extract_faces(archive: Path, dest: Path, *, params: FetchParams, source: str) -> int:
    """Extract the kept images of `archive` into `dest`; return their total size."""
    max_bytes = params.max_bytes
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _faces_path(info.filename, params)) for info in zf.infolist() if not info.is_dir()]
            kept = [(info, rel) for info, rel in members if rel is not None]
            if not kept:
                raise _no_images(source, params)
            total = sum(info.file_size for info, _ in kept)
            if total > max_bytes:
                raise FetchError(f"{source}: images unpack to {total} bytes > fetch.max_bytes={max_bytes}; refused")
            for info, rel in kept:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)  # zipfile checks each member's CRC here
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise FetchError(f"{source}: not a readable zip archive (corrupt or truncated?): {exc}") from None
    return total


def copy_faces(folder: Path, dest: Path, *, params: FetchParams, source: str) -> int:
    """Copy the kept images below `folder`/faces_folder into `dest`; return their total size.

    Symbolic links are not followed out of the folder: a linked file is copied as the file it names,
    a linked folder is not entered."""
    top = folder.joinpath(*params.folder_parts())
    if not top.is_dir():
        raise FetchError(f"{source}: no folder {params.faces_folder!r} (fetch.faces_folder) in it")
    kept = []
    for directory, subdirs, files in os.walk(top):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            rel = path.relative_to(top).as_posix()
            if params.keeps(rel) and path.is_file():
                kept.append((path, rel))
    if not kept:
        raise _no_images(source, params)
    total = sum(path.stat().st_size for path, _ in kept)
    if total > params.max_bytes:
        raise FetchError(f"{source}: images add up to {total} bytes > fetch.max_bytes={params.max_bytes}; refused")
    for path, rel in kept:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return total


def fetch_faces(params: FetchParams, out_dir: str | os.PathLike, run: Run = NULL_RUN) -> FetchResult:
    """Download, verify and publish the faces to `out_dir` (e.g. data/raw/faces).

    Everything happens in a temporary directory; `out_dir` is replaced only
    when the digest matches and the metrics reached `run`, so a failure leaves
    the previous copy as it was.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    source = resolve_source(params.url)
    with staged_outputs(out_dir) as (staged,):
        local = _local_path(source)
        if local is not None and local.is_dir():
            size = copy_faces(local, staged, params=params, source=source)
        else:
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=staged.parent) as tmp:
                archive = Path(tmp) / "archive.zip"
                download(source, archive, max_bytes=params.max_bytes, timeout_s=params.timeout_s,
                         retries=params.retries)
                size = extract_faces(archive, staged, params=params, source=source)
        digest = content_digest(staged)
        if digest != params.digest:
            raise FetchError(
                f"{source}: content digest mismatch: expected {params.digest} (fetch.digest), "
                f"got {digest}; these are not the faces params.yaml pins: point fetch.url or FACESIM_DATA_URL at them, "
                f"or pin the new digest if the new faces are meant "
                f"(nothing was written to {out_dir})"
            )
        images = sorted(p for p in staged.rglob("*") if p.is_file())
        result = FetchResult(
            source=source,
            digest=digest,
            images=len(images),
            subjects=len({p.parent.name for p in images}),
            bytes=size,
            seconds=time.perf_counter() - started,
        )
        run.log_metrics({"images": result.images, "subjects": result.subjects, "bytes": result.bytes,
                         "seconds": result.seconds})
        run.set_tags({"data_digest": digest, "data_source": source})
    return result
