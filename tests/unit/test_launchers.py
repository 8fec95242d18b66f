"""The launchers under launch/ and the commands docs/scaling.md gives for them.

Checked without a GPU, a cluster or the network:
- every accelerate config in launch/accelerate/ parses with accelerate's own loader, opens with a
  comment saying what it is for, selects DeepSpeed with a ZeRO stage of 1-3, leaves precision
  to the recipe, and spreads its processes evenly over its machines; a multi-node one names a
  rendezvous port and lets each machine start its own torchrun (`deepspeed_multinode_launcher:
  standard`; accelerate's default, pdsh, would ssh from one machine into the others);
- each Slurm script passes `bash -n`, runs under `set -euo pipefail`, finds its head node with
  `scontrol`, launches recipes/grpo_math.py on every trainer node with the node's rank through
  `srun` and a multi-node accelerate config whose size matches its #SBATCH lines, and its
  default recipe fits that config; the one with vLLM server nodes also serves the recipe's own
  model, dtype and length on a reachable interface, waits for every server's /health before the
  trainer starts, stops the servers on exit (trap), and points the trainer at them
  (`rollout.engine=server`, `rollout.servers`, a shared `rollout.weight_dir`);
- every repository path named in launch/ and docs/scaling.md exists, and every
  `accelerate launch ... recipes/grpo_math.py --config RECIPE [overrides]` there fits its
  accelerate config (the recipe's ZeRO stage, its prompts per step over the processes), with
  the recipe checks of tests/unit/test_recipe_configs.py (`fit_problems`).
Each checker is also run on a broken copy, so that it is seen to fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType
from test_recipe_configs import REPO, fit_problems

from rlkit.config import ConfigError, load_config

LAUNCH_CONFIGS = sorted((REPO / "launch" / "accelerate").glob("*.yaml"))
SBATCH = REPO / "launch" / "slurm" / "grpo_multinode.sbatch"
SERVER_SBATCH = REPO / "launch" / "slurm" / "grpo_server_nodes.sbatch"
SCALING = REPO / "docs" / "scaling.md"
# every file under launch/ (scripts, configs) and the scaling doc: the paths and commands they name
NAMING = sorted(p for p in (REPO / "launch").rglob("*") if p.is_file()) + [SCALING]

_PATH = re.compile(r"(?<![\w./-])((?:launch|recipes|rlkit|tests|docs|bench|rewards)/[\w./-]*\w\.(?:yaml|py|sh|sbatch|md))")
_COMMAND = re.compile(r"accelerate launch (?P<opts>[^`\n]*?)recipes/grpo_math\.py --config (?P<config>[^\s`]+)"
                      r"(?P<rest>[^`\n]*)")
_OVERRIDE = re.compile(r"^[a-z_]+(?:\.[a-z_0-9]+)+=\S+$")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def accelerate_config_problems(path: Path) -> list[str]:
    """What is wrong with one accelerate config file ([] = nothing). Raises ValueError where
    accelerate's own loader refuses the file (an unknown key, a misspelt distributed_type)."""
    name = _rel(path)
    problems = []
    if not path.read_text().startswith("#"):
        problems.append(f"{name}: no leading comment saying what the file is for")
    cluster = ClusterConfig.from_yaml_file(str(path))
    if cluster.distributed_type != DistributedType.DEEPSPEED:
        problems.append(f"{name}: distributed_type {cluster.distributed_type}, rlkit trains with DEEPSPEED")
    if cluster.deepspeed_config.get("zero_stage") not in (1, 2, 3):
        problems.append(f"{name}: zero_stage {cluster.deepspeed_config.get('zero_stage')}, not 1, 2 or 3")
    if cluster.mixed_precision != "no":
        problems.append(f"{name}: mixed_precision {cluster.mixed_precision}; precision comes from the recipe")
    if cluster.num_machines < 1 or cluster.num_processes < 1 or cluster.num_processes % cluster.num_machines:
        problems.append(f"{name}: {cluster.num_processes} processes do not spread evenly over "
                        f"{cluster.num_machines} machines")
    if cluster.num_machines > 1:
        if not cluster.main_process_port:
            problems.append(f"{name}: {cluster.num_machines} machines but no main_process_port")
        if cluster.deepspeed_config.get("deepspeed_multinode_launcher") != "standard":
            problems.append(f"{name}: {cluster.num_machines} machines need deepspeed_multinode_launcher: standard "
                            "(one torchrun per machine; the default, pdsh, ssh-es into the others)")
    return problems


