"""Reliability: kill and resume, SIGTERM, incomplete checkpoints, unwritable output_dir, determinism, dry run.

The kill/SIGTERM tests run recipes/classify.py in a subprocess through this file's `__main__` driver, which pauses the
run at a chosen point (after a checkpoint save, in the middle of one, inside a training step) and writes a marker
file, so the test kills or signals it at exactly that point instead of racing a fast tiny run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import transformers
from safetensors.torch import save_file

from recipes.classify import main
from tests.tiny import REPO, review
from transferkit.dry_run import count_evaluations_and_saves, plan_run
from transferkit.errors import TransferKitError
from transferkit.reliability import check_output_dir_writable
from transferkit.resume import last_valid_checkpoint

# Losses / metrics of a resumed run against the uninterrupted one (fp32 CPU, same seed). Measured here: bit-identical
# in one process, 6e-8 apart under 2-process DDP; the tolerance leaves room for other CPUs' kernels.
RESUME_TOL = 1e-4
DETERMINISM_TOL = 1e-6  # the same config and seed twice in one process


def run_args(model: str, data: str, output_dir, *extra: str) -> list[str]:
    """12 steps of batch 16 over 144 training rows: 9 steps per epoch, so the run crosses an epoch boundary."""
    return [
        *("--model_name_or_path", model, "--train_file", data, "--output_dir", str(output_dir)),
        *("--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--max_seq_length", "32"),
        *("--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "no"),
        *("--logging_steps", "1", "--train_sampling_strategy", "random", "--seed", "1"),
        *("--report_to", "none", "--disable_tqdm", "true"),
        *extra,
    ]


def state(path) -> dict:
    with open(os.path.join(path, "trainer_state.json")) as handle:
        return json.load(handle)


def losses(path) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in state(path)["log_history"] if "loss" in entry}


def eval_metrics(path) -> dict[str, float]:
    with open(os.path.join(path, "eval_results.json")) as handle:
        return {key: value for key, value in json.load(handle).items() if key in ("eval_loss", "eval_accuracy")}


@pytest.fixture(scope="module")
def baseline(tiny_bert, reviews_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    main(run_args(tiny_bert, reviews_csv, out))
    return out


def start_paused(args: list[str], pause: str, marker, launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    """This file's driver in a subprocess (and process group), its output in <marker>.log (a full pipe would block
    the run)."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, TK_TEST_PAUSE=pause, TK_TEST_MARKER=str(marker))
    with open(f"{marker}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, *launcher, os.path.abspath(__file__), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, marker, timeout: float = 120) -> str:
    process.wait(timeout=timeout)
    with open(f"{marker}.log") as log:
        return log.read()


def wait_for(paths: list, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(path) for path in paths):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            with open(f"{paths[0].rsplit('.', 1)[0]}.log") as log:
                pytest.fail(f"the run never reached the pause point:\n{log.read()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture
def resume_spy(monkeypatch):
    """Records the global step each `train()` restored from its checkpoint (0 for a fresh start)."""
    restored = []
    original = transformers.Trainer._init_training_state

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        restored.append(self.state.global_step)
        return result

    monkeypatch.setattr(transformers.Trainer, "_init_training_state", spy)
    return restored


def assert_matches_baseline(out, baseline) -> None:
    assert state(out)["global_step"] == 12
    resumed, reference = losses(out), losses(baseline)
    assert sorted(resumed) == list(range(1, 13))
    assert resumed == pytest.approx(reference, abs=RESUME_TOL)
    assert eval_metrics(out) == pytest.approx(eval_metrics(baseline), abs=RESUME_TOL)


def test_same_seed_gives_same_metrics(tiny_bert, reviews_csv, baseline, tmp_path):
    main(run_args(tiny_bert, reviews_csv, tmp_path / "again"))
    assert losses(tmp_path / "again") == pytest.approx(losses(baseline), abs=DETERMINISM_TOL)
    assert eval_metrics(tmp_path / "again") == pytest.approx(eval_metrics(baseline), abs=DETERMINISM_TOL)
    assert len(set(losses(baseline).values())) > 1  # the run learns: the comparison is not of constants


def test_sigkill_after_a_checkpoint_then_resume_matches(tiny_bert, reviews_csv, baseline, tmp_path, resume_spy):
    out, marker = tmp_path / "run", tmp_path / "paused"
    process = start_paused(run_args(tiny_bert, reviews_csv, out), "after_save:8", marker)
    wait_for([f"{marker}.0"], process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert sorted(os.listdir(out)) == ["checkpoint-4", "checkpoint-8"]  # no final model, no all_results.json
    main(run_args(tiny_bert, reviews_csv, out, "--resume_from_checkpoint", "auto"))
    assert resume_spy == [8]
    assert_matches_baseline(out, baseline)


def test_sigkill_during_a_save_resumes_from_the_previous_one(tiny_bert, reviews_csv, baseline, tmp_path, resume_spy):
    out, marker = tmp_path / "run", tmp_path / "paused"
    process = start_paused(run_args(tiny_bert, reviews_csv, out), "mid_save:8", marker)
    wait_for([f"{marker}.0"], process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    broken = out / "checkpoint-8"
    assert (broken / "model.safetensors").is_file() and not (broken / "optimizer.pt").exists()
    assert transformers.trainer_utils.get_last_checkpoint(str(out)) == str(broken)  # what Trainer would pick
    assert last_valid_checkpoint(str(out)) == str(out / "checkpoint-4")
    main(run_args(tiny_bert, reviews_csv, out, "--resume_from_checkpoint", "auto"))
    assert resume_spy == [4]
    assert_matches_baseline(out, baseline)


def test_sigterm_saves_a_checkpoint_exits_0_and_resumes(tiny_bert, reviews_csv, baseline, tmp_path, resume_spy):
    out, marker = tmp_path / "run", tmp_path / "paused"
    args = run_args(tiny_bert, reviews_csv, out, "--dataloader_num_workers", "1")
    process = start_paused(args, "in_step:5", marker)
    wait_for([f"{marker}.0"], process)  # paused inside step 6 (5 steps done)
    os.killpg(process.pid, signal.SIGTERM)  # like SLURM: every process, the DataLoader worker too
    log = finish(process, marker)
    assert process.returncode == 0, log[-3000:]
    assert f"preempted: checkpoint saved at {out / 'checkpoint-6'}, rerun with resume_from_checkpoint: auto" in log
    assert last_valid_checkpoint(str(out)) == str(out / "checkpoint-6")
    assert state(out / "checkpoint-6")["global_step"] == 6
    assert not (out / "all_results.json").exists() and not (out / "model.safetensors").exists()
    handler = signal.getsignal(signal.SIGTERM)
    main(run_args(tiny_bert, reviews_csv, out, "--resume_from_checkpoint", "auto"))
    assert signal.getsignal(signal.SIGTERM) is handler  # installed for train() only, then restored
    assert resume_spy == [6]
    assert_matches_baseline(out, baseline)


@pytest.mark.slow
def test_sigterm_under_two_process_ddp(tiny_bert, reviews_csv, baseline, tmp_path):
    """torchrun (under accelerate launch) forwards SIGTERM to both ranks, which stop at the same step and save."""
    out, marker = tmp_path / "run", tmp_path / "paused"
    launcher = (
        *("-m", "accelerate.commands.launch", "--main_process_port", "0"),
        *("--config_file", os.path.join(REPO, "accelerate_configs", "cpu_ddp.yaml")),
    )
    args = run_args(tiny_bert, reviews_csv, out, "--per_device_train_batch_size", "8", "--preemption_check_steps", "4")
    process = start_paused(args, "in_step:5", marker, launcher)
    wait_for([f"{marker}.0", f"{marker}.1"], process, timeout=400)
    process.send_signal(signal.SIGTERM)  # to the launcher only, as `kill <pid>` or a scheduler would
    log = finish(process, marker)
    assert f"preempted: checkpoint saved at {out / 'checkpoint-8'}" in log, log[-3000:]
    # the launcher itself re-raises the signal after its workers exited (torch elastic's SignalException)
    assert all("SignalException" in trace for trace in log.split("Traceback")[1:]), log[-3000:]
    assert last_valid_checkpoint(str(out)) == str(out / "checkpoint-8")  # the ranks agree at steps 4, 8, 12
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(out / "checkpoint-8"))

    resume = [*args, "--resume_from_checkpoint", "auto", "--log_level", "info"]  # info: Trainer says where it resumed
    process = start_paused(resume, "in_step:-1", tmp_path / "resumed", launcher)
    log = finish(process, tmp_path / "resumed", timeout=400)
    assert process.returncode == 0, log[-3000:]
    assert "Resuming training from checkpoint with epoch 0 and global step 8" in log
    assert_matches_baseline(out, baseline)  # 2 x 8 under DDP = 1 x 16 (the loss-scaling fix in the recipe)


class CountingAccelerator:
    """What PreemptionCallback asks of accelerate's Accelerator, counting the trigger checks (each one an
    all-reduce and a host-device sync in a real multi-process run)."""

    def __init__(self, num_processes: int) -> None:
        self.num_processes, self.flag, self.checks = num_processes, False, []

    def set_trigger(self) -> None:
        self.flag = True

    def check_trigger(self) -> bool:
        self.checks.append(True)
        fired, self.flag = self.flag, False
        return fired


@pytest.mark.parametrize("num_processes, expected_checks", [(1, 0), (2, 2)])
def test_the_ranks_agree_on_a_sigterm_every_preemption_check_steps(num_processes, expected_checks, tmp_path):
    from transformers import TrainerControl, TrainerState

    from transferkit.reliability import PreemptionCallback

    accelerator = CountingAccelerator(num_processes)
    callback = PreemptionCallback(accelerator, check_every=4)
    args, state = SimpleNamespace(output_dir=str(tmp_path)), TrainerState()
    for step in range(1, 14):
        state.global_step = step
        callback.requested = step >= 5  # SIGTERM during step 5
        callback.on_step_end(args, state, TrainerControl())
        if callback.stopped_at is not None:
            break
    assert len(accelerator.checks) == expected_checks  # 2 processes: steps 4, 8 (and none after the stop)
    assert callback.stopped_at == (5 if num_processes == 1 else 8)


def fake_checkpoint(root, step: int):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.arange(64, dtype=torch.float32)}, str(path / "model.safetensors"))
    torch.save({"state": {0: torch.zeros(64)}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, path / "rng_state.pth")
    (path / "config.json").write_text("{}")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "optimizer.pt").unlink(), "no optimizer state"),
        (lambda p: (p / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda p: (p / "model.safetensors").unlink(), "no model weights"),
        (lambda p: (p / "rng_state.pth").write_bytes(b""), "rng_state.pth is empty"),
        (lambda p: truncate(p / "model.safetensors"), "model.safetensors is truncated"),
        (lambda p: truncate(p / "optimizer.pt"), "optimizer.pt is truncated"),
        (lambda p: truncate(p / "trainer_state.json"), "trainer_state.json is unreadable"),
    ],
    ids=lambda value: value if isinstance(value, str) else "damage",
)
def test_incomplete_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage, reason):
    fake_checkpoint(tmp_path, 4)
    damage(fake_checkpoint(tmp_path, 8))
    with caplog.at_level(logging.WARNING, logger="transferkit.resume"):
        assert last_valid_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert f"Skipping incomplete checkpoint {tmp_path / 'checkpoint-8'}: {reason}" in caplog.text


