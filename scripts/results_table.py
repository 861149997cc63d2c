"""The README's headline results table, built from the committed reports, so that every figure in it is one of
theirs: `python scripts/results_table.py` prints it, `--write` puts it into README.md between the
`<!-- results-table -->` markers, and the cross-validation table into docs/cross-validation.md between its
`<!-- cv-table -->` markers, and the held-out and robustness tables into docs/results.md (tests/test_docs.py
fails when a page and the reports differ).

Per model (backbone x loss): the cross-validation's mean EER, FRR and realised FAR at the target FAR and TAR at
FAR 0.1% (reports/cv/<backbone>/<loss>.json, the target from params.yaml), the evaluate stage's worst photo change
(reports/plots/<backbone>-<loss>/robustness.csv) and the embedding speed measured by the benchmarks
(benchmarks/results/quick.json for the compact ensembles from files, backbones.json for dlib's new faces).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LOSSES = ("contrastive", "triplet")


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def worst_change(table: Path) -> str:
    """'blur radius 2: 0.974 (unchanged 0.978)': the change with the lowest same-person acceptance."""
    with open(table, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    unchanged = next(float(r["same_person_acceptance"]) for r in rows if r["family"] == "none")
    worst = min((r for r in rows if r["family"] != "none"), key=lambda r: float(r["same_person_acceptance"]))
    return f"{worst['family']} {worst['strength']}: {float(worst['same_person_acceptance']):.3f} (unchanged {unchanged:.3f})"


def embed_speed(root: Path, backbone: str, loss: str) -> str:
    """Faces per second to embed, as the committed benchmarks measured them."""
    if backbone == "dlib":
        rows = json.loads((root / "benchmarks/results/backbones.json").read_text())["rows"]
        speed = next(r["embed_faces_per_s"] for r in rows if r["backbone"] == "dlib")
        return f"~{speed:.0f} new, cached after"
    rows = json.loads((root / "benchmarks/results/quick.json").read_text())["results"]
    return f"{next(r['embed_files_per_s'] for r in rows if r['system'] == loss):,.0f}"


@functools.cache
def _train_params(root: Path, backbone: str):
    """The train section with backbones.<backbone> over it, read once per backbone for both tables."""
    from facesim.training.train_params import load_train_params

    return load_train_params(root / "params.yaml", backbone)


def ensemble(root: Path, backbone: str, loss: str) -> str:
    """'4 x widths 8-64' (compact networks) or '3 heads' (on dlib's descriptor): the model's members, as
    params.yaml trains them (the train section with backbones.<backbone> over it)."""
    train = _train_params(root, backbone)
    own = train.loss_params(loss)
    if train.backbone == "dlib":
        return f"{own.members} heads"
    if train.backbone == "compact":
        return f"{own.members} x widths {own.channels[0]}-{own.channels[-1]}"
    return f"{own.members} x {train.backbone}"


def results_table(root: Path = REPO) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())
    target = params["evaluate"]["target_far"]
    lines = [f"| model (its members) | CV EER | FRR at the {target * 100:g}% FAR target (FAR realised) | TAR at FAR 0.1% "
             "| worst robustness change, same-person acceptance | embed faces/s |",
             "|---|---|---|---|---|---|"]
    for backbone in params["pipeline"]["backbones"]:
        for loss in LOSSES:
            cv = json.loads((root / f"reports/cv/{backbone}/{loss}.json").read_text())
            lines.append(f"| {backbone}-{loss} ({ensemble(root, backbone, loss)}) | {_percent(cv['eer'])} | {_percent(cv['frr'])} ({_percent(cv['far'])}) "
                         f"| {cv['tar_at_far_1e-3']:.3f} | {worst_change(root / f'reports/plots/{backbone}-{loss}/robustness.csv')} "
                         f"| {embed_speed(root, backbone, loss)} |")
    return "\n".join(lines)


def cv_table(root: Path = REPO) -> str:
    """docs/cross-validation.md's table: every model's cross-validation summary (reports/cv/<backbone>/<loss>_details.json)
    and, of its runs (reports/cv/<backbone>/folds/<loss>/), how many kept the calibration gap within 1 point."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    target = f"{params['evaluate']['target_far'] * 100:g}%"
    lines = ["| model (its members) | EER (± std over 15 runs; ± seed spread) | ROC AUC | precision@1 | precision@5 | mAP "
             f"| FAR / FRR at the {target} target | TAR at FAR 1% / 0.1% | worst calibration gap | runs within 1 point "
             "| EER per fold |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for backbone in params["cv"]["backbones"]:
        for loss in params["cv"]["models"]:
            details = json.loads((root / f"reports/cv/{backbone}/{loss}_details.json").read_text())
            mean, std, seeds = details["mean"], details["std"], details["seed_std"]
            gaps = [json.loads(path.read_text())["calibration_gap"]
                    for path in sorted((root / f"reports/cv/{backbone}/folds/{loss}").rglob("*.json"))]
            folds = " / ".join(_percent(value) for _, value in sorted(details["fold_eer"].items()))
            lines.append(
                f"| {backbone}-{loss} ({ensemble(root, backbone, loss)}) | {_percent(mean['eer'])} ± {_percent(std['eer'])}; ± {seeds['eer'] * 100:.3f}% "
                f"| {mean['roc_auc']:.5f} | {mean['precision_at_1']:.3f} | {mean['precision_at_5']:.3f} | {mean['map']:.4f} "
                f"| {_percent(mean['far'])} / {_percent(mean['frr'])} "
                f"| {mean['tar_at_far_1e-2']:.3f} / {mean['tar_at_far_1e-3']:.3f} "
                f"| {details['worst_calibration_gap'] * 100:.2f} points | {sum(g <= 0.01 for g in gaps)} of {len(gaps)} "
                f"| {folds} |")
    return "\n".join(lines)


def _models(params: dict) -> list[str]:
    return [f"{backbone}-{loss}" for backbone in params["pipeline"]["backbones"] for loss in LOSSES]


def heldout_table(root: Path = REPO) -> str:
    """docs/results.md's table: each model on the held-out people (reports/metrics/<model>_details.json)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    models = _models(params)
    details = [json.loads((root / f"reports/metrics/{model}_details.json").read_text()) for model in models]

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(d) for d in details) + " |"

    def prf(pairs: dict) -> str:
        return " / ".join(f"{pairs[k]:.3f}" for k in ("precision", "recall", "f1"))

    return "\n".join([
        "| on the held-out people | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
        row(f"all {details[0]['all_pairs']['n_pairs']} pairs: ROC AUC / EER",
            lambda d: f"{d['all_pairs']['roc_auc']:.4f} / {d['all_pairs']['eer']:.4f}"),
        row("all pairs: FAR / FRR at the deployed threshold",
            lambda d: f"{d['all_pairs']['far']:.3f} / {d['all_pairs']['frr']:.3f}"),
        row("all pairs: accuracy", lambda d: f"{d['all_pairs']['accuracy']:.4f}"),
        row(f"sampled test pairs ({details[0]['test']['n_pairs']}): accuracy; precision / recall / F1",
            lambda d: f"{d['test']['accuracy']:.3f}; {prf(d['test'])}"),
        row("retrieval: precision@1 / precision@5 / mAP",
            lambda d: " / ".join(f"{d['retrieval'][k]:.3f}" for k in ("precision_at_1", "precision_at_5", "map"))),
        row(f"distance threshold ({params['evaluate']['target_far'] * 100:g}% FAR on the validation people against "
            "the training people)", lambda d: f"{d['threshold']:.3f}"),
        row("the validation people's own pairs: accuracy / FAR / FRR / EER",
            lambda d: " / ".join(f"{d['validation'][k]:.3f}" for k in ("accuracy", "far", "frr", "eer"))),
    ])


def robustness_table(root: Path = REPO) -> str:
    """docs/results.md's table: every photo change of the evaluate stage (reports/plots/<model>/robustness.csv),
    same-person acceptance / different-person acceptance."""
    models = _models(yaml.safe_load((root / "params.yaml").read_text()))
    tables = []
    for model in models:
        with open(root / f"reports/plots/{model}/robustness.csv", newline="", encoding="utf-8") as file:
            tables.append(list(csv.DictReader(file)))
    lines = ["| change | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for rows in zip(*tables):
        change = "none (the reference)" if rows[0]["family"] == "none" else f"{rows[0]['family']} {rows[0]['strength']}"
        lines.append(f"| {change} | " + " | ".join(
            f"{float(r['same_person_acceptance']):.3f} / {float(r['different_person_acceptance']):.3f}" for r in rows) + " |")
    return "\n".join(lines)


# page -> [(its markers' name, the function that builds the table between them)]
TABLES = {"README.md": [("results-table", results_table)], "docs/cross-validation.md": [("cv-table", cv_table)],
          "docs/results.md": [("heldout-table", heldout_table), ("robustness-table", robustness_table)]}


def marked_table(text: str, name: str = "results-table", page: str = "README.md") -> str:
    """The table between a page's `<!-- name -->` and `<!-- /name -->` markers."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        raise ValueError(f"{page}: no {start} ... {end} markers around the table")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the tables in README.md and docs/cross-validation.md")
    args = parser.parse_args()
    for page, tables in TABLES.items():
        for name, build in tables:
            table = build()
            if not args.write:
                print(f"{page}, {name}:\n{table}\n")
                continue
            path = REPO / page
            text = path.read_text(encoding="utf-8")
            old = marked_table(text, name, page)
            path.write_text(text.replace(old, table, 1), encoding="utf-8")
            print(f"{page}: {name} " + ("unchanged" if old == table else "rewritten"), file=sys.stderr)


if __name__ == "__main__":
    main()
