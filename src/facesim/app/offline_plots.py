"""DVC's HTML template for plots that draw offline: Vega, Vega-Lite and vega-embed inlined.

`dvc plots show` and `dvc plots diff` write a page whose interactive plots load those three libraries
from a CDN; offline, or behind a proxy, every one stays blank. DVC fills the HTML template named by
`plots.html_template` in `.dvc/config` instead of its own page when there is one: this module builds
that template, `.dvc/offline-plots/page.html`, from the npm packages pinned (version and tarball
digest) in `.dvc/offline-plots/pins.json`, fetched with `npm pack`. (Not in `.dvc/plots/`: DVC looks
up custom plot templates by name there.) The template leaves out DVC's `{scripts}` (the CDN links)
and carries the builds instead, with each package's licence. It also makes vega-embed draw SVG
rather than canvas: crisp when zoomed or printed, and the drawn marks are part of the page.

`python -m facesim.app.offline_plots` (run by scripts/setup-env.sh) builds it when it is missing or
its pins changed, and does nothing otherwise. Where npm cannot fetch the packages and no template
exists yet, it writes DVC's own page (CDN links) there, so that `dvc plots show` still works online,
and exits 1; the next run tries again.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

PINS = Path(".dvc", "offline-plots", "pins.json")  # relative to the repository root
TEMPLATE = Path(".dvc", "offline-plots", "page.html")
# DVC replaces these anywhere in the template (dvc_render.html.HTML.embed); the inlined code must not hold them.
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")
MARKER = "facesim offline plots:"
FALLBACK_MARKER = "facesim offline plots NOT BUILT"
NPM_TIMEOUT_S = 300

# Every vega-embed call that DVC's page makes draws SVG unless the call itself asks otherwise.
SVG_BY_DEFAULT = """(function () {
    var embed = window.vegaEmbed;
    window.vegaEmbed = Object.assign(function (el, spec, opt) {
        return embed(el, spec, Object.assign({renderer: "svg"}, opt));
    }, embed);
})();"""

# DVC's own page (dvc_render.html.PAGE_HTML), for when the offline one cannot be built.
FALLBACK_PAGE = f"""<!DOCTYPE html>
<html>
<head>
    <!-- {FALLBACK_MARKER}: Vega comes from the CDN; run scripts/setup-env.sh (needs npm) to inline it -->
    {{refresh_tag}}
    <title>DVC Plot</title>
    {{scripts}}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class OfflinePlotsError(RuntimeError):
    """The packages could not be fetched, or are not what the pins say."""


@dataclasses.dataclass(frozen=True)
class Pin:
    """One npm package: its build `file` (inside the package) is inlined; `integrity` is npm's digest of its tarball."""

    name: str
    version: str
    file: str
    license: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


def read_pins(path: str | os.PathLike) -> list[Pin]:
    fields = [f.name for f in dataclasses.fields(Pin)]
    try:
        packages = json.loads(Path(path).read_text(encoding="utf-8"))["packages"]
        return [Pin(**{k: str(p[k]) for k in fields}) for p in packages]
    except (KeyError, TypeError, ValueError) as exc:
        raise OfflinePlotsError(f"{path}: not a pins file (a 'packages' list, each with {', '.join(fields)}): "
                                f"{exc}") from exc


def marker(pins: Sequence[Pin]) -> str:
    return f"<!-- {MARKER} {' '.join(p.spec for p in pins)} -->"


