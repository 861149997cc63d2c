"""facesim.core.digest: the content digest of a folder, checked against a sha256 computed by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

from facesim.core.digest import content_digest


def test_content_digest_matches_a_hand_computed_sha256(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.pgm").write_bytes(b"\x00\x01\x02")
    (tmp_path / "a.pgm").write_bytes(b"hi")
    # Sorted paths, each as 8-byte big-endian length + bytes, then its content the same way.
    expected = hashlib.sha256(
        b"\x00\x00\x00\x00\x00\x00\x00\x05a.pgm" + b"\x00\x00\x00\x00\x00\x00\x00\x02hi"
        + b"\x00\x00\x00\x00\x00\x00\x00\x07b/x.pgm" + b"\x00\x00\x00\x00\x00\x00\x00\x03\x00\x01\x02"
    ).hexdigest()
    assert content_digest(tmp_path) == f"sha256:{expected}"


def test_content_digest_changes_with_a_byte_or_a_name(tmp_path: Path) -> None:
    (tmp_path / "a.pgm").write_bytes(b"hi")
    before = content_digest(tmp_path)
    (tmp_path / "a.pgm").write_bytes(b"ho")
    changed_byte = content_digest(tmp_path)
    (tmp_path / "a.pgm").rename(tmp_path / "c.pgm")
    renamed = content_digest(tmp_path)
    assert len({before, changed_byte, renamed}) == 3
