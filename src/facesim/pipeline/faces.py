"""The faces of data/raw/faces and the sample stage's CSVs, as every stage reads them: the faces of a person
folder (`list_faces`, `all_faces`), the CSVs (`load_tables`), the faces they name (`face_paths`) and the
held-out ones (`held_out_faces`).

Images are named by their path relative to `data/raw/faces` (`training/s12/3.pgm`), so the CSVs work in any
clone. How the pairs and triplets are drawn: `facesim.pipeline.pairs`; the sample stage: `facesim.pipeline.sample`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from facesim.core.paths import natural_key


class SampleError(ValueError):
    """The raw faces cannot give the pairs or triplets asked for."""


@dataclass(frozen=True)
class Face:
    path: str  # relative to data/raw/faces, POSIX separators
    subject: str  # e.g. "s12"


def list_faces(faces_dir: str | os.PathLike, group: Literal["training", "testing"] | None = None) -> list[Face]:
    """The images `faces_dir/group/<person>/<image>` (group None: `faces_dir/<person>/<image>`), in
    natural order (s2 before s10). Every file counts (the fetch stage keeps only images), but for hidden
    ones (.DS_Store)."""
    base = Path(faces_dir) / group if group else Path(faces_dir)
    if not base.is_dir():
        raise SampleError(f"{base}: directory not found (run the fetch stage first)")
    faces = [
        Face(path=p.relative_to(faces_dir).as_posix(), subject=p.parent.name)
        for p in base.glob("*/*") if p.is_file() and not p.name.startswith(".")
    ]
    if not faces:
        raise SampleError(f"{base}: no <person>/<image> files found")
    return sorted(faces, key=lambda f: natural_key(f.path))


def all_faces(faces_dir: str | os.PathLike, layout: Literal["split", "people"] = "split") -> list[Face]:
    """Every face of every person (cross-validation deals them into groups itself)."""
    if layout == "split":
        return list_faces(faces_dir, "training") + list_faces(faces_dir, "testing")
    return list_faces(faces_dir)


def load_tables(paths: dict[str, str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """The sample CSVs by name; a missing one says to run the sample stage."""
    tables = {}
    for name, path in paths.items():
        try:
            tables[name] = pd.read_csv(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not found (run the sample stage first)") from None
    return tables


FACE_COLUMNS = ("image1", "image2", "anchor", "positive", "negative")  # the columns of the CSVs that name a face


def held_out_faces(test_pairs: pd.DataFrame) -> list[Face]:
    """The held-out faces: every face the test pairs name, once each, in natural order, with its person.

    The sample stage decides who is held out (the `testing` folder, or `sample.held_out` /
    `held_out_fraction`) and draws test pairs for every held-out image, so the stages after it read
    the held-out faces from its test pairs whatever the layout."""
    people = {path: subject for column, subject_column in (("image1", "subject1"), ("image2", "subject2"))
              for path, subject in zip(test_pairs[column], test_pairs[subject_column])}
    return [Face(path=path, subject=str(people[path])) for path in sorted(people, key=natural_key)]


def face_paths(tables: dict[str, pd.DataFrame]) -> pd.Series:
    """Every face the sample tables name (with repeats), as paths relative to the faces folder."""
    return pd.concat([table[column] for table in tables.values() for column in table.columns
                      if column in FACE_COLUMNS])
