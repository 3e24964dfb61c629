"""The command line's grammar: every command, its options, help text and example (``sweeps --help``).

``sweeps/cli.py`` parses with it, calls one function per command and prints.
"""

from __future__ import annotations

import argparse

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


def parser() -> argparse.ArgumentParser:
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

    p = command("enqueue", "queue configurations into a stored study and raise its budget by their number; "
                           "`sweeps resume` runs them first",
                "sweeps enqueue mnist-a more.yaml   # more.yaml: - {learning_rate: 3.0e-3, batch_size: 64}")
    p.add_argument("study", help="study name")
    p.add_argument("configurations", help="a YAML file: a list of {parameter: value} mappings (or seed_trials: [...])")
    _storage_option(p)
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = command("fork", "a new study from a new space, starting from the old study's finished trials that fit it",
                "sweeps fork mnist-a mnist-b --space narrow.yaml && sweeps resume mnist-b")
    p.add_argument("old", help="the study whose trials are copied")
    p.add_argument("new", help="the new study's name")
    p.add_argument("--space", required=True, metavar="SPACE.yaml", help="the new study's search space")
    _storage_option(p)
    p.add_argument("--json", action="store_true", help="print as JSON")

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
    p.add_argument("--pareto", action="store_true",
                   help="the Pareto front of a study with several objectives: one row per model")
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
    p.add_argument("--trial", type=int, metavar="N", help="export trial N (e.g. a Pareto front member) instead of "
                                                        "the best")
    _output_options(p, "the result")

    p = command("report", "an HTML report and PNGs: learning curves, best so far against time, importances, parallel coordinates",
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
