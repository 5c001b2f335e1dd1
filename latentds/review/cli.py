"""``latentds review create|serve|analyze`` (dispatched from ``latentds.cli``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]

_EPILOG_TOP = """examples:
  latentds review create study1 --source /data/cxr/test --codec bicubic-f8 --codec kl-f8c4 --n 50
  latentds review serve study1                      # http://127.0.0.1:8765/ ; answers in study1/answers.sqlite
  latentds review analyze study1                    # answers.csv, CIs, Wilcoxon, kappa, figure2.png
"""
_EPILOG_CREATE = """examples:
  latentds review create study1 --source /data/cxr/test --codec bicubic-f8 --codec kl-f8c4 --n 50
  latentds review create study1 --source s3://bucket/cxr --codec kl-f4c4 --reader alice --reader bob \\
      --key-file ~/private/study1-key.csv
"""
_EPILOG_SERVE = """examples:
  latentds review serve study1                      # http://127.0.0.1:8765/ on this machine only
  latentds review serve study1 --host 0.0.0.0 --allow-remote --port 8765   # readers need the printed link
"""
_EPILOG_ANALYZE = """examples:
  latentds review analyze study1                    # -> study1/analysis/{summary.md,answers.csv,figure2.png,...}
  latentds review analyze study1 --reference bicubic-f8 --out results/
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors in the project's one-line style (exit 2), like the rest of `latentds`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"latentds: error: {self.prog}: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="latentds review",
                                description="The expert reader study of the paper (section 3.2): readers rate "
                                            "each codec's reconstruction against the original on three 5-point "
                                            "Likert items, blinded to the codec. See docs/review.md.",
                epilog=_EPILOG_TOP,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = argparse.RawDescriptionHelpFormatter

    c = sub.add_parser("create", help="pick cases and write a self-contained study folder",
                       description="Pick N cases (stratified by class folder), render the original and every "
                                   "codec's reconstruction through latentds' preprocessing and decode, and "
                                   "write STUDY (16-bit PNGs under random names, study.json; no DICOM tags, "
                                   "no paths).", epilog=_EPILOG_CREATE, formatter_class=fmt)
    c.add_argument("study", help="new (or empty) folder to write the study to")
    c.add_argument("--source", required=True, help="image folder or fsspec URL (class sub-folders optional)")
    c.add_argument("--codec", action="append", required=True, metavar="NAME",
                   help="codec to rate (repeat for several); `latentds codecs` lists them")
    c.add_argument("--n", type=int, default=50, help="number of cases (default 50, as in the paper)")
    c.add_argument("--seed", type=int, default=0, help="seed for case selection and reading orders")
    c.add_argument("--size", type=int, default=None, help="longest side after preprocessing (default: native)")
    c.add_argument("--no-crop-roi", action="store_true", help="do not crop to the region of interest")
    c.add_argument("--reader", action="append", metavar="NAME",
                   help="only these reader names may sign in (repeat; default: anyone who can reach the page)")
    c.add_argument("--key-file", metavar="CSV",
                   help="write the case -> source path map here (outside the study folder; keep it private)")
    c.add_argument("--device", default="cpu", help="torch device for the codecs (default cpu)")
    c.add_argument("--storage-options", type=_json_object, default=None, metavar="JSON",
                   help="fsspec options for a --source URL, e.g. '{\"endpoint_url\": \"http://minio:9000\"}'")

    s = sub.add_parser("serve", help="serve the rating page", epilog=_EPILOG_SERVE, formatter_class=fmt,
                       description="Serve STUDY's rating page. Answers are written to STUDY/answers.sqlite at "
                                   "each answer; stop with Ctrl-C and serve again to continue.")
    s.add_argument("study")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    s.add_argument("--allow-remote", action="store_true",
                   help="required for any --host other than loopback; readers then need the access token link")

    a = sub.add_parser("analyze", help="CSV export, means with CIs, Wilcoxon tests, kappa, Figure-2 plot",
                       epilog=_EPILOG_ANALYZE, formatter_class=fmt)
    a.add_argument("study")
    a.add_argument("--out", default=None, help="output folder (default STUDY/analysis)")
    a.add_argument("--reference", default=None, metavar="CODEC",
                   help="compare every codec against this one only (default: every pair)")
    a.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    a.add_argument("--kappa-weights", choices=["quadratic", "linear"], default="quadratic")
    return p


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _create(args: argparse.Namespace) -> int:
    from .study import create_study

    st = create_study(args.study, args.source, args.codec, n=args.n, seed=args.seed, size=args.size,
                      crop_roi=not args.no_crop_roi, readers=args.reader, key_file=args.key_file,
                      device=args.device, storage_options=args.storage_options, progress=True)
    print(f"wrote {st.root}: {len(st.cases)} cases x {len(st.codecs)} codecs = {len(st.trials)} ratings per reader")
    print(f"next: latentds review serve {st.root}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import LOOPBACK_HOSTS, make_server
    from .study import load_study

    st = load_study(args.study)
    srv = make_server(st, args.host, args.port, allow_remote=args.allow_remote)
    remote = args.host not in LOOPBACK_HOSTS
    shown = args.host
    if args.host in ("0.0.0.0", "::", ""):  # all interfaces: give readers a name they can reach
        import socket

        shown = socket.getfqdn() or socket.gethostname()
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{srv.port}/" + (f"?token={st.token()}" if remote else "")
    print(f"latentds review: {len(st.trials)} ratings per reader; answers -> {st.db_path}", flush=True)
    print(f"open {url}" + ("   (share this link only with the readers)" if remote else ""), flush=True)
    print("stop with Ctrl-C; every submitted answer is already saved", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_study

    res = analyze_study(args.study, args.out, reference=args.reference, n_boot=args.bootstrap, seed=args.seed,
                        kappa_weights=args.kappa_weights)
    print((res["out"] / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {res['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..errors import LatentdsError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return {"create": _create, "serve": _serve, "analyze": _analyze}[args.command](args)
    except LatentdsError as exc:
        msg = " ".join(str(exc).split())  # one line
        print(f"latentds: error: {msg}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"latentds: error: `latentds review` needs the review extra ({exc.name} is missing); "
              f"pip install 'latentds[review]'", file=sys.stderr)
        return 2
