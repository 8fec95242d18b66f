"""Every shipped recipe YAML validates and the launch command in its header fits it.

Each recipe opens with the command that runs it (`accelerate launch --config_file
launch/accelerate/X.yaml recipes/grpo_math.py --config recipes/configs/Y.yaml`). Checked here
without a GPU or the network: the recipe validates (hub ids pass; local paths are checked by
validation), the command names this very file, the accelerate config exists and parses with
accelerate's own loader, selects DeepSpeed (the only trainer rlkit builds) with the recipe's
ZeRO stage and offload (`offload_*_device`), and its process count divides the recipe's prompts
per step. GPU recipes also say
bf16 and vLLM, with a vLLM memory fraction that leaves the trainer room on the same GPU.
The accelerate config files on their own, the Slurm script and the commands of
docs/scaling.md: tests/unit/test_launchers.py (which reuses `fit_problems`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

from rlkit.config import RecipeConfig, load_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
_COMMAND = re.compile(r"accelerate launch (?P<opts>.*?)recipes/grpo_math\.py --config (?P<config>\S+)")


def _launch_command(path: Path) -> tuple[str, int | None, str]:
    """(--config_file, --num_processes or None, --config) of the command in the header comments."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip().removesuffix("\\").strip())
    found = _COMMAND.search(" ".join(header))
    assert found, f"{path.name}: no `accelerate launch ... recipes/grpo_math.py --config ...` in the header"
    opts = found["opts"].split()
    procs = int(opts[opts.index("--num_processes") + 1]) if "--num_processes" in opts else None
    return opts[opts.index("--config_file") + 1], procs, found["config"]


def _offload_of(deepspeed_config: dict) -> str:
    """The trainer.offload an accelerate file's offload_*_device fields mirror (they only mirror
    it, as zero_stage does: rlkit builds the DeepSpeed config from the recipe)."""
    opt, param = (deepspeed_config.get(k, "none") not in ("none", None)
                  for k in ("offload_optimizer_device", "offload_param_device"))
    return "optimizer_and_params" if param else "optimizer" if opt else "none"


def fit_problems(cfg: RecipeConfig, launch_file: str, procs: int | None) -> list[str]:
    """What is wrong between a validated recipe and the accelerate config file (a path relative
    to the repository) that launches it with `procs` processes (None: the file's count)."""
    launch = REPO / launch_file
    if not launch.is_file():
        return [f"{launch_file} does not exist"]
    cluster = ClusterConfig.from_yaml_file(str(launch))
    problems = []
    if cluster.distributed_type != DistributedType.DEEPSPEED:
        problems.append(f"{launch_file}: distributed_type {cluster.distributed_type}, rlkit trains with DEEPSPEED")
    if cluster.deepspeed_config.get("zero_stage") != cfg.trainer.zero_stage:
        problems.append(f"{launch_file}: zero_stage {cluster.deepspeed_config.get('zero_stage')} but "
                        f"trainer.zero_stage is {cfg.trainer.zero_stage}")
    mirrored = _offload_of(cluster.deepspeed_config)
    if mirrored != cfg.trainer.offload:
        problems.append(f"{launch_file}: offload devices say trainer.offload {mirrored} but trainer.offload is "
                        f"{cfg.trainer.offload}")
    n = procs or cluster.num_processes
    if cfg.rollout.prompts_per_step % n:
        problems.append(f"rollout.prompts_per_step {cfg.rollout.prompts_per_step} does not divide over {n} processes")
    return problems


def recipe_problems(path: Path) -> list[str]:
    """What is wrong between a recipe and the launch command in its header ([] = nothing)."""
    cfg = load_config(path)  # raises ConfigError on an invalid recipe
    launch_file, procs, config = _launch_command(path)
    problems = []
    if Path(config).name != path.name:
        problems.append(f"the launch command runs {config}, not this file")
    problems += fit_problems(cfg, launch_file, procs)
    if cfg.model.dtype == "bfloat16":  # the GPU recipes (on CPU `auto` picks per machine)
        if cfg.rollout.engine != "vllm" or cfg.rollout.dtype != "bfloat16":
            problems.append("a bf16 GPU recipe should roll out with vLLM in bf16")
        if not 0.2 <= cfg.rollout.gpu_memory_utilization <= 0.6:
            problems.append(f"rollout.gpu_memory_utilization {cfg.rollout.gpu_memory_utilization}: vLLM shares the "
                            "GPU with the trainer; keep it in [0.2, 0.6]")
    return problems


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates_and_fits_its_launch_command(path):
    assert recipe_problems(path) == []