def is_current(template: str | os.PathLike, pins: Sequence[Pin]) -> bool:
    """True when `template` is an offline template built from exactly `pins`."""
    try:
        with open(template, encoding="utf-8") as f:
            head = f.read(2000)
    except OSError:
        return False
    return marker(pins) in head


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def npm_pack(pin: Pin, folder: Path, npm: str = "npm") -> bytes:
    """The tarball of `pin` from the npm registry (npm's own client and configuration), checked against its digest."""
    if shutil.which(npm) is None:
        raise OfflinePlotsError(f"{npm}: not found; install Node.js and npm, then rerun scripts/setup-env.sh")
    destination = folder / pin.name
    destination.mkdir(parents=True)
    try:
        done = subprocess.run([npm, "pack", pin.spec, "--pack-destination", str(destination), "--ignore-scripts",
                               "--silent"], capture_output=True, text=True, timeout=NPM_TIMEOUT_S, cwd=folder)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OfflinePlotsError(f"npm pack {pin.spec}: {exc}") from exc
    tarballs = sorted(destination.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        why = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise OfflinePlotsError(f"npm pack {pin.spec}: failed ({why[-1].strip() if why else done.returncode})")
    data = tarballs[0].read_bytes()
    if integrity(data) != pin.integrity:
        raise OfflinePlotsError(f"npm pack {pin.spec}: the tarball's digest {integrity(data)} is not the pinned "
                                f"{pin.integrity}")
    return data


def _member(tarball: bytes, name: str, spec: str, required: bool = True) -> str | None:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        try:
            member = tar.extractfile(f"package/{name}")
        except KeyError:
            member = None
        if member is None:
            if required:
                raise OfflinePlotsError(f"{spec}: the package holds no file {name}")
            return None
        return member.read().decode("utf-8")


def _check_inlinable(text: str, what: str) -> None:
    """Text put inside the page: it must neither end its <script> or comment nor hold a DVC placeholder."""
    for bad in (*DVC_PLACEHOLDERS, "</script", "-->"):
        if bad in text.lower():
            raise OfflinePlotsError(f"{what}: holds '{bad}', which would break the page; pin another version")


def render(pins: Sequence[Pin], builds: Sequence[str], licences: Sequence[str]) -> str:
    """The template: DVC's page with the builds inlined, in dependency order, and their licences."""
    parts = ["<!DOCTYPE html>", "<html>", "<head>", f"    {marker(pins)}", "    {refresh_tag}",
             '    <meta charset="utf-8">', "    <title>DVC Plot</title>",
             "    <!-- Built by `python -m facesim.app.offline_plots` (scripts/setup-env.sh) from the npm packages "
             "pinned in .dvc/offline-plots/pins.json, so that the plots draw without network access. -->"]
    for pin, build, licence in zip(pins, builds, licences, strict=True):
        _check_inlinable(build, f"{pin.spec} {pin.file}")
        _check_inlinable(licence, f"{pin.spec} LICENSE")
        parts += [f"    <!-- {pin.spec} ({pin.file}), {pin.license}:\n{licence.rstrip()}\n    -->",
                  f"    <script>\n{build.rstrip()}\n    </script>"]
    parts += [f"    <script>\n{SVG_BY_DEFAULT}\n    </script>",
              "    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>",
              "</head>", "<body>", "    {plot_divs}", "</body>", "</html>", ""]
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(staged, 0o644)  # mkstemp's 0600 would hide the page from other users of a shared checkout
    os.replace(staged, path)


def build(pins_file: str | os.PathLike, template: str | os.PathLike, npm: str = "npm", force: bool = False) -> bool:
    """Write the offline template `template` from `pins_file` unless it is current; True when it was written."""
    pins = read_pins(pins_file)
    template = Path(template)
    if not force and is_current(template, pins):
        return False
    builds, licences = [], []
    with tempfile.TemporaryDirectory(prefix="facesim-vega-") as folder:
        for pin in pins:
            tarball = npm_pack(pin, Path(folder), npm)
            declared = json.loads(_member(tarball, "package.json", pin.spec)).get("license")
            if declared != pin.license:
                raise OfflinePlotsError(f"{pin.spec}: its licence is {declared!r}, not the pinned {pin.license!r}")
            builds.append(_member(tarball, pin.file, pin.spec))
            # vega's tarball ships no LICENSE file (its repository has one); package.json's licence is checked above
            licences.append(_member(tarball, "LICENSE", pin.spec, required=False)
                            or f"(the package ships no LICENSE file: see its repository's; package.json: {declared})")
    _write(template, render(pins, builds, licences))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facesim.app.offline_plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="the facesim repository (default: the current folder)")
    parser.add_argument("--npm", default="npm", help="the npm command (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the template is current")
    args = parser.parse_args(argv)
    root = Path(args.root)
    template = root / TEMPLATE
    try:
        built = build(root / PINS, template, npm=args.npm, force=args.force)
    except OfflinePlotsError as exc:
        print(f"facesim: offline plots template not built: {exc}", file=sys.stderr)
        if not template.exists():
            _write(template, FALLBACK_PAGE)
            print(f"facesim: {TEMPLATE.as_posix()} is DVC's own page for now: its plots load Vega from the CDN",
                  file=sys.stderr)
        return 1
    pins = " ".join(p.spec for p in read_pins(root / PINS))
    print(f"facesim: {TEMPLATE.as_posix()} {'built' if built else 'is up to date'} ({pins} inlined)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
