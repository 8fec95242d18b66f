"""W&B and MLflow through RunLogger (rlkit/trainer/tracking.py), offline, read back from disk.

One real run feeds both trackers: a RunLogger on a real accelerate Accelerator logs the resolved
config, two steps and an alarm, then closes. It runs in a fresh interpreter because the tracker
packages keep process-wide state (W&B's setup singleton, MLflow's tracking URI) and RunLogger sets
the environment they read; that interpreter also records, through an audit hook, every socket it
opens other than a local (AF_UNIX) one, so a tracker that tries to reach a server fails the test.
(The hook sees Python code only: W&B's Go core is a separate process. Traced by hand with
`strace -f -e trace=connect`, it opens only Unix sockets in offline mode.)

What each tracker stored is then read from its files: MLflow's file store keeps one file per
param, metric and tag; W&B's offline run keeps its records in `run-<id>.wandb`, read here with
W&B's own protobuf classes.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlkit.config import ConfigError, config_from_dict
from rlkit.trainer.tracking import flatten_config, tracker_init_kwargs

REPO = Path(__file__).resolve().parents[3]
ALARM = {"name": "grad_spike", "step": 2, "message": "the gradient norm jumped", "action": "lower the lr",
         "value": 4.5}

_RUN = """
import json, socket, sys
from pathlib import Path

def _audit(event, args):  # written at once: exporters also send from threads and atexit hooks
    if event == "socket.getaddrinfo" or (event == "socket.connect" and args[0].family != socket.AF_UNIX):
        with open(sys.argv[4], "a") as f:
            f.write(f"{event} {args[1] if event == 'socket.connect' else args[:2]}\\n")
sys.addaudithook(_audit)

from accelerate import Accelerator
from rlkit.trainer.tracking import RunLogger

run_dir, config, alarm = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
accelerator = Accelerator(cpu=True, log_with=["wandb", "mlflow"], project_dir=str(run_dir))
logger = RunLogger(run_dir, accelerator=accelerator, tensorboard=False, trackers=["wandb", "mlflow"],
                   progress=False, config=config, project="rlkit-test", run_name="tiny", offline=True)
logger.log(1, {"reward/mean": 0.5, "train/loss": 0.25})
logger.log(2, {"reward/mean": 0.75, "train/loss": 0.125})
logger.alarm(alarm)
logger.close()
"""


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """The run directory after the run above, and the sockets the interpreter opened (to the end)."""
    tmp = tmp_path_factory.mktemp("trackers")
    run_dir = tmp / "run"
    cfg = config_from_dict({"model": {"name_or_path": "smollm2-135m"}, "trainer": {"learning_rate": 3e-6},
                            "logging": {"trackers": ["wandb", "mlflow"], "offline": True}})
    # Nothing inherited decides where the trackers write or whether they go online: RunLogger must.
    # (MLflow also keeps its telemetry quiet under pytest or CI; drop those marks so only rlkit's
    # setting does.)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "MLFLOW_")) and k not in ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS")}
    env.update(PYTHONPATH=str(REPO), WANDB_CONFIG_DIR=str(tmp / "wandb_config"),
               WANDB_CACHE_DIR=str(tmp / "wandb_cache"), WANDB_DATA_DIR=str(tmp / "wandb_data"))
    network = tmp / "network.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(run_dir), json.dumps(cfg.model_dump(mode="json")), json.dumps(ALARM),
         str(network)],
        capture_output=True, text=True, timeout=240, cwd=tmp, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir, network.read_text().splitlines() if network.exists() else []


def test_no_tracker_reaches_the_network(tracked_run):
    _, network = tracked_run
    assert network == []


# ----------------------------------------------------------------------------- MLflow


def _mlflow_run(run_dir: Path) -> Path:
    runs = [p.parent for p in (run_dir / "mlruns").glob("*/*/meta.yaml")
            if yaml.safe_load(p.read_text()).get("run_name") == "tiny"]
    assert len(runs) == 1, sorted((run_dir / "mlruns").rglob("meta.yaml"))
    return runs[0]


def _metric(run: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) rows of an MLflow file-store metric; each line is `timestamp value step`."""
    rows = [line.split() for line in (run / "metrics" / key).read_text().splitlines()]
    return [(int(step), float(value)) for _, value, step in rows]