def test_empty_checkpoint_folder_and_no_valid_checkpoint(tmp_path, caplog):
    assert last_valid_checkpoint(str(tmp_path / "missing")) is None
    fake_checkpoint(tmp_path, 12)
    (tmp_path / "checkpoint-99").mkdir()
    (tmp_path / "checkpoint-notes.txt").write_text("not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="transferkit.resume"):
        assert last_valid_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-12")  # numeric, not by name
    assert "checkpoint-99: no trainer_state.json" in caplog.text
    (tmp_path / "checkpoint-12" / "optimizer.pt").unlink()
    assert last_valid_checkpoint(str(tmp_path)) is None
    assert last_valid_checkpoint(str(tmp_path), require_optimizer=False) == str(tmp_path / "checkpoint-12")


def test_output_dir_checks(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(TransferKitError, match=f"output_dir {blocker}/run/out cannot be written: {blocker} is a file"):
        check_output_dir_writable(str(blocker / "run" / "out"))
    with pytest.raises(TransferKitError, match=r"GiB free on its disk, below the 1e\+09 GiB .* another disk"):
        check_output_dir_writable(str(tmp_path / "new"), min_free_gb=1e9)
    check_output_dir_writable(str(tmp_path / "new" / "deeper"))
    check_output_dir_writable(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["a-file"]  # the checks create nothing


def tiny_trainer(tiny_bert, output_dir, rows: int = 48, train_rows: int = 37, **overrides):
    """A Trainer over `train_rows` toy reviews (the rest: validation), batch 4, no integrations."""
    import random

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rng = random.Random(0)
    texts = [review(rng, i % 2 == 0) for i in range(rows)]
    data = Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(rows)]})
    tokenized = data.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    splits = {"train": tokenized.select(range(train_rows)), "validation": tokenized.select(range(train_rows, rows))}
    torch.manual_seed(0)  # the new head's weights
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    settings = {"per_device_train_batch_size": 4, "report_to": "none", "dataloader_pin_memory": False}
    args = TrainingArguments(output_dir=str(output_dir), **{**settings, "disable_tqdm": True, **overrides})
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
    )
    return trainer, splits, texts


