"""The `sweeps` command: parse arguments, call one function, print.

Nothing heavy is imported at module level, so `sweeps --help` stays fast and
never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

MAIN_EXAMPLE = """\
examples:
  sweeps run search_spaces/digits.yaml
  sweeps run search_spaces/mnist.yaml --storage postgresql://user:pw@host/db --study mnist-a --n-trials 40 --parallel 2
  sweeps status mnist-a --storage postgresql://user:pw@host/db

The storage URL comes from --storage, else $SWEEPS_STORAGE, else sqlite:///sweeps.db.
"""


def _storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="study database: postgresql://user:pw@host/db or sqlite:///FILE "
                        "(default: $SWEEPS_STORAGE, else sqlite:///sweeps.db)")


def _output_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="sweeps", formatter_class=fmt, epilog=MAIN_EXAMPLE,
                                     description="Hyperparameter sweeps for Keras CNN image classifiers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    from sweeps import __version__

    parser.add_argument("--version", action="version", version=f"sweeps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=fmt,
                           epilog=f"example:\n  {example}")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        return p

    p = command("run", "start a sweep from a search-space YAML and run it to its budget",
                "sweeps run search_spaces/mnist.yaml --storage postgresql://user:pw@host/db "
                "--study mnist-a --n-trials 40 --parallel 2")
    p.add_argument("config", metavar="SPACE.yaml", help="the sweep's search space (see search_spaces/)")
    _storage_option(p)
    p.add_argument("--study", help="study name (default: `study` in the YAML)")
    p.add_argument("--n-trials", type=int, metavar="N", help="budget: trials to finish (overrides budget.n_trials)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="budget: stop launching trials after this long")
    p.add_argument("--parallel", type=int, metavar="N", help="trials in flight at once (overrides parallel)")
    p.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default: a private local one)")
    _output_options(p, "the summary")

    p = command("resume", "continue a stored sweep until its budget is met; the config comes from the study",
                "sweeps resume mnist-a --storage postgresql://user:pw@host/db")
    p.add_argument("study", help="study name")
    _storage_option(p)
    p.add_argument("--n-trials", type=int, metavar="N", help="raise (or lower) the stored budget")
    p.add_argument("--max-failed-trials", type=int, metavar="N",
                   help="allow this many configurations to fail for good before the sweep stops")
    p.add_argument("--checkpoint-store", metavar="DIR|s3://BUCKET/PREFIX",
                   help="keep the study's checkpoints here from now on (a folder this machine reaches, or S3); "
                        "retries whose checkpoint is not there start at epoch 0")
    p.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default: a private local one)")
    _output_options(p, "the summary")

    p = command("status", "counts by state, the best value and parameters, elapsed time and a table of trials",
                "sweeps status mnist-a --storage postgresql://user:pw@host/db")
    p.add_argument("study", help="study name")
    _storage_option(p)
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = command("best", "the best trial's value, parameters and metrics",
                "sweeps best mnist-a --storage postgresql://user:pw@host/db --evaluate")
    p.add_argument("study", help="study name")
    _storage_option(p)
    p.add_argument("--evaluate", action="store_true",
                   help="also measure the best model on the held-out test split (needs TensorFlow)")
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = command("rerun", "train one trial's configuration again (same parameters, seed, epochs) and compare",
                "sweeps rerun mnist-a 7 --storage postgresql://user:pw@host/db")
    p.add_argument("study", help="study name")
    p.add_argument("trial", type=int, help="trial number")
    _storage_option(p)
    _output_options(p, "the comparison")

    p = command("dashboard", "open optuna-dashboard on the study storage (learning curves, metrics, artifacts)",
                "sweeps dashboard digits-demo --storage sqlite:///sweeps.db --port 8080")
    p.add_argument("study", nargs="?", help="study to open (default: the list of studies)")
    _storage_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--allow-remote-writes", action="store_true",
                   help="with --host other than loopback: accept that anyone who reaches the port can delete studies, "
                        "set results and upload files (optuna-dashboard has no login)")

    p = command("export", "the best trial's model for serving: .keras, SavedModel (TF Serving layout) or TFLite",
                "sweeps export digits-demo --format tflite --quantize int8 --out models/")
    p.add_argument("study", help="study name")
    _storage_option(p)
    p.add_argument("--format", dest="fmt", choices=("keras", "saved_model", "tflite", "backbone"),
                   default="keras", help="keras (one .keras file), saved_model (OUT/STUDY/1/ for TensorFlow Serving), "
                                         "tflite, or backbone (the pretrained backbone's .weights.h5 for weights: FILE)")
    p.add_argument("--quantize", choices=("none", "float16", "int8"), default="none",
                   help="TFLite post-training quantisation (int8: calibrated on training images)")
    p.add_argument("--out", default="exported", metavar="DIR", help="output folder (default: exported/)")
    _output_options(p, "the result")

    p = command("report", "an HTML report and PNG plots: history, importances, parallel coordinates, curves",
                "sweeps report digits-demo --out report/")
    p.add_argument("study", help="study name")
    _storage_option(p)
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report/)")
    _output_options(p, "the written paths")

    p = command("ls", "the studies in a storage, with trial counts and best values",
                "sweeps ls --storage postgresql://user:pw@host/db")
    _storage_option(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    return parser


# -- commands: each calls one function and prints --------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from sweeps import config as config_module

    config = config_module.load(args.config)       # checked before Optuna, Ray or TensorFlow are imported
    from sweeps.api import run_sweep
    from sweeps.progress import LiveProgress

    with LiveProgress(quiet=args.quiet or args.json) as progress:
        sweep = run_sweep(config, args.storage, study=args.study, n_trials=args.n_trials, timeout=args.timeout,
                          parallel=args.parallel, ray_address=args.ray_address, on_progress=progress)
    assert sweep.summary is not None          # this call ran the sweep
    return _print_summary(sweep.summary, args.json)


def _resume(args: argparse.Namespace) -> int:
    from sweeps.api import resume_sweep
    from sweeps.progress import LiveProgress

    with LiveProgress(quiet=args.quiet or args.json) as progress:
        sweep = resume_sweep(args.study, args.storage, n_trials=args.n_trials,
                             max_failed_trials=args.max_failed_trials, checkpoint_store=args.checkpoint_store,
                             ray_address=args.ray_address, on_progress=progress)
    assert sweep.summary is not None          # this call ran the sweep
    return _print_summary(sweep.summary, args.json)


def _print_summary(s: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(s, indent=2))
    else:
        best = "-" if s["best_value"] is None else f"{s['best_value']:.4f} (trial {s['best_trial']})"
        print(f"study {s['study']}: {s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed "
              f"of {s['n_trials']} in {s['elapsed_seconds']:.0f}s; best {best}")
        if s["best_params"]:
            print("best params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in s["best_params"].items()))
        if s.get("gpu_hours_budget"):
            print(f"GPU time: {s['gpu_hours']:.4f} of {s['gpu_hours_budget']:g} GPU hours")
        if s.get("interrupted"):
            print(f"interrupted; continue with `sweeps resume {s['study']}`")
    if s.get("interrupted"):        # 128 + the signal's number, as shells report it
        from sweeps.errors import EXIT_CODES

        return EXIT_CODES.get(s.get("signal", ""), 130)
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _status(args: argparse.Namespace) -> int:
    from sweeps.summary import status

    s = status(args.study, args.storage)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    c = s["counts"]
    console = Console(width=None if sys.stdout.isatty() else 250)
    console.print(f"study [bold]{s['study']}[/]: {s['metric']} ({s['direction']}), budget {s['n_trials']} trials, "
                  f"{s['elapsed_seconds']:.0f}s elapsed"
                  + (f", GPU {s['gpu_hours']:.3f} of {s['gpu_hours_budget']:g} h" if s["gpu_hours_budget"] else ""))
    console.print("  ".join(f"{k.lower()} {v}" for k, v in c.items()))
    errors = s["store_errors"]
    if errors["count"]:
        console.print(f"WARNING: {errors['count']} checkpoint write(s) to {s['checkpoint_store']} failed (last: "
                      f"{errors['last']}); retries of those trials start from an earlier epoch", markup=False)
    if s["best"]:
        b = s["best"]
        console.print(f"best: {b['value']:.4f} (trial {b['number']}) "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items()))
    names = list(dict.fromkeys(k for t in s["trials"] for k in t["params"]))
    table = Table("#", "state", "value", "epochs", "sec", *names, "reason", box=None, header_style="bold")
    for t in s["trials"]:
        table.add_row(str(t["number"]), t["state"], "" if t["value"] is None else f"{t['value']:.4f}",
                      str(t["epochs"]), "" if t["seconds"] is None else f"{t['seconds']:.1f}",
                      *(_fmt(t["params"][k]) if k in t["params"] else "" for k in names), t["reason"])
    console.print(table)
    return 0


def _best(args: argparse.Namespace) -> int:
    from sweeps.summary import best

    b = best(args.study, args.storage)
    if args.evaluate:
        from sweeps.trained import evaluate, load_trained

        trained = load_trained(args.study, args.storage, say=_say(args))
        b["test"] = {"source": trained.source, **evaluate(trained)}
    if args.json:
        print(json.dumps(b, indent=2))
        return 0
    print(f"study {b['study']}: best trial {b['number']}, value {b['value']:.4f}")
    for k, v in {**b["params"], **b["fixed_params"]}.items():
        print(f"  {k}: {_fmt(v)}")
    for k, v in b["metrics"].items():
        print(f"  {k} = {_fmt(v)}")
    if "test" in b:
        t = b["test"]
        print(f"held-out test split ({t['n_test']} images, model from {t['source']}): accuracy {t['accuracy']:.4f}, "
              f"macro precision {t['macro_precision']:.4f}, recall {t['macro_recall']:.4f}, F1 {t['macro_f1']:.4f}")
        print("  per-class recall: " + ", ".join(f"{r:.3f}" for r in t["per_class_recall"]))
    return 0


def _rerun(args: argparse.Namespace) -> int:
    from sweeps.trained import rerun

    r = rerun(args.study, args.storage, args.trial, say=_say(args))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"trial {r['trial']} ({r['state'].lower()}, {r['epochs']} epochs, seed {r['seed']}): stored "
          f"{r['stored_value']:.4f}, rerun {r['rerun_value']:.4f} ({r['difference_points']:+.2f} points)"
          + ("" if r["within_half_point"] else "  WARNING: more than 0.5 points apart"))
    return 0


def _ls(args: argparse.Namespace) -> int:
    from sweeps.summary import list_studies

    rows = list_studies(args.storage)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no studies yet; start one with `sweeps run search_spaces/digits.yaml`")
        return 0
    width = max(len(r["study"]) for r in rows)
    print(f"{'study':<{width}}  trials  best      started")
    for r in rows:
        best = "-" if r["best_value"] is None else f"{r['best_value']:.4f}"
        print(f"{r['study']:<{width}}  {r['n_trials']:>6}  {best:<8}  {r['started'] or '-'}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from sweeps.dashboard import serve

    try:
        serve(args.study, args.storage, host=args.host, port=args.port, allow_remote_writes=args.allow_remote_writes,
              on_ready=lambda line: print(f"{line}\nCtrl-C stops it.", flush=True))
    except KeyboardInterrupt:
        pass
    return 0


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines of long commands go to stderr, unless --quiet or --json."""
    if getattr(args, "quiet", False) or args.json:
        return lambda line: None
    return lambda line: print(line, file=sys.stderr, flush=True)


