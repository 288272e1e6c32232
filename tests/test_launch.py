"""The shipped configs and the `transferkit` launcher: ls / cp / validate / run, and the FSDP-on-CPU guard."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from transferkit import launch, validate
from transferkit.cli import main
from transferkit.distributed import check_requested_backend
from transferkit.errors import TransferKitError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("cpu_ddp", "single_gpu", "multi_gpu", "fsdp", "zero2", "zero3", "multi_node")
ACCELERATE_YAMLS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
RECIPE_YAMLS = sorted((REPO / "recipes" / "configs").glob("*/*.yaml"))
MODEL_CONFIG_DIRS = ("bert-base-uncased", "roberta-base", "modernbert-base")
DECODER_CONFIG_DIR = "qwen2.5-0.5b"
COMPLETE_CONFIG_DIRS = (*MODEL_CONFIG_DIRS, DECODER_CONFIG_DIR)  # nothing left to the command line but placeholders


def test_discovery_finds_the_repository_folders():
    assert launch.accelerate_configs_dir() == REPO / "accelerate_configs"
    assert launch.recipes_dir() == REPO / "recipes"
    names = {entry.name for entry in launch.list_accelerate_configs()}
    assert set(SHIPPED) | {"slurm_multi_node.sh"} <= names


@pytest.mark.parametrize("path", ACCELERATE_YAMLS, ids=lambda p: p.stem)
def test_shipped_accelerate_config_loads_validates_and_documents_its_launch(path):
    load_config_from_file(str(path))  # accelerate's own loader
    kind, _ = validate.validate_file(str(path))
    assert kind == "accelerate config"
    header = "\n".join(launch.header_comment(path))
    assert "accelerate launch --config_file accelerate_configs/" + path.name in header
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_fsdp_config_is_fsdp2_with_layer_wrap_and_full_state_dict():
    config = load_config_from_file(str(REPO / "accelerate_configs" / "fsdp.yaml"))
    fsdp = config.fsdp_config
    assert config.distributed_type.value == "FSDP" and config.mixed_precision == "bf16"
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # filled from the model (fill_fsdp_layer_classes)
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    zero3 = load_config_from_file(str(REPO / "accelerate_configs" / "zero3.yaml")).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails loudly: what validate does must not depend on the Hub being reachable."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("validate tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def qlora_unavailable() -> bool:
    import importlib.util

    import torch

    return not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_recipe_config_validates_offline(path, no_network):
    kind, notes = validate.validate_file(str(path))
    if yaml.safe_load(path.read_text()).get("load_in_4bit") and qlora_unavailable():
        assert any("checked as if on a GPU (load_in_4bit (QLoRA) needs a CUDA GPU" in note for note in notes), notes
    assert kind.startswith("recipe config for ")
    expected = ("pass --", "checked as if", "not loaded here (validate works offline)")
    assert all(any(text in note for text in expected) for note in notes), notes
    if path.parent.name in COMPLETE_CONFIG_DIRS:  # complete configs: nothing left to the command line
        config = yaml.safe_load(path.read_text())
        assert not [note for note in notes if "pass --" in note], notes
        assert f"Hub model {config['model_name_or_path']}" in " ".join(notes)


@pytest.mark.parametrize("model_dir", MODEL_CONFIG_DIRS)
def test_model_configs_cover_both_recipes_full_and_lora(model_dir):
    names = sorted(path.stem for path in (REPO / "recipes" / "configs" / model_dir).glob("*.yaml"))
    assert names == ["classify", "classify_lora", "mlm", "mlm_lora"]
    for name in names:
        config = yaml.safe_load((REPO / "recipes" / "configs" / model_dir / f"{name}.yaml").read_text())
        assert config.get("use_peft", False) == name.endswith("_lora")
        assert "/" in config["model_name_or_path"]  # a namespaced Hub id: these configs are for online use


GLOBAL_BATCH = re.compile(r"(\d+) GPUs?[^:]*: (\d+) x (\d+) x (\d+) = (\d+)( with the override)?")


@pytest.mark.parametrize("path", [p for p in RECIPE_YAMLS if p.parent.name in COMPLETE_CONFIG_DIRS], ids=str)
def test_model_config_header_gives_launch_batch_arithmetic_citation_and_placeholder(path):
    """The header's launch commands name the config, its batch arithmetic adds up and matches the file."""
    header = "\n".join(launch.header_comment(path))
    name = f"{path.parent.name}/{path.stem}"
    recipe = validate.infer_recipe(path)  # the file name, or a `# recipe: mlm` line (qwen2.5-0.5b/clm_lora)
    assert f"transferkit run {recipe} --accelerate_config single_gpu --config {name}" in header
    assert f"transferkit run {recipe} --accelerate_config multi_gpu --config {name}" in header
    assert re.search(r"et al\. 20\d\d", header) and "Hyperparameters:" in header
    assert "PLACEHOLDER" in header and "PLACEHOLDER" in path.read_text().split("\n", len(header.splitlines()))[-1]
    config = yaml.safe_load(path.read_text())
    batches = GLOBAL_BATCH.findall(header)
    assert {int(gpus) for gpus, *_ in batches} == {1, 8}, batches
    for gpus, per_device, accumulation, processes, total, override in batches:
        assert int(per_device) * int(accumulation) * int(processes) == int(total) and gpus == processes
        if not override:  # the numbers of the file itself
            assert int(per_device) == config["per_device_train_batch_size"]
            assert int(accumulation) == config.get("gradient_accumulation_steps", 1)


