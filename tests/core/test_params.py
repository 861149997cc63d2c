"""facesim.core.params: one typed, validated section of params.yaml, with errors naming file and key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from facesim.core.params import ParamsError, load_params_file, load_section, parse_section, require


@dataclass(frozen=True)
class Example:
    steps: int  # required
    rate: float = 0.1
    name: str = "run"
    shuffle: bool = True
    mode: Literal["pairs", "triplets"] = "pairs"
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None

    def validate(self) -> None:
        require(self.rate > 0, f"example.rate must be positive, got {self.rate}")


def parse(raw: dict, source: str = "params.yaml") -> Example:
    return parse_section(Example, raw, "example", source=source)


# ---- type coercion ------------------------------------------------------------------------------


def test_defaults_fill_what_is_not_given() -> None:
    assert parse({"steps": 3}) == Example(steps=3)


@pytest.mark.parametrize("value, expected", [(2, 2.0), (0.5, 0.5), ("1e-3", 0.001), ("2.5E+1", 25.0)])
def test_float_accepts_ints_and_numeric_strings(value, expected) -> None:
    rate = parse({"steps": 1, "rate": value}).rate
    assert type(rate) is float and rate == expected


@pytest.mark.parametrize("value", [True, "fast", None, [1.0]])
def test_float_refuses_non_numbers(value) -> None:
    with pytest.raises(ParamsError, match=r"params\.yaml: example\.rate must be a number"):
        parse({"steps": 1, "rate": value})


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None])
def test_int_refuses_bool_float_and_str(value) -> None:
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: example.steps must be an integer, got {value!r}")):
        parse({"steps": value})


def test_bool_str_literal_list_and_optional() -> None:
    params = parse({"steps": 1, "shuffle": False, "name": "x", "mode": "triplets", "sizes": [3, 4], "limit": None})
    assert (params.shuffle, params.name, params.mode, params.sizes, params.limit) == (False, "x", "triplets", (3, 4), None)
    assert parse({"steps": 1, "limit": 5}).limit == 5
    with pytest.raises(ParamsError, match=r"example\.shuffle must be true or false, got 1"):
        parse({"steps": 1, "shuffle": 1})
    with pytest.raises(ParamsError, match=r"example\.name must be a string"):
        parse({"steps": 1, "name": 7})
    with pytest.raises(ParamsError, match=r"example\.mode must be one of pairs, triplets, got 'both'"):
        parse({"steps": 1, "mode": "both"})
    with pytest.raises(ParamsError, match=r"example\.sizes\[1\] must be an integer, got 'x'"):
        parse({"steps": 1, "sizes": [1, "x"]})
    with pytest.raises(ParamsError, match=r"example\.sizes must be a list"):
        parse({"steps": 1, "sizes": 3})
    with pytest.raises(ParamsError, match=r"example\.limit must be"):
        parse({"steps": 1, "limit": "none"})


# ---- keys and sections ----------------------------------------------------------------------------


def test_unknown_key_is_refused_and_the_allowed_keys_listed() -> None:
    with pytest.raises(ParamsError) as caught:
        parse({"steps": 1, "stpes": 2, "lr": 0.1}, source="conf/params.yaml")
    message = str(caught.value)
    assert message.startswith("conf/params.yaml: unknown key(s) example.lr, example.stpes")
    assert "allowed: steps, rate, name, shuffle, mode, sizes, limit" in message


def test_unknown_non_string_key_is_a_params_error() -> None:
    # YAML `example: {1: 2, x: 3}` gives an int key beside a str key
    with pytest.raises(ParamsError, match=r"unknown key\(s\) example\.1, example\.x"):
        parse({"steps": 1, 1: 2, "x": 3})


def test_missing_required_key() -> None:
    with pytest.raises(ParamsError, match=r"^params\.yaml: missing key example\.steps$"):
        parse({"rate": 0.2})


def test_section_that_is_not_a_mapping() -> None:
    with pytest.raises(ParamsError, match=r"section 'example' must be a mapping, got 3"):
        parse(3)


def test_validate_errors_are_prefixed_with_the_file() -> None:
    with pytest.raises(ParamsError, match=r"^other\.yaml: example\.rate must be positive, got -1\.0$"):
        parse({"steps": 1, "rate": -1}, source="other.yaml")


# ---- files ------------------------------------------------------------------------------------------


def test_load_section_reads_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("other: {x: 1}\nexample:\n  steps: 10\n  rate: 1e-3\n", encoding="utf-8")
    params = load_section(Example, path, "example")
    assert params == Example(steps=10, rate=0.001)  # YAML reads 1e-3 as a string; it becomes a float


@pytest.mark.parametrize(
    "text, expected",
    [
        ("other: {x: 1}\n", r"missing section 'example'"),
        ("example:\n  rate: 0.5\n", r"missing key example\.steps"),
        ("example:\n  steps: 1\n  sped: 2\n", r"unknown key\(s\) example\.sped"),
        ("example:\n  steps: true\n", r"example\.steps must be an integer, got True"),
        ("example: [1, 2\n", r"not valid YAML"),
        ("- 1\n- 2\n", r"expected a mapping of sections"),
        ("", r"expected a mapping of sections"),
    ],
)
def test_errors_from_a_file_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "my-params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError, match=expected) as caught:
        load_section(Example, path, "example")
    assert str(caught.value).startswith(f"{path}: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: file not found"):
        load_params_file(tmp_path / "nope.yaml")
