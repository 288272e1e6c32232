"""Where a rerun starts: `resume_from_checkpoint: auto` never deletes a run; a finished run (run_finished.json, the
recipe's last step) exits 0; model-only checkpoints resume the weights, the step and the learning-rate schedule."""

from __future__ import annotations

import json
import shutil

import pytest

from recipes.classify import main
from tests.test_reliability import resume_spy, run_args  # noqa: F401 (resume_spy is a fixture)
from transferkit.errors import TransferKitError
from transferkit.resume import FINISHED_MARKER, RunAlreadyFinished


def snapshot(output_dir) -> dict[str, bytes]:
    return {str(path.relative_to(output_dir)): path.read_bytes() for path in output_dir.rglob("*") if path.is_file()}


def log_history(output_dir) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize(
    "saving",
    [("--save_strategy", "no"), ("--save_only_model", "true")],  # no checkpoint / checkpoints without optimizer.pt
    ids=["no-checkpoints", "model-only-checkpoints"],
)
def test_auto_on_a_finished_run_exits_0_and_deletes_nothing(saving, tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    main(run_args(tiny_bert, reviews_csv, out, *saving))
    assert (out / FINISHED_MARKER).is_file()
    before = snapshot(out)
    with pytest.raises(RunAlreadyFinished) as info:
        main(run_args(tiny_bert, reviews_csv, out, *saving, "--resume_from_checkpoint", "auto"))
    assert info.value.code == 0
    assert snapshot(out) == before


def test_auto_on_an_unfinished_run_without_checkpoint_is_an_error_and_keeps_it(tiny_bert, reviews_csv, tmp_path):
    out = tmp_path / "run"
    main(run_args(tiny_bert, reviews_csv, out, "--save_strategy", "no"))
    (out / FINISHED_MARKER).unlink()  # as a crash after training leaves it: weights and train metrics, no marker
    before = snapshot(out)
    with pytest.raises(TransferKitError, match=r"a run that did not finish \(.*all_results.json.*overwrite_output_dir"):
        main(run_args(tiny_bert, reviews_csv, out, "--save_strategy", "no", "--resume_from_checkpoint", "auto"))
    assert snapshot(out) == before
    main(run_args(tiny_bert, reviews_csv, out, "--save_strategy", "no", "--overwrite_output_dir", "true"))
    assert (out / FINISHED_MARKER).is_file()


def test_a_model_only_checkpoint_resumes_weights_step_and_schedule(tiny_bert, reviews_csv, tmp_path, resume_spy):  # noqa: F811
    model_only = ("--save_only_model", "true", "--warmup_steps", "2")
    reference = tmp_path / "reference"
    main(run_args(tiny_bert, reviews_csv, reference, *model_only))
    out = tmp_path / "run"
    main(run_args(tiny_bert, reviews_csv, out, *model_only))
    for name in list(out.iterdir()):  # as a kill after the save at step 8 leaves it
        if name.name != "checkpoint-4" and name.name != "checkpoint-8":
            shutil.rmtree(name) if name.is_dir() else name.unlink()
    assert not (out / "checkpoint-8" / "optimizer.pt").exists()
    resume_spy.clear()
    main(run_args(tiny_bert, reviews_csv, out, *model_only, "--resume_from_checkpoint", "auto"))
    assert resume_spy == [8]
    rates = {entry["step"]: entry["learning_rate"] for entry in log_history(out) if "learning_rate" in entry}
    expected = {entry["step"]: entry["learning_rate"] for entry in log_history(reference) if "learning_rate" in entry}
    assert sorted(rates) == list(range(1, 13))  # 1-8 from the checkpoint's history, 9-12 trained after resuming
    assert rates == pytest.approx(expected)
    assert (out / FINISHED_MARKER).is_file()


def test_overwrite_and_an_explicit_checkpoint_exclude_each_other(tiny_bert, reviews_csv, tmp_path):
    with pytest.raises(TransferKitError, match="resume_from_checkpoint .* and overwrite_output_dir exclude each other"):
        main(run_args(tiny_bert, reviews_csv, tmp_path / "o", "--resume_from_checkpoint", str(tmp_path),
                      "--overwrite_output_dir", "true"))  # fmt: skip


def test_only_incomplete_checkpoints_are_named_in_the_refusal(tiny_bert, reviews_csv, tmp_path):
    (tmp_path / "run" / "checkpoint-8").mkdir(parents=True)  # a save a kill cut short: no trainer_state.json
    with pytest.raises(TransferKitError, match=r"did not finish \(checkpoint-8 \(incomplete\); no run_finished"):
        main(run_args(tiny_bert, reviews_csv, tmp_path / "run", "--resume_from_checkpoint", "auto"))


def test_a_plateau_scheduler_is_not_fast_forwarded(tmp_path):
    import torch
    from transformers.trainer_callback import TrainerState

    from transferkit.resume import ScheduleFastForward

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    state = TrainerState()
    state.global_step = 8
    ScheduleFastForward().on_train_begin(None, state, None, lr_scheduler=plateau)  # would raise: step() needs metrics
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_a_checkpoint_at_max_steps_is_not_trained_one_step_further(tiny_bert, reviews_csv, tmp_path):
    """Killed after the last save but before the run finished: resuming the checkpoint at max_steps (step 12, in the
    middle of the second epoch) must not train. Trainer's loop would: it skips the epoch's 3 done batches, takes a
    step, and only then checks max_steps (transformers 5.x)."""
    out = tmp_path / "run"
    main(run_args(tiny_bert, reviews_csv, out))
    final = (out / "checkpoint-12" / "model.safetensors").read_bytes()
    for path in out.iterdir():  # as a kill right after checkpoint-12 was written leaves it
        if path.name != "checkpoint-12":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    main(run_args(tiny_bert, reviews_csv, out, "--resume_from_checkpoint", "auto"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 12
    assert not (out / "checkpoint-13").exists()
    assert (out / "model.safetensors").read_bytes() == final
    assert (out / FINISHED_MARKER).is_file()


def test_a_checkpoint_at_max_steps_ends_on_the_best_model_as_an_uninterrupted_run(tiny_bert, reviews_csv, tmp_path):
    """With load_best_model_at_end (early stopping), the loaded last checkpoint gives way to the best one, as
    Trainer.train would have ended. A rising loss as the "best" metric makes an early checkpoint the best."""
    out = tmp_path / "run"
    best = ("--eval_strategy", "steps", "--eval_steps", "4", "--early_stopping_patience", "10")
    best += ("--metric_for_best_model", "loss", "--greater_is_better", "true")
    main(run_args(tiny_bert, reviews_csv, out, *best))
    uninterrupted = (out / "model.safetensors").read_bytes()
    for path in out.iterdir():
        if not path.name.startswith("checkpoint-"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    main(run_args(tiny_bert, reviews_csv, out, *best, "--resume_from_checkpoint", "auto"))
    assert (out / "model.safetensors").read_bytes() == uninterrupted