def _export(args: argparse.Namespace) -> int:
    from sweeps.export import export_best

    e = export_best(args.study, args.storage, fmt=args.fmt, out=args.out, quantize=args.quantize, say=_say(args))
    if args.json:
        print(json.dumps(e.to_dict(), indent=2))
        return 0
    print(f"exported trial {e.trial} ({e.source}) as {e.format}"
          + (f" ({e.quantize})" if e.quantize != "none" else "") + f": {e.path}, {e.size_bytes / 1024:.0f} KiB")
    print(f"validation accuracy: original {e.accuracy_original:.4f}, exported {e.accuracy_exported:.4f}"
          + ("  WARNING: more than 1 point below the original" if e.flagged else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sweeps.report import write_report

    r = write_report(args.study, args.storage, args.out, say=_say(args))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"report: {r['html']} ({len(r['images'])} images)")
        for key, reason in r["skipped"].items():
            print(f"  {key} not drawn: {reason}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run, "resume": _resume, "status": _status, "best": _best, "ls": _ls, "dashboard": _dashboard,
    "export": _export, "report": _report, "rerun": _rerun,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        from sweeps.errors import SweepsError
        from sweeps.storage import mask

        if isinstance(e, SweepsError):
            print(f"error: {mask(str(e))}", file=sys.stderr)
            return e.exit_code
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: unexpected {type(e).__name__}: {mask(first)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