def sbatch_problems(path: Path) -> list[str]:
    """What is wrong with a Slurm launcher ([] = nothing). A script that runs `rlkit serve`
    (vLLM server nodes first, trainer nodes after them) is checked for that layout too
    (`_server_problems`)."""
    text = path.read_text()
    serving = re.search(r"^[^#\n]*rlkit serve", text, re.M) is not None  # not in a comment
    problems = []
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if syntax.returncode:
        problems.append(f"bash -n: {syntax.stderr.strip()}")
    if not re.search(r"^set -euo pipefail$", text, re.M):
        problems.append("no `set -euo pipefail`")
    if serving:  # the head is the first trainer node, after the server nodes
        if 'scontrol show hostnames "$SLURM_JOB_NODELIST"' not in text:
            problems.append("no node discovery (`scontrol show hostnames \"$SLURM_JOB_NODELIST\"`)")
    elif 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' not in text:
        problems.append("no head-node discovery (`scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1`)")
    if not re.search(r"^srun .*accelerate launch", text, re.M | re.S):
        problems.append("no `srun ... accelerate launch`")
    if serving:  # the trainer step does not start on node 0: each node looks up its own rank
        if not (re.search(r'--machine_rank "?\$\{?MACHINE_RANK', text) and "SLURMD_NODENAME" in text):
            problems.append("no `--machine_rank $MACHINE_RANK` found from the node's name ($SLURMD_NODENAME) "
                            "among the trainer nodes: every node would claim rank 0")
    elif not re.search(r'--machine_rank "?\$\{?SLURM_NODEID', text):
        problems.append("no `--machine_rank $SLURM_NODEID`: every node would claim rank 0")
    if "recipes/grpo_math.py" not in text:
        problems.append("does not run recipes/grpo_math.py")
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    for opt, want in (("nodes", None), ("ntasks-per-node", "1"), ("gpus-per-node", None), ("exclusive", "")):
        if opt not in sbatch or (want is not None and sbatch[opt] != want):
            problems.append(f"#SBATCH --{opt}{'=' + want if want else ''} missing")
    default = re.search(r'^CONFIG="\$\{1:-([^}]+)\}"', text, re.M)
    if default is None:
        problems.append('no default recipe (CONFIG="${1:-recipes/configs/....yaml}")')
    server_nodes = 0
    if serving:
        found = re.search(r'^SERVER_NODES="\$\{SERVER_NODES:-(\d+)\}"', text, re.M)
        if found is None or int(found[1]) < 1:
            problems.append('no default number of server nodes (SERVER_NODES="${SERVER_NODES:-1}")')
        server_nodes = int(found[1]) if found else 0
        problems += _server_problems(text)
    # the recipe as the trainer runs it: on a server layout, with the server engine
    overrides = ["rollout.engine=server", "rollout.servers=[http://node-0:8000]"] if serving else []
    launch_files = re.findall(r"--config_file (launch/accelerate/[\w.-]+\.yaml)", text)
    if not launch_files:
        problems.append("names no launch/accelerate/*.yaml config file")
    for launch_file in launch_files:
        if not (REPO / launch_file).is_file():
            problems.append(f"{launch_file} does not exist")
            continue
        cluster = ClusterConfig.from_yaml_file(str(REPO / launch_file))
        if cluster.num_machines < 2:
            problems.append(f"{launch_file} is a single-machine config")
        nodes, gpus = sbatch.get("nodes", ""), sbatch.get("gpus-per-node", "")
        train = int(nodes) - server_nodes if nodes.isdigit() else None
        if train is not None and gpus.isdigit() and (train, train * int(gpus)) != (
                cluster.num_machines, cluster.num_processes):
            of = f" ({server_nodes} serving, {train} training)" if serving else ""
            problems.append(f"#SBATCH asks for {nodes} nodes{of} x {gpus} GPUs but {launch_file} says "
                            f"{cluster.num_machines} machines, {cluster.num_processes} processes")
        if default is not None:  # with the process count the script passes: trainer nodes x GPUs per node
            procs = train * int(gpus) if train is not None and gpus.isdigit() else None
            problems += _fit(default[1], overrides, launch_file, procs)
    return problems