def test_ls_lists_recipes_and_both_kinds_of_config(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "classify  Finetune a pretrained encoder" in out
    assert re.search(r"\n  quickstart/classify +Quickstart:", out)
    for model_dir in MODEL_CONFIG_DIRS:
        for name in ("classify", "classify_lora", "mlm", "mlm_lora"):
            assert re.search(rf"\n  {model_dir}/{name} +\S", out), (model_dir, name)
    for name in SHIPPED:
        assert f"\n  {name} " in out
    assert re.search(r"\n  cpu_ddp +2-process data-parallel training", out)
    assert re.search(r"\n  slurm_multi_node.sh +SLURM batch script", out)


def test_cp_copies_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["cp", "quickstart/classify", str(tmp_path)]) == 0
    assert (tmp_path / "classify.yaml").read_text() == (REPO / "recipes/configs/quickstart/classify.yaml").read_text()
    assert main(["cp", "cpu_ddp", str(tmp_path / "mine.yaml")]) == 0
    assert (tmp_path / "mine.yaml").read_text() == (REPO / "accelerate_configs/cpu_ddp.yaml").read_text()
    with pytest.raises(TransferKitError, match="already exists: pass --force"):
        main(["cp", "cpu_ddp", str(tmp_path / "mine.yaml")])
    assert main(["cp", "fsdp", str(tmp_path / "mine.yaml"), "--force"]) == 0
    assert "FSDP2" in (tmp_path / "mine.yaml").read_text()
    with pytest.raises(TransferKitError, match="Did you mean 'classify'"):
        main(["cp", "clasify", str(tmp_path)])