def test_plan_run_counts_and_leaves_no_trace(tiny_bert, tmp_path):
    out = tmp_path / "out"
    trainer, splits, texts = tiny_trainer(
        tiny_bert, out, gradient_accumulation_steps=2, num_train_epochs=3, train_sampling_strategy="group_by_length"
    )
    model, tokenizer = trainer.model, trainer.processing_class
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng_before = torch.random.get_rng_state()

    plan = plan_run(trainer, splits)
    # 37 examples / batch 4 -> 10 batches; / 2 accumulation -> 5 optimizer steps per epoch; x 3 epochs -> 15
    assert plan["steps_per_epoch"] == 5 and plan["total_steps"] == 15 and plan["epochs"] == 3
    assert plan["global_batch"] == 8
    assert plan["examples"] == {"train": 37, "validation": 11}
    assert plan["tokens"] == {
        "train": sum(len(tokenizer(text)["input_ids"]) for text in texts[:37]),
        "validation": sum(len(tokenizer(text)["input_ids"]) for text in texts[37:]),
    }
    # Trainer's defaults: no evaluation; save_strategy steps every 500 steps -> only the save at the last step
    assert (plan["evaluations"], plan["saves"], plan["saves_at_most"]) == (0, 1, False)
    assert plan["timed_batches"] == 5 and plan["seconds_per_step"] > 0 and plan["seconds_per_save"] > 0
    assert plan["save_timing"] == "timed" and plan["checkpoint_bytes"] > 3 * model.num_parameters()  # + AdamW
    assert plan["train_steps_seconds"] >= plan["seconds_per_step"] * 15
    assert plan["estimated_train_seconds"] == pytest.approx(plan["train_steps_seconds"] + plan["seconds_per_save"])
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert trainer.optimizer is None  # train() builds its own, without the dry run's AdamW moments
    assert model.training is False  # as from_pretrained left it
    assert torch.equal(rng_before, torch.random.get_rng_state())
    assert os.listdir(out) == []  # Trainer() made it, empty
    assert os.listdir(tmp_path) == ["out"]  # the save was timed beside it, in a folder removed since

    trainer.args.max_steps = 7  # max_steps wins over epochs: 7 steps, over ceil(7 / 5) = 2 epochs
    plan = plan_run(trainer, splits, timed_batches=1)
    assert (plan["total_steps"], plan["epochs"], plan["timed_batches"]) == (7, 2, 1)