def test_mlflow_stores_config_metrics_and_alarm(tracked_run):
    run_dir, _ = tracked_run
    run = _mlflow_run(run_dir)  # the file store is in the run directory: no MLFLOW_TRACKING_URI was set
    experiment = yaml.safe_load((run.parent / "meta.yaml").read_text())
    assert experiment["name"] == "rlkit-test"
    params = run / "params"
    assert (params / "trainer.learning_rate").read_text() == "3e-06"
    assert (params / "model.name_or_path").read_text() == "smollm2-135m"
    assert (params / "rewards.0.name").read_text() == "math_accuracy"  # a list of sections, by index
    assert (params / "rollout.stop").read_text() == "[]"
    assert _metric(run, "reward/mean") == [(1, 0.5), (2, 0.75)]
    assert _metric(run, "train/loss") == [(1, 0.25), (2, 0.125)]
    assert _metric(run, "alarm/grad_spike") == [(2, 1.0)]
    assert [json.loads(line) for line in (run / "artifacts" / "alarms.jsonl").read_text().splitlines()] == [ALARM]


# ----------------------------------------------------------------------------- W&B


def _wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte header (":W&B", magic
    0xBEE1, version 0), then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`,
    type 1 a whole record, 2/3/4 its first/middle/last piece (LevelDB's log format; a block's
    tail too short for a chunk header is zero padding). Each record is a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def test_wandb_offline_run_stores_config_metrics_and_alarm(tracked_run):
    run_dir, _ = tracked_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # under the run directory, in offline mode
    records = _wandb_records(next(offline.glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    run = records[kinds.index("run")].run
    assert (run.project, run.display_name) == ("rlkit-test", "tiny")
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert config["trainer.learning_rate"] == 3e-6
    assert config["rewards.0.name"] == "math_accuracy"
    history = {}
    for r in records:
        if r.HasField("history"):
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            history[r.history.step.num] = row
    assert history[1]["reward/mean"] == 0.5 and history[1]["train/loss"] == 0.25
    assert history[2]["reward/mean"] == 0.75 and history[2]["alarm/grad_spike"] == 1
    assert "alarm/grad_spike" not in history[1]
    saved = [f.path for r in records if r.HasField("files") for f in r.files.files]
    assert "alarms.jsonl" in saved
    assert json.loads((offline / "files" / "alarms.jsonl").read_text()) == ALARM


# ----------------------------------------------------------------------------- pieces


def test_flatten_config_dotted_keys():
    tree = {"trainer": {"learning_rate": 1e-5, "adam_betas": [0.9, 0.99]}, "model": {"lora": None},
            "rewards": [{"name": "a", "params": {}}, {"name": "b", "params": {"k": 2}}], "stop": []}
    assert flatten_config(tree) == {
        "trainer.learning_rate": 1e-5, "trainer.adam_betas": "[0.9, 0.99]", "model.lora": None,
        "rewards.0.name": "a", "rewards.0.params": "{}", "rewards.1.name": "b", "rewards.1.params.k": 2,
        "stop": "[]",
    }


def test_tracker_init_kwargs_name_the_run_and_keep_wandb_in_the_run_dir(tmp_path):
    kwargs = tracker_init_kwargs(["wandb", "mlflow"], tmp_path, "my_run")
    assert kwargs["wandb"]["name"] == "my_run" and kwargs["wandb"]["dir"] == str(tmp_path)
    assert kwargs["mlflow"] == {"run_name": "my_run"}
    assert tracker_init_kwargs([], tmp_path, "my_run") == {}


@pytest.mark.parametrize(("tracker", "module"), [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_missing_tracker_package_is_a_config_error(tracker, module, monkeypatch):
    # None in sys.modules is how Python marks a module as absent (`import wandb` then fails).
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"name_or_path": "smollm2-135m"}, "logging": {"trackers": [tracker]}})
    assert str(info.value) == (
        f"config error at logging.trackers: '{tracker}' needs the `{module}` package, which is not installed; "
        f"install rlkit's trackers extra (pip install -e '.[trackers]') or remove '{tracker}' from logging.trackers")


def test_a_tracker_listed_twice_is_a_config_error():
    with pytest.raises(ConfigError, match=r"logging.trackers: got \['wandb', 'wandb'\]; list each tracker once"):
        config_from_dict({"model": {"name_or_path": "smollm2-135m"}, "logging": {"trackers": ["wandb", "wandb"]}})


def test_an_evaluation_gets_a_console_line_beside_the_progress_bar(tmp_path, caplog):
    # The bar shows reward/acc/entropy/s-per-step only; held-out results must not be lost in it.
    from rlkit.trainer.tracking import RunLogger

    run_log = RunLogger(tmp_path, tensorboard=False, total_steps=2, progress=True)
    try:
        with caplog.at_level("INFO", logger="rlkit.trainer.tracking"):
            run_log.log(1, {"reward/mean": 0.5})
            run_log.log(2, {"reward/mean": 0.75, "eval/accuracy": 0.935})
    finally:
        run_log.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "rlkit.trainer.tracking"]
    assert lines == ["eval at step 2 | eval/accuracy=0.935"]
