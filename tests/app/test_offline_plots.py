"""facesim.app.offline_plots: DVC's plots page with Vega, Vega-Lite and vega-embed inlined.

The builder is checked with a stand-in `npm` that packs small packages here (no network); the
repository's own template, as scripts/setup-env.sh builds it, is checked through DVC's renderer and,
in the integration tests, in headless Chromium with the network disabled: `dvc plots show` and
`dvc plots diff` of a small DVC project whose plots are declared the way dvc.yaml declares ours.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import REPO
from facesim.app import offline_plots
from facesim.app.offline_plots import PINS, TEMPLATE, OfflinePlotsError, build, integrity, is_current, read_pins
from headless import dom, needs_chromium

BUILT = REPO / TEMPLATE


def tarball(files: dict[str, str]) -> bytes:
    """An npm package tarball: `files` under package/."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def package(name: str, js: str, licence: str | None = "Copyright (c) the authors. BSD-3-Clause text.",
            declared: str = "BSD-3-Clause") -> dict[str, str]:
    files = {"package.json": json.dumps({"name": name, "license": declared}), f"build/{name}.min.js": js}
    if licence is not None:
        files["LICENSE"] = licence
    return files


@pytest.fixture
def fake_npm(tmp_path: Path):
    """Write packages for a stand-in `npm pack NAME@VERSION --pack-destination DIR` and the pins that
    match them; returns (make, npm): make(packages) -> pins file, npm the stand-in's path. Each call
    of the stand-in is logged to calls.log."""
    store = tmp_path / "registry"
    store.mkdir()
    npm = tmp_path / "npm"
    npm.write_text(f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open({str(tmp_path / 'calls.log')!r}, "a") as log:
    log.write(" ".join(args) + "\\n")
spec, destination = args[1], Path(args[args.index("--pack-destination") + 1])
source = Path({str(store)!r}) / (spec.replace("@", "-") + ".tgz")
if not source.exists():
    sys.exit("npm error 404 Not Found - " + spec)
shutil.copy(source, destination / source.name)
""")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)

    def make(packages: dict[str, dict[str, str]], digests: dict[str, str] | None = None) -> Path:
        pins = []
        for name, files in packages.items():
            data = tarball(files)
            (store / f"{name}-1.0.0.tgz").write_bytes(data)
            pins.append({"name": name, "version": "1.0.0", "file": f"build/{name}.min.js", "license": "BSD-3-Clause",
                         "integrity": (digests or {}).get(name, integrity(data))})
        path = tmp_path / "pins.json"
        path.write_text(json.dumps({"packages": pins}))
        return path

    return make, str(npm)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


THREE = {"vega": package("vega", "window.vega = {};", licence=None),
         "vega-lite": package("vega-lite", "window.vegaLite = {};"),
         "vega-embed": package("vega-embed", "window.vegaEmbed = function () {};")}


# ---- building the template -------------------------------------------------------------------------------


def test_build_inlines_each_build_and_licence_in_order_without_dvcs_cdn_scripts(tmp_path, fake_npm):
    make, npm = fake_npm
    out = tmp_path / "out" / "offline.html"
    assert build(make(THREE), out, npm=npm) is True
    page = out.read_text()
    builds = [page.index(js) for js in ("window.vega = {};", "window.vegaLite = {};", "window.vegaEmbed = function")]
    assert builds == sorted(builds)  # vega before vega-lite before vega-embed, as each needs the one before
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page and "https://" not in page  # DVC's CDN links have nowhere to go
    assert page.count("BSD-3-Clause text.") == 2 and "vega@1.0.0 (build/vega.min.js), BSD-3-Clause" in page
    assert "ships no LICENSE file" in page  # vega's tarball has none: said so, not invented
    assert 'renderer: "svg"' in page
    assert is_current(out, read_pins(tmp_path / "pins.json"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_a_current_template_is_left_alone_and_new_pins_rebuild_it(tmp_path, fake_npm):
    make, npm = fake_npm
    out = tmp_path / "offline.html"
    pins = make(THREE)
    build(pins, out, npm=npm)
    assert len(calls(tmp_path)) == 3
    assert build(pins, out, npm=npm) is False and len(calls(tmp_path)) == 3  # nothing fetched again
    changed = json.loads(pins.read_text())
    changed["packages"][0]["version"] = "1.0.1"
    pins.write_text(json.dumps(changed))
    assert not is_current(out, read_pins(pins))


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path, fake_npm):
    make, npm = fake_npm
    out = tmp_path / "offline.html"
    pins = make(THREE, digests={"vega-lite": "sha512-AAAA"})
    with pytest.raises(OfflinePlotsError, match=r"npm pack vega-lite@1.0.0: the tarball's digest sha512-\S+ is not "
                                                r"the pinned sha512-AAAA"):
        build(pins, out, npm=npm)
    assert not out.exists()


def test_a_changed_licence_or_unsafe_build_is_refused(tmp_path, fake_npm):
    make, npm = fake_npm
    out = tmp_path / "offline.html"
    relicensed = {**THREE, "vega-embed": package("vega-embed", "x", declared="GPL-3.0")}
    with pytest.raises(OfflinePlotsError, match=r"vega-embed@1.0.0: its licence is 'GPL-3.0', not the pinned "
                                                r"'BSD-3-Clause'"):
        build(make(relicensed), out, npm=npm)
    # DVC would replace a placeholder inside the code; </script> would end the inline script early
    for js, bad in (("var s = '{plot_divs}';", "{plot_divs}"), ("document.write('</SCRIPT>')", "</script")):
        with pytest.raises(OfflinePlotsError, match=f"vega@1.0.0 build/vega.min.js: holds '{re.escape(bad)}'"):
            build(make({**THREE, "vega": package("vega", js)}), out, npm=npm, force=True)


def test_without_npm_main_leaves_dvcs_own_page_and_says_why(tmp_path, fake_npm, capsys):
    make, _ = fake_npm
    (tmp_path / PINS).parent.mkdir(parents=True)
    make(THREE).replace(tmp_path / PINS)
    assert offline_plots.main(["--root", str(tmp_path), "--npm", str(tmp_path / "no-npm")]) == 1
    err = capsys.readouterr().err
    assert "offline plots template not built: " in err and "no-npm: not found; install Node.js and npm" in err
    page = (tmp_path / TEMPLATE).read_text()
    assert "{scripts}" in page and "{plot_divs}" in page  # DVC's CDN page: plots still draw online
    assert not is_current(tmp_path / TEMPLATE, read_pins(tmp_path / PINS))  # so setup tries again next time


def test_a_fetch_that_fails_names_the_package_and_npms_reason(tmp_path, fake_npm):
    make, npm = fake_npm
    pins = make(THREE)
    (tmp_path / "registry" / "vega-lite-1.0.0.tgz").unlink()
    with pytest.raises(OfflinePlotsError, match=r"npm pack vega-lite@1.0.0: failed \(npm error 404 Not Found"):
        build(pins, tmp_path / "offline.html", npm=npm)


# ---- the repository's template ---------------------------------------------------------------------------


def test_dvc_config_names_the_template_this_module_builds():
    from configobj import ConfigObj  # DVC's own config reader

    html_template = ConfigObj(str(REPO / ".dvc" / "config"))["plots"]["html_template"]
    assert (REPO / ".dvc" / html_template).resolve() == BUILT.resolve()


def test_the_readme_names_every_pinned_version_and_licence():
    readme = (REPO / PINS).with_name("README.md").read_text()
    for pin in read_pins(REPO / PINS):
        assert f"{pin.name} {pin.version}" in readme and pin.license in readme, pin


@pytest.fixture(scope="module")
def built_template() -> Path:
    """The template scripts/setup-env.sh built; the tests that use it fail, saying so, where it did not."""
    if not is_current(BUILT, read_pins(REPO / PINS)):
        pytest.fail(f"{TEMPLATE} is missing or not built from {PINS}: run scripts/setup-env.sh (it needs npm), "
                    "or python -m facesim.app.offline_plots")
    return BUILT


def test_dvcs_renderer_fills_the_template_without_any_cdn_link(built_template, tmp_path):
    from dvc_render import VegaRenderer, render_html

    points = [{"epoch": 1, "loss": 0.5, "rev": "workspace"}, {"epoch": 2, "loss": 0.3, "rev": "workspace"}]
    renderer = VegaRenderer(points, "loss.csv", x="epoch", y="loss")
    page = Path(render_html([renderer], tmp_path / "index.html", html_template=str(built_template))).read_text()
    assert "vegaEmbed('#loss_csv', spec)" in page
    assert "<script src=" not in page and "cdn.jsdelivr" not in page
    for pin in read_pins(REPO / PINS):
        assert f"{pin.spec} ({pin.file})" in page


# ---- in a browser, offline -------------------------------------------------------------------------------

EPOCHS = 12
DVC_YAML = """\
stages:
  train:
    foreach: [contrastive, triplet]
    do:
      cmd: python train.py ${item}
      plots:
        - reports/plots/${item}/history.csv:
            cache: false
            x: epoch
  evaluate:
    foreach: [contrastive, triplet]
    do:
      cmd: python evaluate.py ${item}
      plots:
        - reports/plots/${item}/roc.csv:
            cache: false
  robustness:
    foreach: [contrastive, triplet]
    do:
      cmd: python robustness.py ${item}
      plots:
        - reports/plots/${item}/robustness.csv:
            cache: false
            template: bar_horizontal
            x: same_person_acceptance
            y: case
plots:
  - ROC of all held-out pairs:
      template: simple
      x: fpr
      y:
        reports/plots/contrastive/roc.csv: tpr
        reports/plots/triplet/roc.csv: tpr
  - Loss per epoch:
      x: epoch
      y:
        reports/plots/contrastive/history.csv: [train_loss, val_loss]
        reports/plots/triplet/history.csv: [train_loss, val_loss]
"""


def write_plot_data(root: Path, scale: float = 1.0) -> None:
    for model in ("contrastive", "triplet"):
        folder = root / "reports" / "plots" / model
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "history.csv").write_text("epoch,train_loss,val_loss,val_roc_auc\n" + "".join(
            f"{e},{scale / e:.4f},{scale * 1.2 / e:.4f},{0.9 + e / 200:.4f}\n" for e in range(1, EPOCHS + 1)))
        (folder / "roc.csv").write_text("fpr,tpr,threshold\n0,0,2\n0.1,0.7,1.2\n0.3,0.9,0.8\n1,1,0\n")
        (folder / "robustness.csv").write_text("case,same_person_acceptance\nnone,0.95\nblur,0.6\nrotation,0.8\n")


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def plots_project(built_template, tmp_path_factory) -> Path:
    """A DVC project with this repository's .dvc/config and template, plots declared like ours, one commit."""
    root = tmp_path_factory.mktemp("plots-project")
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], root)
    run([*dvc, "init", "-q"], root)
    (root / ".dvc" / "config").write_text((REPO / ".dvc" / "config").read_text())
    (root / TEMPLATE).parent.mkdir(parents=True, exist_ok=True)
    (root / TEMPLATE).write_text(built_template.read_text())
    (root / "dvc.yaml").write_text(DVC_YAML)
    write_plot_data(root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "plots"], root)
    return root