def _server_problems(text: str) -> list[str]:
    """The vLLM-server part of a Slurm script: the servers serve what the trainer's health check
    wants (the recipe's model, dtype and max_model_len, read from the recipe and overrides), on
    an interface the trainer nodes reach; they are healthy before the trainer starts and stopped
    when the script exits; the trainer runs against them with a shared weight directory."""
    problems = []
    serve = re.search(r"rlkit serve (.*?)(?:&|$)", text, re.S)
    serve_cmd = serve[1] if serve else ""
    for flag, var, field in (("", "MODEL", "model.name_or_path"), ("--dtype ", "DTYPE", "rollout.dtype"),
                             ("--max-model-len ", "MAX_MODEL_LEN", "rollout.max_model_len")):
        if f'{flag}"${var}"' not in serve_cmd:
            problems.append(f'`rlkit serve` is not given {flag}"${var}"')
        if not re.search(rf"read -r [\w ]*\b{var}\b.*?print\([^)]*cfg\.{re.escape(field)}", text, re.S):
            problems.append(f"{var} is not read from the recipe's {field}")
    if "--host 0.0.0.0" not in serve_cmd:
        problems.append("`rlkit serve` without --host 0.0.0.0 listens on 127.0.0.1, out of the trainer nodes' reach")
    health, trainer = text.find("/health"), text.rfind("accelerate launch")
    if health < 0 or health > trainer:
        problems.append("does not wait for the servers' /health before the trainer starts")
    if not re.search(r"^trap \w+ EXIT", text, re.M):
        problems.append("no `trap ... EXIT` that stops the servers when the trainer ends")
    for override in ("rollout.engine=server", '"rollout.servers=$SERVERS"', '"rollout.weight_dir=$WEIGHT_DIR"'):
        if override not in text:
            problems.append(f"the trainer is not given {override}")
    return problems


def _fit(config: str, overrides: list[str], launch_file: str, procs: int | None) -> list[str]:
    try:
        cfg = load_config(REPO / config, overrides)
    except ConfigError as exc:
        return [f"{config}: {str(exc).splitlines()[0]}"]
    return [f"{config}: {p}" for p in fit_problems(cfg, launch_file, procs)]


def missing_paths(paths: list[Path]) -> list[str]:
    """Repository paths (launch/..., recipes/..., rlkit/..., docs/...) named in these files that
    do not exist."""
    return [f"{_rel(p)}: {name}" for p in paths for name in dict.fromkeys(_PATH.findall(p.read_text()))
            if not (REPO / name).exists()]


def launch_commands(path: Path) -> list[tuple[str | None, int | None, str, list[str]]]:
    """(--config_file, --num_processes, --config, overrides) of each `accelerate launch ...
    recipes/grpo_math.py --config RECIPE [overrides]` in a file, comment markers and line
    continuations removed; one whose recipe is a shell variable is left out (the Slurm
    script's default recipe is checked by `sbatch_problems`)."""
    text = re.sub(r"^\s*#+ ?", "", path.read_text(), flags=re.M)
    text = re.sub(r"\\\n\s*#*\s*", " ", text)
    found = []
    for cmd in _COMMAND.finditer(text):
        if "$" in cmd["config"]:
            continue
        opts = cmd["opts"].split()
        launch_file = opts[opts.index("--config_file") + 1] if "--config_file" in opts else None
        procs = int(opts[opts.index("--num_processes") + 1]) if "--num_processes" in opts else None
        found.append((launch_file, procs, cmd["config"], [t for t in cmd["rest"].split() if _OVERRIDE.match(t)]))
    return found


