"""The `rlkit` command: help is instant (no heavy imports), validate exits 0 / 2 with messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlkit.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ["validate", "config", "fetch-model", "train", "serve", "report", "bench"]
HEAVY = ["torch", "transformers", "vllm", "datasets", "deepspeed", "accelerate", "math_verify"]

# Runs in a fresh interpreter: parse `--help` of the top level and every subcommand through
# rlkit.cli.main, then report which heavy modules got imported along the way.
_HELP_PROBE = """
import contextlib, io, json, sys
from rlkit.cli import main
codes, outs = {}, {}
for argv in %r:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(argv)
        except SystemExit as exc:
            codes[" ".join(argv)] = exc.code
    outs[" ".join(argv)] = buf.getvalue()
print(json.dumps({"codes": codes, "outs": outs, "heavy": [m for m in %r if m in sys.modules]}))
"""


def test_subcommand_list_matches_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


def test_help_imports_no_heavy_library():
    argvs = [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS]
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE % (argvs, HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"`--help` imported {result['heavy']}"
    assert set(result["codes"].values()) == {0}
    assert "usage: rlkit" in result["outs"]["--help"]
    for name in SUBCOMMANDS:
        assert result["outs"]["--help"].count(name) >= 1
        assert f"usage: rlkit {name}" in result["outs"][f"{name} --help"]


def test_console_script_help():
    exe = Path(sys.executable).parent / "rlkit"
    assert exe.is_file(), "the `rlkit` console script is not installed in this environment"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "validate" in proc.stdout and "fetch-model" in proc.stdout


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required: command" in capsys.readouterr().err


# ----------------------------------------------------------------------------- validate


def _write(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_validate_good_config_exits_0(capsys):
    cfg = str(REPO / "recipes" / "configs" / "grpo_math_cpu.yaml")
    assert main(["validate", cfg]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"{cfg}: valid"
    assert out.err == ""


def test_validate_show_prints_resolved_config_with_overrides(tmp_path, capsys):
    cfg = _write(tmp_path, {"model": {"name_or_path": "smollm2-135m"}})
    assert main(["validate", cfg, "trainer.max_steps=7", "--show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["trainer"]["max_steps"] == 7
    assert shown["model"]["name_or_path"] == "smollm2-135m"


def test_validate_bad_config_exits_2_with_message_on_stderr(tmp_path, capsys):
    cfg = _write(tmp_path, {"model": {"name_or_path": "x"}, "rollout": {"temprature": 0.5}})
    assert main(["validate", cfg]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "config error at rollout.temprature: unknown key; did you mean 'temperature'?" in out.err
    assert "Traceback" not in out.err


def test_validate_bad_override_exits_2(tmp_path, capsys):
    cfg = _write(tmp_path, {"model": {"name_or_path": "x"}})
    assert main(["validate", cfg, "trainer.learning_rate=-1"]) == 2
    assert "config error at trainer.learning_rate: got -1" in capsys.readouterr().err


def test_validate_missing_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_validate_console_script_bad_config(tmp_path):
    # The real entry point, end to end: exit status and stderr as a shell user sees them.
    cfg = _write(tmp_path, {"model": {"name_or_path": "x"}, "trainer": {"zero_stage": 5}})
    exe = Path(sys.executable).parent / "rlkit"
    proc = subprocess.run([str(exe), "validate", cfg], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "config error at trainer.zero_stage: got 5" in proc.stderr
    assert proc.stdout == ""


# ----------------------------------------------------------------------------- config


def test_config_show_prints_only_the_resolved_yaml(tmp_path, capsys):
    from rlkit.config import load_config

    cfg = _write(tmp_path, {"model": {"name_or_path": "smollm2-135m"}, "trainer": {"learning_rate": 2e-5},
                            "rewards": [{"name": "exact_number"}]})
    assert main(["config", "--show", cfg, "trainer.max_steps=7", "rewards.0.weight=0.5"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    shown = yaml.safe_load(out.out)  # the whole of stdout is YAML: `> resolved.yaml` is loadable
    assert shown["trainer"]["max_steps"] == 7  # override
    assert shown["trainer"]["learning_rate"] == 2e-5  # from the file
    assert shown["trainer"]["warmup_steps"] == 0 and shown["rollout"]["group_size"] == 8  # defaults filled
    assert shown["rewards"] == [{"name": "exact_number", "weight": 0.5, "params": {}, "conversational": False}]  # list item overridden
    assert shown["loss"]["class"] is None  # YAML keys, not Python names
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(out.out)
    assert load_config(resolved) == load_config(cfg, ["trainer.max_steps=7", "rewards.0.weight=0.5"])


def test_config_show_bad_config_exits_2_with_message_on_stderr(tmp_path, capsys):
    cfg = _write(tmp_path, {"model": {"name_or_path": "x"}})
    assert main(["config", "--show", cfg, "rollout.temprature=0.5"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "config error at rollout.temprature: unknown key; did you mean 'temperature'?" in out.err
    assert main(["config", "--show", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_config_doc_prints_the_reference(capsys):
    from rlkit.config_doc import config_reference_markdown

    assert main(["config", "--doc"]) == 0
    assert capsys.readouterr().out == config_reference_markdown()
    assert main(["config", "--doc", "trainer.max_steps=3"]) == 2
    assert "rlkit config --doc takes no overrides" in capsys.readouterr().err


def test_config_needs_show_or_doc(capsys):
    with pytest.raises(SystemExit) as info:
        main(["config"])
    assert info.value.code == 2
    assert "one of the arguments --show --doc is required" in capsys.readouterr().err


def test_config_show_console_script_bad_config(tmp_path):
    cfg = _write(tmp_path, {"model": {"name_or_path": "x"}, "trainer": {"zero_stage": 5}})
    exe = Path(sys.executable).parent / "rlkit"
    proc = subprocess.run([str(exe), "config", "--show", cfg], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "config error at trainer.zero_stage: got 5" in proc.stderr
    assert proc.stdout == ""


# ----------------------------------------------------------------------------- other commands


def test_fetch_model_unknown_alias_exits_2(capsys):
    assert main(["fetch-model", "gpt-5"]) == 2
    assert "unknown model alias 'gpt-5'. Known: smollm2-135m" in capsys.readouterr().err


def test_train_bad_config_fails_before_launching(tmp_path, capsys, monkeypatch):
    def no_launch(*a, **k):
        raise AssertionError("accelerate must not start on an invalid config")

    monkeypatch.setattr(subprocess, "call", no_launch)
    cfg = _write(tmp_path, {"model": {"name_or_path": "x"}, "loss": {"name": "grop"}})
    assert main(["train", cfg]) == 2
    assert "did you mean 'grpo'?" in capsys.readouterr().err


def test_train_takes_the_process_count_from_the_accelerate_config_unless_given(monkeypatch):
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: launched.append(cmd) or 0)
    cfg = str(REPO / "recipes" / "configs" / "grpo_math_cpu.yaml")
    assert main(["train", cfg, "trainer.max_steps=2", "--accelerate-config", "zero2_8gpu.yaml"]) == 0
    assert main(["train", cfg, "--num-processes", "2", "--accelerate-config", "zero2_multi.yaml"]) == 0
    first, second = launched
    assert first[first.index("--config_file") + 1] == str(REPO / "launch" / "accelerate" / "zero2_8gpu.yaml")
    assert "--num_processes" not in first  # the file's 8
    assert first[-3:] == ["--config", cfg, "trainer.max_steps=2"]
    assert second[second.index("--num_processes") + 1] == "2"


def test_serve_dry_run_prints_the_vllm_command(tmp_path, capsys):
    """`rlkit serve` is vLLM's own server with the rollout settings; --dry-run shows the command
    (arguments after `--` go to vLLM as they are) and starts nothing."""
    assert main(["serve", str(tmp_path), "--port", "8123", "--dtype", "float32", "--kv-gib", "3",
                 "--dry-run", "--", "--max-num-seqs", "64"]) == 0
    out = capsys.readouterr().out
    assert "VLLM_SERVER_DEV_MODE=1" in out
    assert "-m vllm.entrypoints.openai.api_server" in out
    for flag in (f"--model {tmp_path}", "--port 8123", "--host 127.0.0.1", "--dtype float32",
                 "--logprobs-mode processed_logprobs", "--worker-extension-cls rlkit.rollout.server_worker",
                 "--max-num-seqs 64"):
        assert flag in out
    import torch

    if not torch.cuda.is_available():
        assert "VLLM_CPU_KVCACHE_SPACE=3" in out and "--enforce-eager" in out


def test_bench_unknown_name_exits_2(capsys):
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "unknown benchmark 'no_such_benchmark'. Available:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- validate: params

CPU_CFG = str(REPO / "recipes" / "configs" / "grpo_math_cpu.yaml")
LLDS_NEEDS = ["trainer.use_engine_logprobs=false", "trainer.mini_batches=2"]
# What validation must never import: it builds the loss and regularizers, loads no model.
TRAINING_ONLY = ["transformers", "deepspeed", "vllm", "accelerate"]


@pytest.mark.parametrize(
    ("overrides", "path", "suggestion"),
    [
        (["loss.params.clip_hgh=0.3"], "loss.params.clip_hgh", "clip_high"),
        (["advantage.params.scal=batch"], "advantage.params.scal", "scale"),
        (["regularizers=[{name: llds, coef: 0.2, params: {gat: action}}]", *LLDS_NEEDS],
         "regularizers.0.params.gat", "gate"),
        (["rewards=[{name: overlong_penalty, params: {max_len: 64, cach_len: 8}}]"],
         "rewards.0.params.cach_len", "cache_len"),
    ],
    ids=["loss", "advantage", "regularizer", "reward"],
)
def test_validate_unknown_param_names_its_path_and_the_close_one(overrides, path, suggestion, capsys):
    assert main(["validate", CPU_CFG, *overrides]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert f"config error at {path}: unknown parameter of " in out.err
    assert f"did you mean '{suggestion}'? Accepted: " in out.err


def test_validate_console_script_unknown_loss_param_exits_2_quickly():
    exe = Path(sys.executable).parent / "rlkit"
    start = time.monotonic()
    proc = subprocess.run([str(exe), "validate", CPU_CFG, "loss.params.clip_hgh=0.3"],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert ("config error at loss.params.clip_hgh: unknown parameter of loss 'grpo' (GRPOLoss); "
            "did you mean 'clip_high'? Accepted: agg_mode, clip_high,") in proc.stderr
    assert elapsed < 20, f"validate took {elapsed:.1f} s (interpreter + torch import is a few s)"


_LOAD_PROBE = """
import json, sys
from rlkit.config import load_config
cfg = load_config(%r, %r)
print(json.dumps([m for m in %r if m in sys.modules]))
"""


def test_validate_checks_every_component_without_training_libraries():
    # A config with every kind of component and params: all of them get bound or built.
    overrides = [
        "regularizers=[{name: llds, coef: 0.2, params: {gate: response}}]", *LLDS_NEEDS,
        "rewards=[{name: exact_number}, {name: overlong_penalty, params: {max_len: 32, cache_len: 8}}]",
        "loss.params.kl_coef=0.01", "advantage.params.scale=batch",
    ]
    proc = subprocess.run([sys.executable, "-c", _LOAD_PROBE % (CPU_CFG, overrides, TRAINING_ONLY)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