def drawn_plots(page: str) -> dict[str, int]:
    """Each vega plot's div id -> the marks drawn in its SVG (0: nothing drawn, or a 0x0 picture)."""
    drawn = {}
    for match in re.finditer(r'<div id="([^"]+)" class="vega-embed', page):
        end = page.find('<div id="', match.end())
        part = page[match.end(): end if end > 0 else len(page)]
        size = re.search(r'<svg[^>]*class="marks" width="(\d+)" height="(\d+)"', part)
        marks = part.count('role="graphics-symbol"')
        drawn[match.group(1)] = marks if size and int(size[1]) > 0 and int(size[2]) > 0 else 0
    return drawn


PLOTS = {"ROC_of_all_held-out_pairs", "Loss_per_epoch",
         *(f"reports_plots_{m}_{f}_csv" for m in ("contrastive", "triplet") for f in ("history", "roc", "robustness"))}


def page_of(project: Path, *command: str) -> str:
    out = project / "out" / command[0]
    out.parent.mkdir(exist_ok=True)  # DVC makes only the last folder
    run([sys.executable, "-m", "dvc", "plots", *command, "-o", str(out)], project)
    return (out / "index.html").as_uri()


@pytest.mark.integration
@needs_chromium
@pytest.mark.parametrize("command", [("show",), ("diff", "HEAD")])
def test_every_plot_draws_with_the_network_disabled(plots_project, command):
    if command[0] == "diff":
        write_plot_data(plots_project, scale=0.8)  # the workspace against HEAD: two revisions in each plot
    drawn = drawn_plots(dom(page_of(plots_project, *command), offline=True))
    assert set(drawn) == PLOTS
    assert all(marks > 0 for marks in drawn.values()), drawn


@pytest.mark.integration
@needs_chromium
def test_dvcs_own_page_draws_nothing_offline(plots_project, tmp_path):
    """The control: with the CDN links (DVC's page, no template) the same plots stay blank offline,
    so the test above does run without network."""
    from dvc_render.html import PAGE_HTML

    cdn_page = tmp_path / "cdn.html"
    cdn_page.write_text(PAGE_HTML)
    drawn = drawn_plots(dom(page_of(plots_project, "show", "--html-template", str(cdn_page)), offline=True))
    assert drawn == {}  # vega-embed never loaded: not one plot became a vega-embed element