def command_problems(path: Path) -> list[str]:
    """What is wrong with the `accelerate launch` commands of a file (`launch_commands`)."""
    problems = []
    for launch_file, procs, config, overrides in launch_commands(path):
        if launch_file is None:
            problems.append(f"{_rel(path)}: the command running {config} names no --config_file")
            continue
        problems += [f"{_rel(path)}: {p}" for p in _fit(config, overrides, launch_file, procs)]
    return problems


# ----------------------------------------------------------------------------- the shipped files


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=[p.name for p in LAUNCH_CONFIGS])
def test_accelerate_config(path):
    assert accelerate_config_problems(path) == []


def test_the_launchers_this_suite_expects_are_there():
    # Guards the parametrization above against a moved directory, and pins the sizes docs/scaling.md states.
    assert {"zero2_single.yaml", "zero2_multi.yaml", "zero2_8gpu.yaml", "zero3_8gpu.yaml",
            "zero3_offload_8gpu.yaml", "zero2_2x8_multinode.yaml"} <= {p.name for p in LAUNCH_CONFIGS}
    sizes = {p.stem: ClusterConfig.from_yaml_file(str(p)) for p in LAUNCH_CONFIGS}
    assert (sizes["zero3_8gpu"].deepspeed_config["zero_stage"], sizes["zero3_8gpu"].num_processes) == (3, 8)
    multi = sizes["zero2_2x8_multinode"]
    assert (multi.num_machines, multi.num_processes, multi.rdzv_backend, multi.same_network) == (2, 16, "static", True)
    assert SBATCH.is_file() and SERVER_SBATCH.is_file() and SCALING.is_file()
    offload = sizes["zero3_offload_8gpu"]
    assert (offload.deepspeed_config, offload.num_processes) == (
        {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"}, 8)


def test_every_accelerate_config_is_used():
    # referenced by a recipe's launch command, a launcher script, the CLI, the docs or the tests
    # (not counting the configs' own comments or this file's list above)
    texts = [p.read_text() for pattern in ("recipes/configs/*.yaml", "launch/**/*", "rlkit/cli.py", "docs/*.md",
                                           "README.md", "tests/**/*.py")
             for p in REPO.glob(pattern)
             if p.is_file() and p not in LAUNCH_CONFIGS and p != Path(__file__).resolve()]
    unused = [p.name for p in LAUNCH_CONFIGS if not any(p.name in t for t in texts)]
    assert unused == []


@pytest.mark.parametrize("path", [SBATCH, SERVER_SBATCH], ids=lambda p: p.name)
def test_slurm_script(path):
    assert sbatch_problems(path) == []


def test_every_path_named_in_launch_and_the_scaling_doc_exists():
    assert missing_paths(NAMING) == []


def test_every_launch_command_in_launch_and_the_scaling_doc_fits():
    assert [p for f in NAMING for p in command_problems(f)] == []
    # the doc gives a command for every accelerate config, and the Slurm script's
    shown = {launch_file for launch_file, *_ in launch_commands(SCALING)}
    assert shown == {_rel(p) for p in LAUNCH_CONFIGS}
    assert "sbatch launch/slurm/grpo_multinode.sbatch" in SCALING.read_text()
    assert "sbatch launch/slurm/grpo_server_nodes.sbatch" in SCALING.read_text()


# ----------------------------------------------------------------------------- the checks can fail


def test_a_broken_accelerate_config_is_reported(tmp_path):
    raw = yaml.safe_load((REPO / "launch/accelerate/zero2_2x8_multinode.yaml").read_text())
    raw["deepspeed_config"] = {"zero_stage": 0}
    raw["num_processes"] = 15
    raw["mixed_precision"] = "bf16"
    del raw["main_process_port"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))  # and no leading comment
    assert accelerate_config_problems(bad) == [
        "bad.yaml: no leading comment saying what the file is for",
        "bad.yaml: zero_stage 0, not 1, 2 or 3",
        "bad.yaml: mixed_precision bf16; precision comes from the recipe",
        "bad.yaml: 15 processes do not spread evenly over 2 machines",
        "bad.yaml: 2 machines but no main_process_port",
        "bad.yaml: 2 machines need deepspeed_multinode_launcher: standard (one torchrun per machine; "
        "the default, pdsh, ssh-es into the others)",
    ]


def test_a_misspelt_accelerate_config_does_not_parse(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text((REPO / "launch/accelerate/zero2_single.yaml").read_text().replace("DEEPSPEED", "DEEPSPED"))
    with pytest.raises(ValueError, match="DEEPSPED"):
        accelerate_config_problems(path)


def test_a_broken_slurm_script_is_reported(tmp_path):
    text = SBATCH.read_text()
    for old, new in (("set -euo pipefail\n", ""),
                     ("| head -n1", "| tail -n1"),
                     ('--machine_rank "$SLURM_NODEID"', "--machine_rank 0"),
                     ("#SBATCH --ntasks-per-node=1", "#SBATCH --ntasks-per-node=8"),
                     ("#SBATCH --nodes=2", "#SBATCH --nodes=3"),
                     ("recipes/configs/grpo_math_gpu_8.yaml}", "recipes/configs/grpo_math_cpu.yaml}"),
                     ("\nsrun ", "\nif srun ")):
        assert old in text
        text = text.replace(old, new)
    bad = tmp_path / "bad.sbatch"
    bad.write_text(text)
    problems = sbatch_problems(bad)
    assert problems[0].startswith("bash -n: ") and "syntax error" in problems[0]
    assert problems[1:] == [
        "no `set -euo pipefail`",
        'no head-node discovery (`scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1`)',
        "no `srun ... accelerate launch`",
        "no `--machine_rank $SLURM_NODEID`: every node would claim rank 0",
        "#SBATCH --ntasks-per-node=1 missing",
        "#SBATCH asks for 3 nodes x 8 GPUs but launch/accelerate/zero2_2x8_multinode.yaml says 2 machines, "
        "16 processes",
        "recipes/configs/grpo_math_cpu.yaml: rollout.prompts_per_step 8 does not divide over 24 processes",
    ]
    bad.write_text(SBATCH.read_text().replace("zero2_2x8_multinode.yaml", "zero2_8gpu.yaml"))
    assert sbatch_problems(bad) == [
        "launch/accelerate/zero2_8gpu.yaml is a single-machine config",
        "#SBATCH asks for 2 nodes x 8 GPUs but launch/accelerate/zero2_8gpu.yaml says 1 machines, 8 processes",
    ]
    bad.write_text(SBATCH.read_text().replace("zero2_2x8_multinode.yaml", "zero2_9x8.yaml"))
    assert sbatch_problems(bad) == ["launch/accelerate/zero2_9x8.yaml does not exist"]
    bad.write_text(SBATCH.read_text().replace("recipes/grpo_math.py", "recipes/other.py")
                   .replace('CONFIG="${1:-', 'CONFIG="${2:-')
                   .replace("--config_file launch/accelerate/zero2_2x8_multinode.yaml", '--config_file "$LAUNCH"'))
    assert sbatch_problems(bad) == ["does not run recipes/grpo_math.py",
                                    'no default recipe (CONFIG="${1:-recipes/configs/....yaml}")',
                                    "names no launch/accelerate/*.yaml config file"]


def test_a_broken_server_node_script_is_reported(tmp_path):
    text = SERVER_SBATCH.read_text()
    for old, new in (('rlkit serve "$MODEL"', 'rlkit serve Qwen/Qwen2.5-0.5B-Instruct'),  # not the recipe's
                     ("cfg.rollout.dtype,", "'bfloat16',"),
                     ("--host 0.0.0.0 ", ""),
                     ("/health", "/v1/models"),
                     ("trap stop_servers EXIT", "stop_servers"),
                     ('"rollout.weight_dir=$WEIGHT_DIR" ', ""),
                     ('--machine_rank "$MACHINE_RANK"', '--machine_rank "$SLURM_NODEID"'),
                     ("#SBATCH --nodes=3", "#SBATCH --nodes=2")):
        assert old in text, old
        text = text.replace(old, new)
    bad = tmp_path / "bad.sbatch"
    bad.write_text(text)
    assert sbatch_problems(bad) == [
        "no `--machine_rank $MACHINE_RANK` found from the node's name ($SLURMD_NODENAME) among the trainer nodes: "
        "every node would claim rank 0",
        '`rlkit serve` is not given "$MODEL"',
        "DTYPE is not read from the recipe's rollout.dtype",
        "`rlkit serve` without --host 0.0.0.0 listens on 127.0.0.1, out of the trainer nodes' reach",
        "does not wait for the servers' /health before the trainer starts",
        "no `trap ... EXIT` that stops the servers when the trainer ends",
        'the trainer is not given "rollout.weight_dir=$WEIGHT_DIR"',
        "#SBATCH asks for 2 nodes (1 serving, 1 training) x 8 GPUs but launch/accelerate/zero2_2x8_multinode.yaml "
        "says 2 machines, 16 processes",
    ]
    bad.write_text(SERVER_SBATCH.read_text().replace('SERVER_NODES="${SERVER_NODES:-1}"', "SERVER_NODES=1"))
    assert sbatch_problems(bad)[0] == 'no default number of server nodes (SERVER_NODES="${SERVER_NODES:-1}")'


def test_missing_paths_and_unfit_commands_are_reported(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "See launch/accelerate/zero9_8gpu.yaml and `recipes/configs/nope.yaml`; launch/slurm/grpo_multinode.sbatch.\n"
        "```bash\n"
        "accelerate launch --config_file launch/accelerate/zero3_8gpu.yaml \\\n"
        "    recipes/grpo_math.py --config recipes/configs/grpo_math_gpu_8.yaml\n"
        "accelerate launch --config_file launch/accelerate/zero2_multi.yaml --num_processes 3 \\\n"
        "    recipes/grpo_math.py --config recipes/configs/grpo_math_cpu.yaml trainer.zero_stage=5\n"
        "accelerate launch --config_file launch/accelerate/zero2_multi.yaml --num_processes 3 \\\n"
        "    recipes/grpo_math.py --config recipes/configs/grpo_math_cpu.yaml\n"
        "```\n"
        "# accelerate launch --config_file launch/accelerate/zero3_8gpu.yaml recipes/grpo_math.py \\\n"
        "#     --config recipes/configs/grpo_math_gpu_8.yaml trainer.zero_stage=3\n")
    assert missing_paths([doc]) == ["doc.md: launch/accelerate/zero9_8gpu.yaml", "doc.md: recipes/configs/nope.yaml"]
    assert command_problems(doc) == [  # the last command, in comments and with its override, fits
        "doc.md: recipes/configs/grpo_math_gpu_8.yaml: launch/accelerate/zero3_8gpu.yaml: zero_stage 3 but "
        "trainer.zero_stage is 2",
        "doc.md: recipes/configs/grpo_math_cpu.yaml: config error at trainer.zero_stage: got 5; "
        "input should be 0, 1, 2 or 3",
        "doc.md: recipes/configs/grpo_math_cpu.yaml: rollout.prompts_per_step 8 does not divide over 3 processes",
    ]
    doc.write_text("accelerate launch --num_processes 2 recipes/grpo_math.py --config recipes/configs/grpo_math_cpu.yaml")
    assert command_problems(doc) == ["doc.md: the command running recipes/configs/grpo_math_cpu.yaml names no --config_file"]