def test_copied_recipe_runs_standalone(tmp_path):
    assert main(["cp", "classify", str(tmp_path / "my_classify.py")]) == 0
    result = subprocess.run(
        [sys.executable, "my_classify.py", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--model_name_or_path" in result.stdout and "--config" in result.stdout


def test_run_dry_print_builds_the_accelerate_command(capsys):
    argv = ["run", "classify", "--accelerate_config", "cpu_ddp", "--config", "quickstart/classify"]
    argv += ["--num_processes", "2", "--main_process_port", "0", "--dry_print"]
    argv += ["--learning_rate", "1e-4", "--text_column_names", "a", "b"]
    assert main(argv) == 0
    assert shlex.split(capsys.readouterr().out) == [
        "accelerate",
        "launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        "-m",
        "transferkit.recipes.classify",
        "--config",
        str(REPO / "recipes" / "configs" / "quickstart" / "classify.yaml"),
        "--learning_rate",
        "1e-4",
        "--text_column_names",
        "a",
        "b",
    ]


def test_run_a_copied_script_and_a_config_path(tmp_path, capsys):
    script = tmp_path / "mine.py"
    script.write_text("def main():\n    pass\n")
    zero2 = str(REPO / "accelerate_configs" / "zero2.yaml")
    assert main(["run", str(script), "--accelerate_config", zero2, "--dry_print"]) == 0
    assert shlex.split(capsys.readouterr().out)[-1] == str(script)
    with pytest.raises(TransferKitError, match="No recipe named 'clasify'. Did you mean 'classify'"):
        main(["run", "clasify", "--dry_print"])
    with pytest.raises(TransferKitError, match="No accelerate config named 'fsdp2'"):
        main(["run", "classify", "--accelerate_config", "fsdp2", "--dry_print"])


def test_run_refuses_a_deepspeed_config_without_deepspeed(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launch, "deepspeed_installed", lambda: False)
    monkeypatch.setattr(validate, "deepspeed_installed", lambda: False)
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("must not launch"))
    with pytest.raises(TransferKitError, match="DeepSpeed is not installed: python -m pip install --no-build-isol"):
        main(["run", "classify", "--accelerate_config", "zero2", "--config", "quickstart/classify"])
    assert main(["validate", str(REPO / "accelerate_configs" / "zero3.yaml")]) == 0
    assert "note: DeepSpeed is not installed here" in capsys.readouterr().out
    main(["run", "classify", "--accelerate_config", "cpu_ddp", "--dry_print"])  # other configs are not concerned


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{command}\n```" in readme
    assert "pip install --no-build-isolation deepspeed" in command  # tests/test_deepspeed.py runs, not skips


def test_validate_names_the_hub_ids_it_leaves_to_the_launch(tmp_path, tiny_bert):
    assert validate.hub_notes({"model_name_or_path": tiny_bert, "dataset_name": None}) == []  # a local folder
    assert validate.hub_notes({"model_name_or_path": "outputs/pipeline/adapt"}) == []  # made at run time, not a Hub id
    notes = validate.hub_notes({"model_name_or_path": "FacebookAI/roberta-base", "dataset_name": "fancyzhx/ag_news"})
    assert notes == [
        "Hub model FacebookAI/roberta-base and dataset fancyzhx/ag_news: not loaded here (validate works offline); "
        "--dry_run true at launch loads them"
    ]


@pytest.mark.slow
def test_wheel_ships_every_recipe_and_accelerate_config(tmp_path):
    """package-data: a wheel built from the sources (copied: the build writes next to them) holds every config and
    every module."""
    import shutil
    import zipfile

    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("plugin", "recipes", "accelerate_configs"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    result = subprocess.run([*command, "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("transferkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in RECIPE_YAMLS:
        assert f"transferkit/recipes/configs/{path.parent.name}/{path.name}" in names
    for path in ACCELERATE_YAMLS:
        assert f"transferkit/accelerate_configs/{path.name}" in names
    package = REPO / "plugin" / "transferkit"  # every module of every subpackage (pyproject lists the packages)
    for path in package.rglob("*.py"):
        assert f"transferkit/{path.relative_to(package).as_posix()}" in names, path


def test_run_refuses_a_gpu_config_without_gpus(monkeypatch, capsys):
    monkeypatch.setattr(launch, "gpu_available", lambda: False)
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("must not launch"))
    for name in ("fsdp", "multi_gpu", "single_gpu", "zero3"):
        with pytest.raises(TransferKitError, match="is a GPU config .* this machine has no GPU") as info:
            main(["run", "classify", "--accelerate_config", name, "--config", "quickstart/classify"])
        assert ("DeepSpeed runs on CPUs too: copy zero3.yaml, set use_cpu" in str(info.value)) == (name == "zero3")
    assert main(["run", "classify", "--accelerate_config", "fsdp", "--dry_print"]) == 0  # prints, and warns
    assert "warning:" in capsys.readouterr().err
    launched = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: launched.append(argv))
    main(["run", "classify", "--accelerate_config", "cpu_ddp", "--train_file", "x.csv"])
    assert launched[0][:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert launched[0][-4:] == ["-m", "transferkit.recipes.classify", "--train_file", "x.csv"]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_validate_catches_an_unknown_key_with_the_suggestion(tmp_path, capsys):
    path = write(tmp_path / "classify_typo.yaml", "model_name_or_path: m\ntrain_file: t.csv\nlearning_rat: 0.1\n")
    assert main(["validate", path]) == 1
    assert "unknown key 'learning_rat'. Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_validate_recipe_config_runs_the_dataclass_checks(tmp_path, capsys):
    header = "# My run.\n# recipe: classify\n"
    path = write(tmp_path / "anything.yaml", header + "model_name_or_path: m\ntrain_file: t.csv\n")
    assert main(["validate", path]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {path} (recipe config for classify)")
    bad = write(tmp_path / "classify_bad.yaml", "model_name_or_path: m\ntrain_file: t.csv\nproblem_type: ranking\n")
    assert main(["validate", bad]) == 1
    assert "problem_type must be one of" in capsys.readouterr().err
    split = write(
        tmp_path / "classify_split.yaml", "model_name_or_path: m\ntrain_file: t\nvalidation_split_percentage: 100\n"
    )
    assert main(["validate", split]) == 1
    assert main(["validate", split, "--validation_split_percentage", "20"]) == 0  # overrides as on the command line
    wrong_type = write(
        tmp_path / "classify_type.yaml", "model_name_or_path: m\ntrain_file: t\nnum_train_epochs: many\n"
    )
    assert main(["validate", wrong_type]) == 1
    assert "'num_train_epochs' expects a number" in capsys.readouterr().err
    unknown = write(tmp_path / "notes.yaml", "learning_rate: 0.1\n")
    assert main(["validate", unknown]) == 1
    assert "Cannot tell which recipe" in capsys.readouterr().err
    assert main(["validate", unknown, "--recipe", "classify"]) == 0
    assert "pass --model_name_or_path at launch" in capsys.readouterr().out


ACCELERATE_BASE = "compute_environment: LOCAL_MACHINE\nmachine_rank: 0\nnum_machines: 1\n"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("distributed_type: NO\nnum_processes: 1\n", 'distributed_type: "NO" with quotes'),
        ('distributed_type: "NO"\nnum_processes: 4\n', "runs one process, but num_processes is 4"),
        ("distributed_type: MULTI_GPU\nnum_processes: 1\n", "MULTI_GPU with num_processes 1"),
        ("distributed_type: MULTI_GPU\nnum_processes: 2\nnum_gpus: 2\n", "accelerate cannot load it: .*num_gpus"),
        ("distributed_type: WARP_DRIVE\nnum_processes: 2\n", "accelerate cannot load it"),
        ("distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  fsdp_version: 2\n  "
         "fsdp_forward_prefetch: true\n", "forward_prefetch is not implemented in FSDP2"),
        ("distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 5\n", "zero_stage 0-3"),
        ("distributed_type: MULTI_GPU\nnum_processes: 3\nnum_machines: 2\n", "multiple of num_machines"),
    ],
)  # fmt: skip
def test_validate_rejects_bad_accelerate_configs(tmp_path, capsys, body, error):
    lines = ACCELERATE_BASE if "num_machines" not in body else ACCELERATE_BASE.replace("num_machines: 1\n", "")
    path = write(tmp_path / "accelerate.yaml", lines + body)
    assert main(["validate", path]) == 1
    assert re.search(error, capsys.readouterr().err)


def test_validate_notes_a_misspelt_fsdp_layer_class(tmp_path, capsys):
    text = (REPO / "accelerate_configs" / "fsdp.yaml").read_text()
    text = text.replace(
        "  fsdp_state_dict_type:", "  fsdp_transformer_layer_cls_to_wrap: RobertaLayr\n  fsdp_state_dict_type:"
    )
    assert main(["validate", write(tmp_path / "fsdp.yaml", text)]) == 0
    assert "did you mean RobertaLayer?" in capsys.readouterr().out


def test_slurm_script_gives_each_node_its_rank(tmp_path):
    """srun, scontrol and accelerate stubbed: the per-node command lines the script builds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "scontrol": 'printf "gpu-node-07\\ngpu-node-08\\n"',
        "srun": 'for node in 0 1; do SLURM_NODEID=$node "${@:3}"; done',  # drop --kill-on-bad-exit, --ntasks
        "accelerate": 'echo "$@"; echo "torchrun shutdown timeout: $TORCH_ELASTIC_SHUTDOWN_TIMEOUT"',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="8")
    env["SLURM_JOB_NODELIST"] = "gpu-node-[07-08]"
    script = REPO / "accelerate_configs" / "slurm_multi_node.sh"
    result = subprocess.run(
        ["bash", str(script), "classify", "--config", "my config.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    launches = [line for line in result.stdout.splitlines() if line.startswith("launch")]
    assert len(launches) == 2
    for rank, line in enumerate(launches):
        assert f"--num_machines 2 --num_processes 16 --machine_rank {rank} --main_process_ip gpu-node-07" in line
        assert line.endswith("-m transferkit.recipes.classify --config my config.yaml")
    # The time-limit warning: SIGTERM to the job steps (not "B:", the batch shell only), and torchrun waiting as long
    # for its workers to save before it SIGKILLs them (its default is 30 s).
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    (grace,) = re.findall(r"^#SBATCH --signal=TERM@(\d+)$", script.read_text(), re.M)
    assert result.stdout.count(f"torchrun shutdown timeout: {grace}\n") == 2
    env["GRACE_SECONDS"] = "900"
    result = subprocess.run(["bash", str(script), "mlm"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert result.stdout.count("torchrun shutdown timeout: 900\n") == 2, result.stderr


@pytest.fixture
def fresh_accelerate_state(monkeypatch):
    """Trainer builds an Accelerator: start and end with a clean singleton state and environment."""
    from accelerate.state import AcceleratorState

    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.setenv(name, "unset")  # recorded, so whatever TrainingArguments exports is undone afterwards
        monkeypatch.delenv(name)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield monkeypatch
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_trainer(tmp_path, **training):
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    from tests.tiny import tiny_bert_config

    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none", **training)
    return Trainer(model=BertForSequenceClassification(tiny_bert_config(40)), args=args)


def test_fsdp_from_an_accelerate_config_on_cpu_is_silently_off_and_caught(tmp_path, fresh_accelerate_state):
    fresh_accelerate_state.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp.yaml exports
    fresh_accelerate_state.setenv("FSDP_VERSION", "2")
    trainer = tiny_trainer(tmp_path)
    assert not trainer.is_fsdp_enabled  # accelerate dropped it without a word
    with pytest.raises(
        TransferKitError, match=r"FSDP was requested .* silently train without it \(accelerate distributed_type NO\)"
    ):
        check_requested_backend(trainer, recipe="classify")


def test_fsdp_in_training_arguments_on_cpu_is_caught_before_the_trainer(tmp_path, fresh_accelerate_state):
    from transformers import TrainingArguments

    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none", fsdp=True)
    with pytest.raises(TransferKitError, match="transferkit run classify --accelerate_config fsdp"):
        check_requested_backend(args, recipe="classify")
    # What Trainer itself does in one process (under a 2-process CPU launch it trains with MULTI_CPU instead):
    with pytest.raises(ValueError, match="fsdp only works in distributed training"):
        tiny_trainer(tmp_path, fsdp=True)


def test_no_request_no_error(tmp_path, fresh_accelerate_state):
    trainer = tiny_trainer(tmp_path)
    check_requested_backend(trainer)
    check_requested_backend(trainer.args)


@pytest.mark.slow
def test_run_launches_two_processes_through_accelerate(tiny_bert, reviews_csv, tmp_path):
    """`transferkit run` end to end: exec into accelerate launch, cpu_ddp (2 processes), the recipe run with -m."""
    out = tmp_path / "run"
    command = ["run", "classify", "--accelerate_config", "cpu_ddp", "--main_process_port", "0"]
    command += ["--model_name_or_path", tiny_bert, "--train_file", reviews_csv, "--output_dir", str(out)]
    command += ["--max_steps", "2", "--validation_split_percentage", "0", "--disable_tqdm", "true"]
    result = subprocess.run(
        [sys.executable, "-m", "transferkit.cli", *command], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stderr + result.stdout
    assert (out / "model.safetensors").is_file()


# -- FSDP layer classes: one fsdp.yaml for every shipped model ----------------------------------------------------
# The Hub is out of reach in tests, so each shipped model id maps to its model_type here: a new config (or a new
# model id) fails test_every_shipped_config_names_fsdp_layer_classes_its_model_has until it is added.
SHIPPED_MODEL_TYPES = {
    "google-bert/bert-base-uncased": "bert",
    "FacebookAI/roberta-base": "roberta",
    "answerdotai/ModernBERT-base": "modernbert",
    "sentence-transformers/all-MiniLM-L6-v2": "bert",
    "Qwen/Qwen2.5-0.5B": "qwen2",
}
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_key_value_heads=1)


def recipe_model_classes(path: Path) -> tuple[str, list[type]]:
    """The model id a shipped config trains and the Auto classes its recipe loads it with (a pipeline: both)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    config = yaml.safe_load(path.read_text())
    recipe = validate.infer_recipe(path)
    objective = (config.get("adapt") or config).get("objective")  # a pipeline's adapt stage, or the config itself
    language_model = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    if recipe == "pipeline":
        return config["base_model"], [language_model, AutoModelForSequenceClassification]
    return config["model_name_or_path"], [
        AutoModelForSequenceClassification if recipe == "classify" else language_model
    ]


@pytest.fixture
def fsdp_env(monkeypatch):
    """FSDP asked for as `accelerate launch` with fsdp.yaml asks (no layer classes given); restored afterwards."""
    from transferkit import distributed

    for name in ("ACCELERATE_USE_FSDP", distributed.LAYER_CLASSES_ENV):
        monkeypatch.setenv(name, "unset")  # recorded, so whatever the test sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(distributed, "_filled", None)
    return monkeypatch


def meta_model(auto_class, model_type: str, **sizes):
    import torch
    from transformers import AutoConfig

    with torch.device("meta"):  # no memory, no weights: only the module tree matters
        return auto_class.from_config(AutoConfig.for_model(model_type, **{**SMALL, **sizes}))


def cpu_args(tmp_path, **training):
    from transformers import TrainingArguments

    return TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none", **training)


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_config_names_fsdp_layer_classes_its_model_has(path, tmp_path, fsdp_env):
    """What accelerate's FSDP2 prepare does with the classes TransferKit fills: each must be found in the model
    ("Could not find the transformer layer class" otherwise), and the repeated layers must be wrapped."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from transferkit.distributed import LAYER_CLASSES_ENV, fill_fsdp_layer_classes

    model_id, auto_classes = recipe_model_classes(path)
    assert model_id in SHIPPED_MODEL_TYPES, f"add {model_id} (its model_type) to SHIPPED_MODEL_TYPES"
    for auto_class in auto_classes:
        model = meta_model(auto_class, SHIPPED_MODEL_TYPES[model_id])
        classes = fill_fsdp_layer_classes(model, cpu_args(tmp_path))
        assert classes and os.environ[LAYER_CLASSES_ENV] == ",".join(classes)
        assert all(get_module_class_from_name(model, name) is not None for name in classes), classes
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP")
        assert plugin.transformer_cls_names_to_wrap == classes  # read from the environment, as under a launch
        wrapped = [
            name for name, module in model.named_modules() if fsdp2_prepare_auto_wrap_policy(plugin, model)(module)
        ]
        assert sum(name.endswith((".0", ".1")) for name in wrapped) == SMALL["num_hidden_layers"], wrapped


@pytest.mark.parametrize(
    ("model_type", "sizes", "layer"),
    [
        ("distilbert", dict(dim=64, n_layers=2, n_heads=2, hidden_dim=64), "TransformerBlock"),
        ("deberta-v2", {}, "DebertaV2Layer"),
    ],
)
def test_models_without_no_split_modules_get_their_repeated_block(model_type, sizes, layer, tmp_path, fsdp_env):
    """accelerate's own fallback, `_no_split_modules`, is empty for these: nothing would be wrapped per layer."""
    from transformers import AutoModelForSequenceClassification

    from transferkit.distributed import fill_fsdp_layer_classes

    model = meta_model(AutoModelForSequenceClassification, model_type, **sizes)
    assert not model._no_split_modules
    assert fill_fsdp_layer_classes(model, cpu_args(tmp_path)) == [layer]


def test_a_layer_class_the_user_set_wins(tmp_path, fsdp_env):
    from transformers import AutoModelForMaskedLM

    from transferkit.distributed import LAYER_CLASSES_ENV, fill_fsdp_layer_classes

    bert = meta_model(AutoModelForMaskedLM, "bert")
    fsdp_env.setenv(LAYER_CLASSES_ENV, "BertLayer")  # fsdp_transformer_layer_cls_to_wrap in the accelerate config
    assert fill_fsdp_layer_classes(bert, cpu_args(tmp_path)) is None
    assert os.environ[LAYER_CLASSES_ENV] == "BertLayer"
    fsdp_env.delenv(LAYER_CLASSES_ENV)
    fsdp_env.delenv("ACCELERATE_USE_FSDP")  # FSDP through TrainingArguments, layer classes in its fsdp_config
    args = cpu_args(tmp_path, fsdp=True, fsdp_config={"transformer_layer_cls_to_wrap": "BertLayer"})
    assert fill_fsdp_layer_classes(bert, args) is None and LAYER_CLASSES_ENV not in os.environ
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "BertLayer"  # passed to the plugin directly
    assert fill_fsdp_layer_classes(bert, cpu_args(tmp_path)) is None  # no FSDP asked for: nothing set
    assert LAYER_CLASSES_ENV not in os.environ


def test_a_second_model_in_the_same_process_gets_its_own_classes(tmp_path, fsdp_env):
    """A pipeline builds several Trainers in one process: the value TransferKit set is not a user's choice."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from transferkit.distributed import LAYER_CLASSES_ENV, fill_fsdp_layer_classes

    fill_fsdp_layer_classes(meta_model(AutoModelForSequenceClassification, "bert"), cpu_args(tmp_path))
    assert fill_fsdp_layer_classes(meta_model(AutoModelForCausalLM, "qwen2"), cpu_args(tmp_path)) == [
        "Qwen2DecoderLayer"
    ]
    assert os.environ[LAYER_CLASSES_ENV] == "Qwen2DecoderLayer"


def test_validate_says_the_recipes_fill_the_fsdp_layer_classes(capsys):
    """fsdp.yaml leaves the layer classes out: a note, not a problem (needs validate.py to accept it)."""
    assert main(["validate", str(REPO / "accelerate_configs" / "fsdp.yaml")]) == 0
    assert "fsdp_transformer_layer_cls_to_wrap" in capsys.readouterr().out


# -- one process, several GPUs: DataParallel is refused ------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["classify", "mlm"])
def test_several_gpus_in_one_process_stop_before_anything_loads(recipe, tmp_path, monkeypatch):
    """`python recipes/<recipe>.py` on a node with several GPUs: TrainingArguments.n_gpu > 1, which makes Trainer
    wrap the model in torch.nn.DataParallel. Faked on CPU; the model and data paths do not exist, so any other
    error would mean the check came too late."""
    import importlib

    from transformers import TrainingArguments

    module = importlib.import_module(f"recipes.{recipe}")
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 4))
    argv = ["--model_name_or_path", str(tmp_path / "no-model"), "--train_file", str(tmp_path / "no-data.csv")]
    with pytest.raises(
        TransferKitError, match=r"sees 4 GPUs, so Trainer would train with torch\.nn\.DataParallel"
    ) as info:
        module.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert f"transferkit run {recipe} --accelerate_config multi_gpu" in str(info.value)
    assert "CUDA_VISIBLE_DEVICES=0" in str(info.value)
    assert not (tmp_path / "out").exists()


# -- the decoder configs: Qwen2.5-0.5B -----------------------------------------------------------------------------
def test_decoder_configs_parse_through_their_recipes():
    """Each Qwen2.5 config through its recipe's own parse_config (as `python recipes/<recipe>.py --config`), with
    use_cpu (bf16 on this machine) and, where CUDA or bitsandbytes are missing, QLoRA off."""
    from transferkit.config import parse_config

    paths = sorted((REPO / "recipes" / "configs" / DECODER_CONFIG_DIR).glob("*.yaml"))
    assert [path.stem for path in paths] == ["classify_lora", "classify_qlora", "clm_lora"]
    for path in paths:
        recipe = validate.infer_recipe(path)
        module = __import__(f"recipes.{recipe}", fromlist=["main"])
        argv = ["--config", str(path), "--use_cpu", "true"]
        qlora = yaml.safe_load(path.read_text()).get("load_in_4bit", False)
        argv += ["--load_in_4bit", "false"] if qlora and qlora_unavailable() else []
        parsed = parse_config(
            module.ARGUMENT_TYPES, argv, defaults=module.DEFAULTS, refused=getattr(module, "REFUSED", None)
        )
        by_type = {type(value).__name__: value for value in parsed}
        model, lora, training = by_type["ModelArguments"], by_type["LoraArguments"], by_type["TrainingArguments"]
        assert model.model_name_or_path == "Qwen/Qwen2.5-0.5B" and recipe == (
            "mlm" if "clm" in path.stem else "classify"
        )
        assert (model.dtype, model.attn_implementation, training.bf16) == ("bfloat16", "sdpa", True)
        assert lora.use_peft and lora.lora_target_modules == ["all-linear"] and qlora == ("qlora" in path.stem)
        if recipe == "mlm":
            assert by_type["MLMArguments"].objective == "clm"


def test_decoder_clm_lora_config_trains_a_tiny_qwen2(tmp_path):
    """The shipped CLM LoRA config, as is but for the model, the data and the length of the run: 2 steps of a
    2-layer Qwen2 built from a config, with a word-level tokenizer, on CPU in bf16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from recipes import mlm
    from tests.tiny import build_decoder_tokenizer, write_templated_corpus

    torch.manual_seed(0)
    tokenizer = build_decoder_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen2")
    tokenizer.save_pretrained(tmp_path / "qwen2")
    corpus = write_templated_corpus(str(tmp_path / "corpus.txt"), lines=40)
    metrics = mlm.main(
        ["--config", str(REPO / "recipes/configs/qwen2.5-0.5b/clm_lora.yaml"), "--use_cpu", "true"]
        + [
            "--model_name_or_path",
            str(tmp_path / "qwen2"),
            "--train_file",
            corpus,
            "--output_dir",
            str(tmp_path / "out"),
        ]
        + ["--max_steps", "2", "--max_seq_length", "32", "--gradient_accumulation_steps", "1", "--disable_tqdm", "true"]
        + ["--eval_strategy", "no", "--save_strategy", "no", "--validation_split_percentage", "0"]
    )
    assert metrics["train_loss"] > 0 and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    adapter = yaml.safe_load((tmp_path / "out" / "adapter_config.json").read_text())  # JSON is YAML
    assert adapter["r"] == 64 and adapter["lora_alpha"] == 16 and adapter["task_type"] == "CAUSAL_LM"


def test_predict_without_data_after_the_model_says_where_it_goes(tmp_path):
    """A flag between MODEL and DATA takes DATA as its value (argparse's optional positional): one clear line."""
    from transferkit import cli

    with pytest.raises(TransferKitError, match="give DATA right after MODEL"):
        cli.main(["predict", str(tmp_path), "--per_device_eval_batch_size", "8", "data.csv", "--output", "o.csv"])
