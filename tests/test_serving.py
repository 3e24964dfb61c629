"""From a finished sweep to what users see and ship: the Python API, the dashboard, reports, exports, rerun.

The sweep runs once, in this process (real Keras through the in-process dispatcher); most commands run
in this process too (``cli_here``: the CLI's own parsing and printing), the dashboard and one export as
separate processes, as a user starts them."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import SWEEP_PARAMETERS, TINY_SPACE, cli_here, free_port, keep_artifact, run_cli, start_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny finished sweep, run through the Python API in this process (real Keras, in-process trials)."""
    from sweeps import load_sweep, run_sweep
    from sweeps.dispatch import InlineDispatcher
    from workers.trainer import train_trial

    folder = tmp_path_factory.mktemp("served")
    url = f"sqlite:///{folder}/sweeps.db"
    config = {**TINY_SPACE, "parameters": SWEEP_PARAMETERS, "study": "served", "budget": {"n_trials": 2},
              "parallel": 1, "epochs": 2, "pruner": {"name": "none"}}
    sweep = run_sweep(config, url, dispatcher=InlineDispatcher(train_trial))
    yield {"sweep": sweep, "url": url, "folder": folder, "loaded": load_sweep("served", url)}


def test_python_api_returns_the_study_best_trial_and_metrics(finished: dict[str, Any]) -> None:
    sweep, loaded = finished["sweep"], finished["loaded"]
    assert sweep.summary["budget_met"] and sweep.summary["complete"] == 2
    assert len(sweep.trials()) == 2 and sweep.name == "served"
    assert sweep.best_value == max(t.value for t in sweep.trials())
    assert sweep.best_params["batch_size"] == 64 and sweep.best_params["width"] == 8      # fixed ones included
    assert "learning_rate" in sweep.best_params
    assert len(sweep.best_metrics["confusion_matrix"]) == 10 and 0 < sweep.best_metrics["macro_f1"] <= 1
    assert loaded.summary is None and loaded.best_value == sweep.best_value and loaded.config == sweep.config
    assert repr(loaded).startswith("Sweep('served', trials=2")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body


