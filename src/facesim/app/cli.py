"""`facesim verify | search | embed`: the trained models from the command line (see facesim.app.api)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

MODEL_HELP = ("'best' (of the models the pipeline trained, the lowest cross-validation EER), a model the "
              "pipeline trained, <backbone>-<loss> such as dlib-triplet or compact-contrastive (models/<name>.onnx "
              "on onnxruntime, else models/<name>.pt on torch with the threshold from reports/metrics/<name>.json; "
              "'contrastive' and 'triplet' are the compact ones), an ONNX model PATH (.onnx, the evaluate stage's; "
              "threshold in it), a checkpoint PATH (.pt; threshold from a .json of the same name beside it, or "
              "--threshold) or an MLflow model URI, e.g. models:/facesim-dlib-triplet@champion (default: %(default)s)")
FACE = "data/raw/faces/testing/s5/1.pgm"
DEBUG_ENV = "FACESIM_DEBUG"  # the stage scripts' switch too
DEBUG_HELP = "on failure, also print the Python traceback (as FACESIM_DEBUG=1 does)"
RERUN = "rerun with --debug (or FACESIM_DEBUG=1) for the traceback, and report it"
UNEXPECTED_CHARS = 500  # of an unexpected error's message; --debug shows all of it
# `facesim search --figure`'s resolution: the CLI's own, run outside any pipeline (its params.yaml draws the
# pipeline's figures at render.dpi, 110 too)
FIGURE_DPI = 110


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesim",
        description="Use the trained Siamese networks: verify two faces, search a gallery, embed images. "
                    "Images may be any format Pillow opens (PGM, PNG, JPEG, ...), any size, grey or colour.",
        epilog=f"examples:\n  facesim verify {FACE} data/raw/faces/testing/s5/2.pgm\n"
               f"  facesim search {FACE} -k 5 --figure top5.png\n"
               "  facesim embed data/raw/faces/testing --out embeddings.csv\n\n"
               "'facesim COMMAND --help' explains each argument. A failure is one line on stderr saying what\n"
               "to do; --debug (or FACESIM_DEBUG=1) adds the Python traceback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        # also after the command, where a user adds it to rerun; SUPPRESS keeps a `facesim --debug` before it
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
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
    common(verify, "best")

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
    common(search, "best")

    embed = command("embed", "write the embeddings of images to a CSV or .npy file",
                    "facesim embed data/raw/faces/testing/s5 photo.png --out embeddings.npy")
    embed.add_argument("paths", nargs="+", metavar="PATH",
                       help="image files and folders (searched recursively; non-images in folders are skipped), "
                            "e.g. data/raw/faces/testing")
    embed.add_argument("--out", required=True, metavar="FILE",
                       help="output: .csv (columns path, person, e0..eN) or .npy (the N x D matrix, rows in "
                            "the order listed with --json), e.g. --out embeddings.csv")
    embed.add_argument("--no-cache", action="store_true", help="neither read nor write the cache in .facesim-cache/")
    common(embed, "best", threshold=False)

    ui = command("ui", "MLflow's UI on the project's runs, with their headline metrics (see facesim.app.ui)",
                 "facesim ui --port 5001")
    ui.add_argument("--port", type=int, default=5000, help="port to serve on (default: %(default)s), e.g. --port 5001")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to serve on (default: %(default)s, this machine only), e.g. --host 0.0.0.0")
    ui.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    ui.add_argument("--root", metavar="DIR", help="the facesim repository (default: the first folder from here "
                                                  "upward with a dvc.yaml), e.g. --root ~/facesim")
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
    if args.command == "ui":
        from facesim.app.ui import serve

        return serve(args.root, host=args.host, port=args.port, browser=not args.no_browser)
    from facesim.app import api

    if args.command == "verify":
        result = api.verify(args.image_a, args.image_b, args.model, root=args.root, threshold=args.threshold,
                            detect=not args.no_detect)
        return json.dumps(result.to_dict(), indent=2) if args.json else _verify_text(result)
    if args.command == "search":
        result = api.search(args.query, args.gallery, args.k, args.model, root=args.root,
                            threshold=args.threshold, cache=not args.no_cache, detect=not args.no_detect)
        if args.figure:
            figure = api.search_figure(result, args.k)
            try:
                figure.savefig(args.figure, dpi=FIGURE_DPI, metadata={"Software": None})
            except ValueError as exc:  # matplotlib's unknown format: its message does not name the file
                raise ValueError(f"{args.figure}: cannot draw the figure ({exc}); end the name in .png, "
                                 "e.g. --figure top5.png") from exc
        return json.dumps(result.to_dict(), indent=2) if args.json else _search_text(result)
    result = api.embed(args.paths, args.model, root=args.root, cache=not args.no_cache, detect=not args.no_detect)
    out = result.save(args.out)
    if args.json:
        return json.dumps({"model": result.model, "out": str(out), "paths": result.paths,
                           "dimensions": int(result.vectors.shape[1]), "skipped": result.skipped}, indent=2)
    return f"{len(result.paths)} embeddings ({result.vectors.shape[1]} dimensions, {result.model}) written to {out}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _failure(exc: BaseException) -> str:
    """What went wrong, as `<what>: <problem>; <what to do>` on one line.

    Our own errors (OSError, ValueError: missing or unreadable files, unknown models, bad arguments) say all
    of that; an OSError straight from the system (no room on the disk, no permission to write --out) is
    put in that form; anything else is a bug or a failure below facesim, to be reported.
    """
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}; check the path and its permissions"
    if isinstance(exc, (OSError, ValueError)):
        return _one_line(str(exc)) or type(exc).__name__
    message = _one_line(str(exc))
    if len(message) > UNEXPECTED_CHARS:
        message = message[:UNEXPECTED_CHARS] + " ..."
    return f"unexpected error: {type(exc).__name__}{': ' if message else ''}{message}; {RERUN}"


def _debug_requested(args: argparse.Namespace) -> bool:
    return getattr(args, "debug", False) or os.environ.get(DEBUG_ENV) == "1"  # "1", as the stage scripts read it


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = _debug_requested(args)

    error: BaseException | None = None
    skipped_files = None
    with warnings.catch_warnings(record=True) as caught:
        try:
            # imported after parsing: `facesim --help` stays instant
            from facesim.app.api import SkippedFilesWarning as skipped_files

            warnings.simplefilter("always", skipped_files)
            output = _run(args)
        except (Exception, KeyboardInterrupt) as exc:  # every failure, Ctrl-C too, ends as one line (see _failure)
            error = exc
    for warning in caught:
        if skipped_files is not None and issubclass(warning.category, skipped_files):
            print(f"facesim {args.command}: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if error is not None:
        if debug:
            traceback.print_exception(error, file=sys.stderr)
        if isinstance(error, KeyboardInterrupt):
            print(f"facesim {args.command}: interrupted", file=sys.stderr)
            return 128 + 2  # the status of a process ended by SIGINT
        print(f"facesim {args.command}: {_failure(error)}", file=sys.stderr)
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