def test_the_recipes_this_suite_expects_are_there():
    # Guards the parametrization above against a moved directory.
    names = {p.name for p in RECIPES}
    assert {"grpo_math_cpu.yaml", "grpo_math_cpu_lora.yaml", "grpo_math_gpu_1.yaml", "grpo_math_gpu_8.yaml"} <= names


def test_lora_recipe_differs_from_the_cpu_default_only_in_lora_lr_and_name():
    # The two are run side by side (step time, held-out accuracy): nothing else may differ.
    full = load_config(REPO / "recipes/configs/grpo_math_cpu.yaml").model_dump()
    lora = load_config(REPO / "recipes/configs/grpo_math_cpu_lora.yaml").model_dump()
    assert lora["model"].pop("lora") == {"r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    assert full["model"].pop("lora") is None
    assert (lora["trainer"].pop("learning_rate"), full["trainer"].pop("learning_rate")) == (2e-4, 2e-5)  # 10x
    assert lora.pop("run") != full.pop("run")  # its own name and output directory
    assert lora == full


# ----------------------------------------------------------------------------- the checks can fail


def test_a_recipe_that_does_not_fit_its_launch_file_is_reported(tmp_path):
    raw = yaml.safe_load((REPO / "recipes/configs/grpo_math_gpu_8.yaml").read_text())
    raw["trainer"]["zero_stage"] = 3
    raw["rollout"]["prompts_per_step"] = 100  # 100 / 8 processes
    raw["rollout"]["gpu_memory_utilization"] = 0.9
    bad = tmp_path / "bad_gpu.yaml"
    bad.write_text("# Run:   accelerate launch --config_file launch/accelerate/zero2_8gpu.yaml \\\n"
                   "#            recipes/grpo_math.py --config recipes/configs/grpo_math_gpu_8.yaml\n"
                   + yaml.safe_dump(raw))
    assert recipe_problems(bad) == [
        "the launch command runs recipes/configs/grpo_math_gpu_8.yaml, not this file",
        "launch/accelerate/zero2_8gpu.yaml: zero_stage 2 but trainer.zero_stage is 3",
        "rollout.prompts_per_step 100 does not divide over 8 processes",
        "rollout.gpu_memory_utilization 0.9: vLLM shares the GPU with the trainer; keep it in [0.2, 0.6]",
    ]


def test_an_offload_launch_file_needs_the_recipe_to_offload():
    # zero3_offload_8gpu.yaml mirrors trainer.offload: optimizer_and_params; a recipe that does not
    # offload (or offloads less) would train without it, whatever the file says.
    gpu_8, launch_file = REPO / "recipes/configs/grpo_math_gpu_8.yaml", "launch/accelerate/zero3_offload_8gpu.yaml"
    for offload, problems in (
        ("none", [f"{launch_file}: offload devices say trainer.offload optimizer_and_params but trainer.offload "
                  "is none"]),
        ("optimizer", [f"{launch_file}: offload devices say trainer.offload optimizer_and_params but "
                       "trainer.offload is optimizer"]),
        ("optimizer_and_params", []),
    ):
        cfg = load_config(gpu_8, ["trainer.zero_stage=3", f"trainer.offload={offload}"])
        assert fit_problems(cfg, launch_file, None) == problems
    # and a plain file with an offloading recipe
    cfg = load_config(gpu_8, ["trainer.offload=optimizer"])
    assert fit_problems(cfg, "launch/accelerate/zero2_8gpu.yaml", None) == [
        "launch/accelerate/zero2_8gpu.yaml: offload devices say trainer.offload none but trainer.offload is optimizer"]