def test_dashboard_serves_the_study_on_loopback_with_curves_and_artifacts(finished: dict[str, Any]) -> None:
    port = free_port()
    proc = start_cli("dashboard", "served", "--storage", finished["url"], "--port", str(port))
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard/studies/" in line, line + proc.stderr.read()
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
        studies = {s["study_name"]: s for s in _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]}
        study_id = studies["served"]["study_id"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{study_id}")
        assert len(detail["trials"]) == 2
        for trial in detail["trials"]:
            assert len(trial["intermediate_values"]) == 2                     # learning curves
            assert {a["key"] for a in trial["user_attrs"]} >= {"macro_f1", "confusion_matrix", "seed"}
            [artifact] = trial["artifacts"]
            assert artifact["mimetype"] == "image/png"
            png = _get(f"http://127.0.0.1:{port}/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_dashboard_on_a_taken_port_is_one_clear_line(finished: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli_here(capsys, "dashboard", "served", "--storage", finished["url"], "--port", str(port))
    assert code == 2 and "choose another --port" in err and "Traceback" not in err


def test_dashboard_off_loopback_needs_the_flag_that_says_what_it_exposes(finished: dict[str, Any],
                                                                         capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli_here(capsys, "dashboard", "served", "--storage", finished["url"], "--host", "0.0.0.0",
                            "--port", str(free_port()))
    assert code == 2 and "delete studies" in err and "--allow-remote-writes" in err and len(err.splitlines()) == 1


def test_export_never_writes_outside_out_whatever_the_study_is_called(tmp_path: Path) -> None:
    from sweeps.errors import SweepsError
    from sweeps.export import _inside, _safe

    for name in ("..", ".", "...", "../../etc", "a/../../b", "/abs"):
        safe = _safe(name)
        assert not safe.startswith(".") and "/" not in safe, (name, safe)
        path = _inside(str(tmp_path), str(tmp_path / safe / "1"))
        assert Path(path).resolve().is_relative_to(tmp_path.resolve())
    with pytest.raises(SweepsError, match="outside --out"):
        _inside(str(tmp_path / "out"), str(tmp_path / "out" / ".." / "elsewhere"))


@pytest.mark.parametrize("fmt, quantize", [("keras", "none"), ("saved_model", "none"), ("tflite", "float16"),
                                          ("tflite", "int8")])
def test_export_round_trips(finished: dict[str, Any], tmp_path: Path, fmt: str, quantize: str,
                            capsys: pytest.CaptureFixture) -> None:
    """Export the best model, load it back the way a server would, and predict the held-out images."""
    import numpy as np

    from sweeps.export import tflite_predict
    from workers import data

    args = ("export", "served", "--storage", finished["url"], "--format", fmt, "--quantize", quantize,
            "--out", str(tmp_path), "--json")
    if fmt == "keras":         # one export as a separate process, as a user runs it
        result = run_cli(*args, timeout=400)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code, out, err = cli_here(capsys, *args)
    assert code == 0, err[-3000:]
    e = json.loads(out)
    assert e["source"] == "checkpoint" and e["trial"] == finished["sweep"].best_trial.number
    assert e["accuracy_original"] == pytest.approx(finished["sweep"].best_value, abs=0.02)
    assert e["size_bytes"] > 0 and e["flagged"] == (e["accuracy_exported"] < e["accuracy_original"] - 0.01)

    assert e["attached"] == (fmt != "saved_model")               # single files become study artifacts
    if e["attached"]:
        import optuna
        from optuna.artifacts import get_all_artifact_meta

        study = optuna.load_study(study_name="served", storage=finished["url"])
        names = {meta.filename for meta in get_all_artifact_meta(study)}
        assert Path(e["path"]).name in names

    arrays = data.load(finished["sweep"].config.dataset.to_dict(), seed=0)    # the sweep's own split
    x = arrays.x_val.astype("float32")
    if fmt == "keras":
        import keras

        assert e["path"] == str(tmp_path / "served.keras")
        probabilities = keras.models.load_model(e["path"]).predict(x, verbose=0)
    elif fmt == "saved_model":
        import tensorflow as tf

        assert e["path"] == str(tmp_path / "served" / "1") and (tmp_path / "served" / "1" / "saved_model.pb").exists()
        served = tf.saved_model.load(e["path"])      # kept: its variables live as long as it does
        probabilities = served.serve(tf.constant(x)).numpy()
    else:
        assert e["path"].endswith(f"served-{quantize}.tflite")
        probabilities = tflite_predict(e["path"])(x)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == arrays.y_val))
    assert accuracy == pytest.approx(e["accuracy_exported"], abs=1e-6)
    assert accuracy > 0.5


def test_report_writes_html_and_plots(finished: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli_here(capsys, "report", "served", "--storage", finished["url"], "--out", str(tmp_path / "r"),
                              "--json")
    assert code == 0, err[-3000:]
    r = json.loads(out)
    assert set(r["images"]) >= {"optimization_history", "parallel_coordinate", "intermediate_values",
                                "confusion_matrix"}
    for path in r["images"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Path(r["html"]).read_text()
    assert "Study served" in page and "confusion_matrix.png" in page and "Best trials" in page
    best = finished["sweep"].best_trial
    assert f"trial {best.number}" in page and f"{best.value:.4f}" in page


def test_ctrl_c_stops_the_dashboard_even_where_sigint_was_ignored(finished: dict[str, Any]) -> None:
    """A script's `sweeps dashboard ... &` starts with SIGINT ignored; Ctrl-C (kill -INT) must still stop it."""
    port = free_port()
    proc = start_cli("dashboard", "served", "--storage", finished["url"], "--port", str(port),
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert f"http://127.0.0.1:{port}/" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_browser_sees_the_study_in_the_dashboard(finished: dict[str, Any]) -> None:
    """Headless Debian chromium (driven by Selenium) opens the dashboard served on loopback."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser_path, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser_path and driver_path, "install Debian's chromium and chromium-driver (.ci/run does)"
    port = free_port()
    proc = start_cli("dashboard", "served", "--storage", finished["url"], "--port", str(port))
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = None
    try:
        url = proc.stdout.readline().split(" at ", 1)[1].split()[0]
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.get(f"http://127.0.0.1:{port}/dashboard")
        WebDriverWait(driver, 60).until(lambda d: "served" in d.find_element(By.TAG_NAME, "body").text)
        listing = driver.find_element(By.TAG_NAME, "body").text
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: "Best Trial" in d.find_element(By.TAG_NAME, "body").text)
        page = driver.find_element(By.TAG_NAME, "body").text
        best = finished["sweep"].best_trial
        assert "served" in listing and "served" in page and f"Best Trial (number={best.number})" in page
        driver.get(f"{url}/trials")                        # the trial list: one entry per trial
        WebDriverWait(driver, 60).until(lambda d: "Trial 1" in d.find_element(By.TAG_NAME, "body").text)
        trial_list = driver.find_element(By.TAG_NAME, "body").text
        shot = keep_artifact("dashboard.png")
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
        numbers = {line.split()[1] for line in trial_list.splitlines() if line.startswith("Trial ")
                   and len(line.split()) >= 2 and line.split()[1].isdigit()}
        assert numbers == {"0", "1"} and "2 Trials" in trial_list, trial_list[:2000]
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_best_evaluate_reports_the_held_out_test_split(finished: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli_here(capsys, "best", "served", "--storage", finished["url"], "--evaluate", "--json")
    assert code == 0, err[-3000:]
    b = json.loads(out)
    test = b["test"]
    described = finished["sweep"].study.user_attrs["sweeps:dataset"]
    assert test["n_test"] == described["n_test"] and abs(test["n_test"] - 180) <= 1   # 10% of digits, set aside
    assert sum(map(sum, test["confusion_matrix"])) == test["n_test"] and len(test["per_class_recall"]) == 10
    assert 0.3 < test["accuracy"] <= 1 and 0 < test["macro_f1"] <= 1
    assert abs(test["accuracy"] - b["value"]) < 0.2          # same model, other images: close, not equal by design
    code, text, _ = cli_here(capsys, "best", "served", "--storage", finished["url"], "--evaluate")
    assert code == 0 and "held-out test split (" in text


def test_rerun_reproduces_a_trial_within_half_a_point(finished: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    best = finished["sweep"].best_trial
    code, out, err = cli_here(capsys, "rerun", "served", str(best.number), "--storage", finished["url"], "--json")
    assert code == 0, err[-3000:]
    r = json.loads(out)
    assert r["stored_value"] == pytest.approx(best.value) and r["epochs"] == 2 and r["seed"] == best.user_attrs["seed"]
    assert r["within_half_point"], r
    code, _, err = cli_here(capsys, "rerun", "served", "99", "--storage", finished["url"])
    assert code == 2 and "has no trial 99" in err


def test_an_ensemble_of_the_winning_configurations_runs_is_what_best_evaluate_and_export_hand_over(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from sweeps import run_sweep
    from sweeps.dispatch import InlineDispatcher
    from sweeps.trained import load_trained
    from workers.trainer import train_trial

    url = f"sqlite:///{tmp_path}/sweeps.db"
    config = {**TINY_SPACE, "parameters": SWEEP_PARAMETERS, "study": "averaged", "budget": {"n_trials": 2},
              "parallel": 1, "epochs": 2, "pruner": {"name": "none"},
              "finalists": {"count": 1, "seeds": 1, "ensemble": True}}
    sweep = run_sweep(config, url, dispatcher=InlineDispatcher(train_trial))
    winner = sweep.finalists[0]
    assert len(winner["trials"]) == 2 and sweep.ensemble == winner["trials"]       # the search run and its rerun
    averaged = load_trained("averaged", url)
    assert list(averaged.members) == winner["trials"] and averaged.source == "checkpoint"
    runs = [load_trained("averaged", url, n).model.predict(averaged.data.x_test, verbose=0) for n in winner["trials"]]
    assert np.allclose(averaged.model.predict(averaged.data.x_test, verbose=0), np.mean(runs, axis=0), atol=1e-5)
    code, out, err = cli_here(capsys, "best", "averaged", "--storage", url, "--evaluate", "--json")
    assert code == 0, err[-3000:]
    b = json.loads(out)
    expected = float(np.mean(np.argmax(np.mean(runs, axis=0), axis=1) == averaged.data.y_test))
    assert b["ensemble"] == winner["trials"] and b["test"]["members"] == winner["trials"]
    assert b["test"]["accuracy"] == pytest.approx(expected)
    code, out, err = cli_here(capsys, "best", "averaged", "--storage", url)
    assert code == 0 and f"the average of trials {winner['trials'][0]}, {winner['trials'][1]}" in out
    code, out, err = cli_here(capsys, "export", "averaged", "--storage", url, "--format", "keras", "--out",
                              str(tmp_path / "out"), "--json")
    assert code == 0, err[-3000:]
    e = json.loads(out)
    assert e["members"] == winner["trials"] and e["accuracy_exported"] == pytest.approx(e["accuracy_original"])
    code, _, err = cli_here(capsys, "export", "averaged", "--storage", url, "--format", "backbone", "--out",
                            str(tmp_path / "out"))
    assert code == 2 and f"add --trial {b['number']}" in err


def test_an_ensemble_of_every_finalists_runs_averages_them_all_winner_first(tmp_path: Path) -> None:
    import numpy as np

    from sweeps import run_sweep
    from sweeps.dispatch import InlineDispatcher
    from sweeps.trained import load_trained
    from workers.trainer import train_trial

    url = f"sqlite:///{tmp_path}/sweeps.db"
    config = {**TINY_SPACE, "parameters": SWEEP_PARAMETERS, "study": "all-finalists", "budget": {"n_trials": 3},
              "parallel": 1, "epochs": 2, "pruner": {"name": "none"},
              "finalists": {"count": 2, "seeds": 1, "ensemble": "finalists"}}
    sweep = run_sweep(config, url, dispatcher=InlineDispatcher(train_trial))
    runs = [n for row in sweep.finalists for n in row["trials"]]
    assert len(sweep.finalists) == 2 and len(runs) == 4 and sweep.ensemble == runs     # winner's runs first
    averaged = load_trained("all-finalists", url)
    assert list(averaged.members) == runs and averaged.trial.number == sweep.finalists[0]["trial"].number
    assert averaged.source == "checkpoint"          # keep_best is 3, the runs 4: their checkpoints were all kept
    each = [load_trained("all-finalists", url, n).model.predict(averaged.data.x_test, verbose=0) for n in runs]
    assert np.allclose(averaged.model.predict(averaged.data.x_test, verbose=0), np.mean(each, axis=0), atol=1e-5)


def test_export_retrains_when_no_checkpoint_was_kept(finished: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Last in this module: it deletes the kept checkpoints that the tests above load."""
    import shutil

    shutil.rmtree(finished["folder"] / "sweeps_artifacts")       # as after keep_best: 0, or another machine
    code, out, err = cli_here(capsys, "export", "served", "--storage", finished["url"], "--format", "keras",
                              "--out", str(tmp_path))
    assert code == 0, err[-3000:]
    assert "retraining it" in err and "(retrained)" in out
    original, exported = (float(v.strip(",")) for v in out.split("original ")[1].split(" exported "))
    assert exported == pytest.approx(original, abs=1e-6)
    assert original == pytest.approx(finished["sweep"].best_value, abs=0.05)    # the same seed, on the CPU