class CountEvents(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.evaluations = self.saves = 0

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1

    def on_save(self, args, state, control, **kwargs):
        self.saves += 1


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"max_steps": 6, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no"}, (3, 0)),
        ({"num_train_epochs": 2, "eval_strategy": "epoch", "save_strategy": "epoch"}, (2, 2)),
        # 7 steps over 5-step epochs: evaluations at 4 and at the last step; saves at 3, 6 and the last step;
        # eval_delay 3 drops nothing here; eval_on_start adds one evaluation
        (
            {"max_steps": 7, "eval_strategy": "steps", "eval_steps": 4, "eval_delay": 3, "eval_on_start": True}
            | {"save_strategy": "steps", "save_steps": 3},
            (3, 3),
        ),
        ({"max_steps": 6, "eval_strategy": "steps", "eval_steps": 0.5, "save_strategy": "steps"}, (2, 1)),
    ],
    ids=["eval-every-2-of-6", "epoch-2-epochs", "steps-off-interval", "eval-steps-fraction"],
)
def test_plan_counts_evaluations_and_saves_as_trainer_makes_them(tiny_bert, tmp_path, settings, expected):
    trainer, splits, _ = tiny_trainer(tiny_bert, tmp_path / "out", rows=30, train_rows=20, **settings)
    plan = plan_run(trainer, splits, timed_batches=1)
    assert (plan["evaluations"], plan["saves"]) == expected
    assert plan.get("eval_batches") == (2 if expected[0] else None)  # 10 validation rows, eval batch 8
    counter = CountEvents()
    trainer.add_callback(counter)
    trainer.train()
    assert (counter.evaluations, counter.saves) == expected  # what Trainer itself does


