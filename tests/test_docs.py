"""The README and docs/ pages: a short README, and no link that leads nowhere.

Pure file reads (no facesim import): the README stays at most 200 lines with the quickstart's two
commands, every relative link in README.md and docs/*.md names a file that exists, and every
`#anchor` into a markdown file names one of its headings (GitHub's slugs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or ")"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def links(path: Path) -> list[tuple[int, str]]:
    """Every link target in the prose of a markdown file, with its line number."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercased, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings, repeats numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None  # http:, https:, mailto:


def test_the_pages_exist():
    assert README.is_file()
    assert DOCS, "docs/*.md: no pages found"


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines (at most 200): move the detail to a docs/ page"


def test_readme_quickstart_block_holds_the_two_commands():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quickstart\s*$(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md: no '## Quickstart' section"
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, "README.md: the Quickstart section has no code block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    for command in ("scripts/repro.sh", "scripts/test.sh"):
        assert command in commands, f"README.md: the Quickstart code block has no line `{command}`: {commands}"


def test_readme_results_table_is_marked_for_regeneration():
    text = README.read_text(encoding="utf-8")
    table = re.search(r"<!-- results-table -->\n(.*?)<!-- /results-table -->", text, re.DOTALL)
    assert table, "README.md: no table between <!-- results-table --> and <!-- /results-table -->"
    rows = [line for line in table.group(1).splitlines() if line.startswith("|")]
    assert len(rows) >= 3, f"README.md: the marked results table has {len(rows)} rows"


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for _, target in links(README)
              if not is_external(target) and not target.startswith("#")}
    missing = [rel(page) for page in DOCS if page.resolve() not in linked]
    assert not missing, f"README.md links no page {missing}"


def test_every_docs_page_links_back_to_the_readme():
    for page in DOCS:
        targets = {target.split("#")[0] for _, target in links(page)}
        assert "../README.md" in targets, f"{rel(page)}: no link back to ../README.md"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_point_at_files_that_exist(page: Path):
    broken = []
    for number, target in links(page):
        if is_external(target) or target.startswith("#"):
            continue
        file = target.split("#")[0].split("?")[0]
        if not (page.parent / file).exists():
            broken.append(f"{rel(page)}:{number}: ({target}): {file} does not exist")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_anchor_links_match_a_heading(page: Path):
    broken = []
    for number, target in links(page):
        if is_external(target) or "#" not in target:
            continue
        file, anchor = target.split("#", 1)
        linked = (page.parent / file).resolve() if file else page
        if linked.suffix.lower() != ".md" or not linked.is_file():
            continue  # a missing file is the other test's; anchors into other files are not checked
        if anchor not in anchors(linked):
            broken.append(f"{rel(page)}:{number}: ({target}): {rel(linked)} has no heading #{anchor}; "
                          f"its anchors: {sorted(anchors(linked))}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Cross-validation: people the models never saw", "cross-validation-people-the-models-never-saw"),
    ("What moved the EER, on all 5 folds and 3 seeds", "what-moved-the-eer-on-all-5-folds-and-3-seeds"),
    ("How: MLflow's URL parameters and saved views (MLflow 3.17)",
     "how-mlflows-url-parameters-and-saved-views-mlflow-317"),
    ("The runs: `facesim ui`", "the-runs-facesim-ui"),
    ("dvc.yaml deps are derived, and checked", "dvcyaml-deps-are-derived-and-checked"),
])
def test_slug_follows_github(heading: str, anchor: str):
    assert slug(heading) == anchor


def _results_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", REPO / "scripts" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page, name", [("README.md", "results-table"), ("docs/cross-validation.md", "cv-table"),
                                        ("docs/results.md", "heldout-table"), ("docs/results.md", "robustness-table")])
def test_the_results_tables_are_the_committed_reports(page: str, name: str):
    # scripts/results_table.py builds them from reports/ and benchmarks/results/ (`--write` puts them in place)
    module = _results_tables()
    build = dict(module.TABLES[page])[name]
    assert module.marked_table((REPO / page).read_text(encoding="utf-8"), name, page) == build(REPO), (
        f"{page}: the {name} differs from the committed reports; run scripts/results_table.py --write")
