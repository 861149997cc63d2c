"""facesim.core.paths: numbers sorted as numbers, and paths shown relative to where the user is."""

from __future__ import annotations

from pathlib import Path

from facesim.core.paths import natural_key, show_path


def test_natural_key_reads_numbers_as_numbers():
    names = ["s10/1.pgm", "s2/10.pgm", "s2/9.pgm", "s1/2.pgm", "s1/10.pgm", "README", "s2/9.png"]
    assert sorted(names, key=natural_key) == ["README", "s1/2.pgm", "s1/10.pgm", "s2/9.pgm", "s2/9.png",
                                               "s2/10.pgm", "s10/1.pgm"]
    assert natural_key("s12/3.pgm") == ["s", 12, "/", 3, ".pgm"]
    assert natural_key("") == [""] and natural_key("007") == ["", 7, ""]  # leading zeros: the same number


def test_show_path_is_relative_below_the_working_directory_and_as_given_elsewhere(tmp_path: Path, monkeypatch):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert show_path(work / "data" / "a.pgm") == "data/a.pgm"  # absolute, below: relative
    assert show_path("data/../data/a.pgm") == "data/a.pgm"  # relative: resolved first
    assert show_path(work) == "."
    elsewhere = tmp_path / "elsewhere" / "b.pgm"
    assert show_path(elsewhere) == str(elsewhere)  # not below: as given
    assert show_path("../elsewhere/b.pgm") == "../elsewhere/b.pgm"