def test_count_evaluations_and_saves_edge_cases(tmp_path):
    from transformers import TrainingArguments

    def count(total: int, per_epoch: int, **settings) -> tuple[int, int, bool]:
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **settings)
        counted = count_evaluations_and_saves(args, total, per_epoch)
        return counted["evaluations"], counted["saves"], counted["saves_at_most"]

    assert count(6, 3, eval_strategy="steps", eval_steps=2, eval_delay=3, save_strategy="no") == (2, 0, False)
    assert count(6, 3, eval_strategy="steps", eval_steps=2, save_strategy="best", metric_for_best_model="loss") == (
        3,
        3,
        True,
    )
    assert count(7, 5, eval_strategy="epoch", save_strategy="epoch") == (2, 2, False)  # the cut-short epoch too
    assert count(10, 5, eval_strategy="epoch", eval_delay=2, save_strategy="no") == (1, 0, False)
    assert count(100, 100, eval_strategy="no", save_strategy="steps", save_steps=30) == (0, 4, False)


def test_plan_estimate_adds_evaluations(tiny_bert, tmp_path):
    """6 evaluations of 25 batches add 6 times an evaluation's timed cost to the estimate; without them it is the
    training steps' alone; the breakdown adds up exactly."""
    settings = {"max_steps": 6, "save_strategy": "no", "per_device_eval_batch_size": 8}
    trainer, splits, _ = tiny_trainer(tiny_bert, tmp_path / "a", rows=220, train_rows=20, **settings)
    without = plan_run(trainer, splits, timed_batches=2)
    trainer, splits, _ = tiny_trainer(
        tiny_bert, tmp_path / "b", rows=220, train_rows=20, eval_strategy="steps", eval_steps=1, **settings
    )
    plan = plan_run(trainer, splits, timed_batches=2)
    assert (without["evaluations"], plan["evaluations"], plan["eval_batches"], plan["saves"]) == (0, 6, 25, 0)
    assert plan["seconds_per_evaluation"] > 0
    assert plan["estimated_train_seconds"] == pytest.approx(
        plan["train_steps_seconds"] + 6 * plan["seconds_per_evaluation"]
    )
    # the estimate grows by the evaluations' time: compared within each plan, as two plans' timings differ by noise
    assert without["estimated_train_seconds"] == pytest.approx(without["train_steps_seconds"])


def test_plan_run_restores_a_given_optimizer_and_training_follows_unchanged(tiny_bert, tmp_path):
    """A dry run in the same process changes nothing training depends on: the same losses, step by step."""
    settings = {"max_steps": 4, "save_strategy": "no", "logging_steps": 1, "seed": 3}
    trainer, splits, _ = tiny_trainer(tiny_bert, tmp_path / "alone", **settings)
    trainer.train()
    alone = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    trainer, splits, _ = tiny_trainer(tiny_bert, tmp_path / "after", **settings)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-3)
    trainer.optimizer = optimizer  # as Trainer(optimizers=(optimizer, None)) sets it
    plan_run(trainer, splits, timed_batches=2)
    assert trainer.optimizer is optimizer and optimizer.state == {}  # its steps undone: no moments left
    trainer.optimizer = None  # the comparison run uses Trainer's own AdamW, like the first
    trainer.train()
    after = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert after == alone and len(alone) == 4


