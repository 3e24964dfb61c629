"""The `sweeps` command: parse arguments, call one function, print.

Nothing heavy is imported at module level, so `sweeps --help` stays fast and
never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sweeps import cliargs

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
        if len(s.get("objectives", [])) > 1:
            print(f"{len(s['objectives'])} objectives: `sweeps best {s['study']} --pareto` lists the Pareto front")
        if s.get("interrupted"):
            print(f"interrupted; continue with `sweeps resume {s['study']}`")
    if s.get("interrupted"):        # 128 + the signal's number, as shells report it
        from sweeps.errors import EXIT_CODES

        return EXIT_CODES.get(s.get("signal", ""), 130)
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _status(args: argparse.Namespace) -> int:
    from sweeps.summary import search_lines, status

    s = status(args.study, args.storage)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    c = s["counts"]
    console = Console(width=None if sys.stdout.isatty() else 250)
    goals = ", ".join(f"{o['name']} ({o['goal']})" for o in s["objectives"])
    limits = "".join(f"; {k} " + ", ".join(f"{side} {_fmt(v)}" for side, v in b.items())
                     for k, b in s["constraints"].items())
    console.print(f"study [bold]{s['study']}[/]: {goals}{limits}, budget {s['n_trials']} trials, "
                  f"{s['elapsed_seconds']:.0f}s elapsed"
                  + (f", GPU {s['gpu_hours']:.3f} of {s['gpu_hours_budget']:g} h" if s["gpu_hours_budget"] else ""))
    console.print("  ".join(f"{k.lower()} {v}" for k, v in c.items()))
    if s["forked_from"]:
        console.print(f"forked from {s['forked_from']['study']}: {s['forked_from']['trials']} of its trials copied in "
                      "(outside the budget)", markup=False)
    errors = s["store_errors"]
    if errors["count"]:
        console.print(f"WARNING: {errors['count']} checkpoint write(s) to {s['checkpoint_store']} failed (last: "
                      f"{errors['last']}); retries of those trials start from an earlier epoch", markup=False)
    for line in search_lines(s["search"]):
        console.print(line, markup=False)
    if s["best"]:
        b = s["best"]
        console.print(f"best: {b['value']:.4f} (trial {b['number']}) "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items()))
    names = list(dict.fromkeys(k for t in s["trials"] for k in t["params"]))
    more = [o["name"] for o in s["objectives"][1:]]          # further objectives beside the metric
    table = Table("#", "state", "value", *more, "epochs", "sec", *names, "reason", box=None, header_style="bold")
    for t in s["trials"]:
        extra = [_fmt(v) for v in t["values"][1:]] if t["values"] and more else [""] * len(more)
        table.add_row(str(t["number"]), t["state"], "" if t["value"] is None else f"{t['value']:.4f}", *extra,
                      str(t["epochs"]), "" if t["seconds"] is None else f"{t['seconds']:.1f}",
                      *(_fmt(t["params"][k]) if k in t["params"] else "" for k in names), t["reason"])
    console.print(table)
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from sweeps.summary import pareto

    p = pareto(args.study, args.storage)
    if args.json:
        print(json.dumps(p, indent=2))
        return 0
    names = [o["name"] for o in p["objectives"]]
    shown = ", ".join(f"{o['name']} ({o['goal']})" for o in p["objectives"])
    print(f"study {p['study']}: Pareto front of {shown}, {len(p['front'])} model(s)")
    params = list(dict.fromkeys(k for row in p["front"] for k in {**row["params"], **row["fixed_params"]}))
    print("\t".join(["trial", *names, *params]))
    for row in p["front"]:
        every = {**row["params"], **row["fixed_params"]}
        print("\t".join([str(row["number"]), *(_fmt(row["values"][n]) for n in names),
                         *(_fmt(every[k]) if k in every else "" for k in params)]))
    return 0


def _best(args: argparse.Namespace) -> int:
    from sweeps.summary import best, search_lines

    if args.pareto:
        return _pareto(args)
    b = best(args.study, args.storage)
    if args.evaluate:
        from sweeps.trained import evaluate, load_trained

        trained = load_trained(args.study, args.storage, say=_say(args))
        b["test"] = {"source": trained.source, **evaluate(trained)}
    if args.json:
        print(json.dumps(b, indent=2))
        return 0
    extra = ", ".join(f"{k} {_fmt(v)}" for k, v in list(b["values"].items())[1:])
    print(f"study {b['study']}: best trial {b['number']}, value {b['value']:.4f}" + (f" ({extra})" if extra else ""))
    for k, v in {**b["params"], **b["fixed_params"]}.items():
        print(f"  {k}: {_fmt(v)}")
    for k, v in b["metrics"].items():
        print(f"  {k} = {_fmt(v)}")
    for line in search_lines(b["search"]):
        print(line)
    if b["ensemble"]:
        until = " (the best complete trials, until a finalist run finishes)" if b["ensemble_provisional"] else ""
        print(f"handed over (finalists.ensemble): the average of trials {', '.join(map(str, b['ensemble']))}{until}")
    if "test" in b:
        t = b["test"]
        print(f"held-out test split ({t['n_test']} images, model from {t['source']}): accuracy {t['accuracy']:.4f}, "
              f"macro precision {t['macro_precision']:.4f}, recall {t['macro_recall']:.4f}, F1 {t['macro_f1']:.4f}")
        print("  per-class recall: " + ", ".join(f"{r:.3f}" for r in t["per_class_recall"]))
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from sweeps.warmstart import enqueue

    r = enqueue(args.study, args.storage, args.configurations)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"queued {r['queued']} configuration(s) into {r['study']}; its budget is now {r['n_trials']} trials: "
          f"`sweeps resume {r['study']}` runs them first")
    return 0


def _fork(args: argparse.Namespace) -> int:
    from sweeps.runner import fork_sweep

    r = fork_sweep(args.old, args.new, args.space, args.storage)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    for line in r["notices"]:
        print(line, file=sys.stderr)
    print(f"study {r['study']}: {r['copied']} of {r['of']} finished trials of {r['forked_from']} fit its space and "
          f"were copied (they do not count towards its budget); run it with `sweeps resume {r['study']}`")
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

    e = export_best(args.study, args.storage, fmt=args.fmt, out=args.out, quantize=args.quantize, trial=args.trial,
                    say=_say(args))
    if args.json:
        print(json.dumps(e.to_dict(), indent=2))
        return 0
    what = f"the average of trials {', '.join(map(str, e.members))}" if e.members else f"trial {e.trial}"
    print(f"exported {what} ({e.source}) as {e.format}"
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
    "export": _export, "report": _report, "rerun": _rerun, "enqueue": _enqueue, "fork": _fork,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = cliargs.parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.debug:                     # TensorFlow's native chatter too (sweeps/export.py)
        os.environ["SWEEPS_DEBUG"] = "1"
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
