"""`facesim verify | search | embed`: the trained models from the command line (see facesim.api)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

MODEL_HELP = ("'contrastive' or 'triplet' (models/<name>.pt, threshold from reports/metrics/<name>.json), "
              "a checkpoint PATH (.pt; threshold from a .json of the same name beside it, or --threshold) "
              "or an MLflow model URI, e.g. models:/facesim-contrastive@champion (default: %(default)s)")
FACE = "data/raw/faces/testing/s5/1.pgm"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesim",
        description="Use the trained Siamese networks: verify two faces, search a gallery, embed images. "
                    "Images may be any format Pillow opens (PGM, PNG, JPEG, ...), any size, grey or colour.",
        epilog=f"examples:\n  facesim verify {FACE} data/raw/faces/testing/s5/2.pgm\n"
               f"  facesim search {FACE} -k 5 --figure top5.png\n"
               "  facesim embed data/raw/faces/testing --out embeddings.csv\n\n"
               "'facesim COMMAND --help' explains each argument.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        return sub

    def common(sub: argparse.ArgumentParser, default_model: str, threshold: bool = True) -> None:
        sub.add_argument("--model", default=default_model, metavar="MODEL", help=MODEL_HELP)
        if threshold:
            sub.add_argument("--threshold", type=float, metavar="T",
                             help="distance threshold (same person when distance <= T) instead of the one "
                                  "the evaluate stage calibrated, e.g. --threshold 0.9")
        sub.add_argument("--root", metavar="DIR",
                         help="the facesim repository (default: the first folder from here upward with a "
                              "dvc.yaml), e.g. --root ~/facesim")
        sub.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
        sub.add_argument("--no-detect", action="store_true",
                         help="use each whole picture as the face, without looking for it (for pictures already "
                              "framed like the ORL faces that the face detector misses)")

    verify = command("verify", "are two faces the same person?",
                     f"facesim verify {FACE} data/raw/faces/testing/s6/1.pgm --json")
    verify.add_argument("image_a", metavar="IMAGE_A", help=f"first face image, e.g. {FACE}")
    verify.add_argument("image_b", metavar="IMAGE_B", help="second face image, e.g. photo.jpg")
    common(verify, "contrastive")

    search = command("search", "the k gallery faces closest to a query face",
                     f"facesim search {FACE} --gallery data/raw/faces/testing -k 5 --figure top5.png")
    search.add_argument("query", metavar="QUERY", help=f"query face image, e.g. {FACE}")
    search.add_argument("--gallery", metavar="DIR",
                        help="folder of faces, one sub-folder per person (searched recursively; non-images "
                             "are skipped); default: the held-out test faces, data/raw/faces/testing")
    search.add_argument("-k", type=int, default=5, help="how many matches to show (default: %(default)s), e.g. -k 3")
    search.add_argument("--figure", metavar="PNG",
                        help="also draw the query and its matches, like the top-5 figure, e.g. --figure out.png")
    search.add_argument("--no-cache", action="store_true",
                        help="embed every gallery face now, neither reading nor writing the cache in .facesim-cache/")
    common(search, "triplet")

    embed = command("embed", "write the embeddings of images to a CSV or .npy file",
                    "facesim embed data/raw/faces/testing/s5 photo.png --out embeddings.npy")
    embed.add_argument("paths", nargs="+", metavar="PATH",
                       help="image files and folders (searched recursively; non-images in folders are skipped), "
                            "e.g. data/raw/faces/testing")
    embed.add_argument("--out", required=True, metavar="FILE",
                       help="output: .csv (columns path, person, e0..eN) or .npy (the N x D matrix, rows in "
                            "the order listed with --json), e.g. --out embeddings.csv")
    embed.add_argument("--no-cache", action="store_true", help="neither read nor write the cache in .facesim-cache/")
    common(embed, "triplet", threshold=False)
    return parser


def _verify_text(result) -> str:
    side = "below" if result.same_person else "above"
    verdict = "same person" if result.same_person else "different people"
    return "\n".join([
        f"image A    {result.image_a}",
        f"image B    {result.image_b}",
        f"model      {result.model}",
        f"distance   {result.distance:.4f}",
        f"threshold  {result.threshold:.4f} ({result.threshold_source})",
        f"verdict    {verdict}: {result.margin:.4f} {side} the threshold ({result.relative_margin:.0%} of it)",
    ])


def _search_text(result) -> str:
    person = f" (person {result.query_person})" if result.query_person else ""
    threshold = "none" if result.threshold is None else f"{result.threshold:.4f}"
    left_out = ", the query left out" if result.query_in_gallery else ""
    lines = [
        f"query      {result.query}{person}",
        f"model      {result.model}, threshold {threshold}",
        f"gallery    {result.gallery}: {result.gallery_size} faces{left_out} "
        f"({result.embedded} embedded now, {result.cached} from the cache)",
        "",
        "rank  distance  within threshold  person  path",
    ]
    for m in result.matches:
        within = "-" if m.same_person is None else ("yes" if m.same_person else "no")
        lines.append(f"{m.rank:>4}  {m.distance:8.4f}  {within:<16}  {m.person:<6}  {m.path}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> str:
    from facesim import api

    if args.command == "verify":
        result = api.verify(args.image_a, args.image_b, args.model, root=args.root, threshold=args.threshold,
                            detect=not args.no_detect)
        return json.dumps(result.to_dict(), indent=2) if args.json else _verify_text(result)
    if args.command == "search":
        result = api.search(args.query, args.gallery, args.k, args.model, root=args.root,
                            threshold=args.threshold, cache=not args.no_cache, detect=not args.no_detect)
        if args.figure:
            from facesim.render import RenderParams

            api.search_figure(result, args.k).savefig(args.figure, dpi=RenderParams().dpi, metadata={"Software": None})
        return json.dumps(result.to_dict(), indent=2) if args.json else _search_text(result)
    result = api.embed(args.paths, args.model, root=args.root, cache=not args.no_cache, detect=not args.no_detect)
    out = result.save(args.out)
    if args.json:
        return json.dumps({"model": result.model, "out": str(out), "paths": result.paths,
                           "dimensions": int(result.vectors.shape[1]), "skipped": result.skipped}, indent=2)
    return f"{len(result.paths)} embeddings ({result.vectors.shape[1]} dimensions, {result.model}) written to {out}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from facesim.api import SkippedFilesWarning  # imported after parsing: `facesim --help` stays instant

    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFilesWarning)
        try:
            output = _run(args)
        except (OSError, ValueError) as exc:  # missing or unreadable files, unknown models: the message says which
            error = exc
    for warning in caught:
        if issubclass(warning.category, SkippedFilesWarning):
            print(f"facesim {args.command}: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if error is not None:
        print(f"facesim {args.command}: error: {error}", file=sys.stderr)
        return 1
    try:
        print(output, flush=True)
    except BrokenPipeError:
        # the reader went away (`facesim search --json | head`): stop quietly, as command-line tools do;
        # stdout goes to /dev/null so that Python's final flush does not complain either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # the status of a process ended by SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