def test_recipe_dry_run_and_output_dir_check(tiny_bert, reviews_csv, tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(run_args(tiny_bert, reviews_csv, out, "--dry_run", "true")) == {}
    log = capsys.readouterr().err  # the recipe's setup_logging replaces the root handlers (and caplog's)
    assert "dry run: train: 144 examples" in log
    assert "dry run: 12 optimizer steps (9 per epoch, 2 epochs); global batch 16" in log
    assert "optimizer step (data loading, forward, backward, optimizer step; 5 timed batches)" in log
    assert re.search(
        r"dry run: about [\d.]+ s of training: 12 steps [\d.]+ s( \(first-step warm-up [\d.]+ s included\))? "
        r"\+ 3 checkpoint saves of [\d.]+ MiB",
        log,
    )
    memory = re.search(  # transferkit.memory's estimate (tests/test_memory.py checks its figures)
        r"dry run: memory per device \(one process, fp32\): about ([\d.]+) MiB = weights [\d.]+ MiB \+ gradients "
        r"[\d.]+ MiB \+ optimizer states [\d.]+ MiB \+ activations [\d.]+ MiB \(batch 16 x length (\d+);",
        log,
    )
    assert memory and 0 < float(memory[1]) < 10 and 8 < int(memory[2]) <= 32  # the longest row, within max length
    assert re.search(r"dry run: fits: cpu has [\d.]+ GiB of memory", log)
    assert not out.exists() or os.listdir(out) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(TransferKitError, match="cannot be written: .*file is a file, not a folder"):
        main(run_args(tiny_bert, reviews_csv, tmp_path / "file" / "out"))


def test_mlm_recipe_dry_run_on_a_stream(tiny_bert, tmp_path, capsys):
    """A streamed corpus has no length: max_steps is the run, its one 'epoch'; evaluations and saves by steps."""
    from recipes.mlm import main as mlm
    from tests.test_mlm import run_args as mlm_args
    from tests.tiny import write_templated_corpus

    corpus = write_templated_corpus(str(tmp_path / "corpus.txt"))
    out = tmp_path / "dry"
    steps = ["--max_steps", "10", "--eval_strategy", "steps", "--eval_steps", "4", "--save_steps", "4"]
    assert mlm(mlm_args(tiny_bert, corpus, out, "--dry_run", "true", "--streaming", "true", *steps)) == {}
    log = capsys.readouterr().err
    assert "dry run: 10 optimizer steps (10 per epoch); global batch 8" in log
    # evaluations at steps 4, 8 and the last (10); saves the same
    assert re.search(
        r"of training: 10 steps [\d.]+ s( \(first-step warm-up [\d.]+ s included\))? "
        r"\+ 3 evaluations of 1 batch [\d.]+ s \+ 3 checkpoint saves",
        log,
    )
    assert not out.exists() or os.listdir(out) == []
    assert set(os.listdir(tmp_path)) <= {"corpus.txt", "dry"}  # the save was timed in a folder removed since


def _paused_recipe() -> None:
    """Test driver, not a test: recipes/classify.py with a pause at TK_TEST_PAUSE ('after_save:N', 'mid_save:N' or
    'in_step:N'); at the pause each rank writes TK_TEST_MARKER.<rank> and waits to be killed or signalled."""
    from recipes.classify import main as classify
    from transferkit.errors import exit_on_user_error
    from transferkit.reliability import PreemptionCallback

    where, _, step = os.environ["TK_TEST_PAUSE"].partition(":")
    names = {"after_save": "_save_checkpoint", "mid_save": "_save_optimizer_and_scheduler", "in_step": "training_step"}
    original = getattr(transformers.Trainer, names[where])

    def pause(self) -> None:
        open(f"{os.environ['TK_TEST_MARKER']}.{self.args.process_index}", "w").close()
        deadline = time.monotonic() + 120
        callbacks = self.callback_handler.callbacks
        while time.monotonic() < deadline and not any(
            isinstance(cb, PreemptionCallback) and cb.requested for cb in callbacks
        ):
            time.sleep(0.05)

    def patched(self, *args, **kwargs):
        at_step = self.state.global_step == int(step)
        if at_step and where != "after_save":
            pause(self)
        result = original(self, *args, **kwargs)
        if at_step and where == "after_save":
            pause(self)
        return result

    setattr(transformers.Trainer, names[where], patched)
    exit_on_user_error(lambda: classify(sys.argv[1:]))


if __name__ == "__main__":
    _paused_recipe()
