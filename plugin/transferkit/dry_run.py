"""`--dry_run true`: what `trainer.train()` would do, without doing it: examples, tokens, steps, the global batch,
how long the run would take (its training steps, evaluations and checkpoint saves, each timed on the real
data, model and disk) and how much memory it needs per device (memory.py), leaving the model, the optimizer, the
random state and output_dir as they were."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pyarrow.compute as pc
import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from transferkit import memory
from transferkit.precision import args_precision
from transferkit.reliability import nearest_folder_above
from transferkit.sparse_mlm import is_sparse_forward

logger = logging.getLogger(__name__)


def _tokens(split) -> int | None:
    """Real (non-padding) tokens in a tokenized split: the attention mask's ones, else the input_ids lengths."""
    if not hasattr(split, "__len__") or "input_ids" not in (split.column_names or []):
        return None
    if "attention_mask" in split.column_names:
        return int(pc.sum(pc.list_flatten(split.with_format("arrow")["attention_mask"])).as_py() or 0)
    return int(pc.sum(pc.list_value_length(split.with_format("arrow")["input_ids"])).as_py() or 0)


TRAIN_WINDOW = 256  # training batches drawn: enough for their mean length (collating one takes milliseconds)


def epoch_ends(total_steps: int, steps_per_epoch: int) -> list[float]:
    """`state.epoch` at the end of each epoch `train()` runs: whole epochs, then the fraction where max_steps stops
    it (Trainer still ends that epoch: `on_epoch_end`, so an epoch-strategy evaluation and save run there). A stream
    has one 'epoch' of max_steps."""
    ratio = total_steps / max(1, steps_per_epoch)
    return [min(epoch + 1, ratio) for epoch in range(max(1, math.ceil(ratio)))]


def _absolute_steps(interval: float, total_steps: int) -> int:
    """eval_steps / save_steps in steps: a value below 1 is a share of the run (TrainerState.compute_steps)."""
    return math.ceil(total_steps * interval) if interval < 1 else int(interval)


def _interval_hits(steps: int, total_steps: int, delay: float = 0) -> int:
    """How often transformers' DefaultFlowCallback.on_step_end fires an event every `steps` steps, from step
    `delay` on (eval_delay), then once more at the last step when that is off the interval."""
    on_interval = total_steps // steps - max(0, math.ceil(delay / steps) - 1)
    return max(0, on_interval) + int(total_steps % steps != 0 and total_steps >= delay)


def count_evaluations_and_saves(args: TrainingArguments, total_steps: int, steps_per_epoch: int) -> dict:
    """The evaluations and checkpoint saves `train()` will make, by transformers' DefaultFlowCallback rules:
    steps strategy: every eval_steps / save_steps, and once more at the last step when it is off the interval (a
    save always); epoch strategy: at each epoch end (eval_delay counts epochs); eval_on_start: one more; save
    strategy best: one per evaluation at most (only those that improve the metric)."""
    ends = epoch_ends(total_steps, steps_per_epoch)
    evaluations = int(args.eval_on_start)
    if args.eval_strategy == IntervalStrategy.STEPS:
        steps = _absolute_steps(args.eval_steps or args.logging_steps, total_steps)
        evaluations += _interval_hits(steps, total_steps, args.eval_delay or 0)
    elif args.eval_strategy == IntervalStrategy.EPOCH:
        evaluations += sum(end >= (args.eval_delay or 0) for end in ends)
    saves, at_most = 0, args.save_strategy == SaveStrategy.BEST
    if args.save_strategy == SaveStrategy.STEPS:  # save_steps 0: only the save at the last step
        saves = _interval_hits(_absolute_steps(args.save_steps, total_steps), total_steps) if args.save_steps else 1
    elif args.save_strategy == SaveStrategy.EPOCH:
        saves = len(ends)
    elif at_most:
        saves = evaluations - int(args.eval_on_start)  # the evaluation before training saves nothing
    return {"evaluations": evaluations, "saves": saves, "saves_at_most": at_most}


def plan_run(trainer: Trainer, splits: dict, timed_batches: int = 5, max_timed_save_gb: float = 2.0) -> dict:
    """What `trainer.train()` would do: examples and tokens per split, optimizer steps, global batch, evaluations
    and checkpoint saves, and how long it would take (what Trainer reports as train_runtime).

    The time is measured, not modelled, on the real objects: batches as they come out of the real train
    dataloader (the first TRAIN_WINDOW are drawn); a full optimizer step (forward, backward, gradient clipping, the
    Trainer's own optimizer) on `timed_batches` of them spread over those, after a warm-up one whose extra time is
    counted once; the evaluation's forward passes on `timed_batches` batches spread over the real eval dataloader,
    all of whose batches are drawn; one checkpoint save, written for real into a temporary folder beside
    output_dir (removed at once) while the checkpoint is at most `max_timed_save_gb` GiB, else extrapolated from
    writing that many bytes. Compute times are taken per padded position (batch x length) and applied to the
    batches' mean length, as short and long batches differ several-fold under length grouping. A test split's
    prediction (the recipes run it after training) is estimated apart, at the evaluation's rate. Left out:
    gradient all-reduce across processes, torch.compile, metric computation, Trainer's logging and callbacks.
    The memory per device (`plan_memory`) is computed, not measured: it holds for the backend the run will use.

    Nothing is left changed: the trainable weights and buffers are copied (to the CPU, so no accelerator memory is
    needed beyond training's) and copied back, the optimizer is a throwaway one from the Trainer's own factory
    (a user-given one has its state restored), torch, Python and NumPy RNG states are restored, and nothing is
    written under output_dir. Under FSDP or DeepSpeed the model is sharded only when training starts, and a step
    through the bare model would not run there: the plan then has no time estimate."""
    args = trainer.args
    dataloader = trainer.get_train_dataloader()
    epochs, per_epoch, _, _, global_batch, batches, total = trainer.set_initial_training_values(args, dataloader)
    plan = {
        "examples": {name: len(split) for name, split in splits.items() if hasattr(split, "__len__")},
        "tokens": {name: _tokens(split) for name, split in splits.items()},
        "epochs": epochs if epochs < 2**31 else None,  # a stream without length: sys.maxsize
        **{"steps_per_epoch": per_epoch, "total_steps": total, "global_batch": global_batch},
        **{"per_device_batch": args.per_device_train_batch_size, "world_size": max(1, args.world_size)},
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        **count_evaluations_and_saves(args, total, per_epoch),
    }
    plan["memory"] = plan_memory(trainer, splits.get("train"))
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return {**plan, "timed_batches": 0, "seconds_per_step": None, "estimated_train_seconds": None}
    with _scratch_training_state(trainer) as optimizer:
        train = _time_training(
            trainer, dataloader, optimizer, batches, timed_batches, len(epoch_ends(total, per_epoch))
        )
        evaluation = _time_evaluation(trainer, timed_batches) if plan["evaluations"] else {}
        save = _time_save(trainer, optimizer, max_timed_save_gb) if plan["saves"] else {}
        test = _time_test(trainer, splits.get("test"), timed_batches, evaluation.get("eval_seconds_per_position"))
    once = train["warmup_seconds"] + train.pop("epoch_starts_seconds")
    train["train_steps_seconds"] = train["seconds_per_step"] * total + once
    estimate = (
        train["train_steps_seconds"]
        + plan["evaluations"] * evaluation.get("seconds_per_evaluation", 0.0)
        + plan["saves"] * save.get("seconds_per_save", 0.0)
    )
    return {**plan, **train, **evaluation, **save, **test, "estimated_train_seconds": estimate}


@contextlib.contextmanager
def _scratch_training_state(trainer: Trainer) -> Iterator[torch.optim.Optimizer]:
    """Yield an optimizer to take real steps with, and undo everything they change afterwards: the trainable
    weights and the buffers (snapshotted on the CPU: cheaper than a deep copy of the model, which would also copy
    the frozen weights and need their memory on the device), gradients, train/eval mode, the Trainer's optimizer
    slot (Trainer.create_optimizer keeps the first optimizer it makes, which `train()` would then reuse with the
    dry run's moments) and the RNG states (dropout and samplers draw from torch's; collators may use NumPy's)."""
    model, previous = trainer.model, trainer.optimizer
    tensors = [p for p in model.parameters() if p.requires_grad] + list(model.buffers())
    saved = [tensor.detach().to("cpu", copy=True) for tensor in tensors]
    optimizer_state = copy.deepcopy(previous.state_dict()) if previous is not None else None
    was_training, python_rng, numpy_rng = model.training, random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            yield trainer.create_optimizer()
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
        trainer.optimizer = previous
        if previous is not None:
            previous.load_state_dict(optimizer_state)
        model.train(was_training)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)


def _draws(loader: Iterable) -> Iterator[tuple[float, object]]:
    """Each batch of `loader` with the seconds it took to come out (the first includes starting the iterator: the
    sampler's indices, worker processes), not counting the time the consumer spends between batches."""
    start = time.perf_counter()
    for batch in loader:
        yield time.perf_counter() - start, batch
        start = time.perf_counter()


def _positions(batch) -> int:
    """Padded positions in a batch (what a step's compute grows with); 1 for a batch without input_ids."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    return max(1, ids.numel()) if torch.is_tensor(ids) else 1


def _spread(count: int | None, timed: int, within: int) -> set[int]:
    """Batch indices to time: 0 (a warm-up, left out) and `timed` more spread evenly over the first `within`."""
    span = max(2, min(count or timed + 1, within))
    return {0} | {1 + round(i * (span - 2) / max(1, timed - 1)) for i in range(timed)}


def _synchronize() -> None:
    """Wait for queued GPU work, so that a clock reading covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_training(trainer: Trainer, dataloader, optimizer, batches, timed: int, epochs_run: int) -> dict:
    """Seconds per optimizer step: gradient_accumulation_steps x (loading a batch + forward and backward at the
    mean padded length of the first TRAIN_WINDOW batches) + one update (clipping, optimizer step, zero_grad), as in
    Trainer's `_run_epoch`. With dataloader workers, loading overlaps compute and only what exceeds it is waited
    for. Once per run: the first step's extra time (lazy initialisation, the optimizer state's allocation: over a
    second on a CPU, a tenth of a short run); once per epoch: the iterator's start (sampler, workers)."""
    args, wanted = trainer.args, _spread(batches, timed, TRAIN_WINDOW)
    loads, positions, computes, updates = [], [], [], []
    for index, (seconds, batch) in zip(range(max(wanted) + 1), _draws(dataloader)):
        loads.append(seconds)
        positions.append(_positions(batch))
        if index in wanted:
            compute, update = _train_step(trainer, batch, optimizer)
            computes.append((compute, positions[-1]))
            updates.append(update)
    # median: robust to a stall on a shared machine; per position: batches of one epoch differ several-fold
    rate = statistics.median(seconds / count for seconds, count in computes[1:] or computes)
    update = statistics.median(updates[1:] or updates)
    warmup = max(0.0, computes[0][0] - rate * computes[0][1]) + max(0.0, updates[0] - update)
    load, compute = statistics.mean(loads[1:] or loads), rate * statistics.mean(positions)
    wait = load if not args.dataloader_num_workers else max(0.0, load - compute)
    return {
        "timed_batches": len(computes[1:] or computes),
        "seconds_per_step": args.gradient_accumulation_steps * (wait + compute) + update,
        "seconds_per_batch_loading": load,
        "warmup_seconds": warmup,
        "epoch_starts_seconds": max(0.0, loads[0] - load) * epochs_run,
    }


def _train_step(trainer: Trainer, batch, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(forward + backward seconds, update seconds) of one batch, as Trainer.training_step and `_run_epoch` do
    them on the bare model: autocast as Accelerate wraps a prepared model's forward, the loss scaled for
    accumulation, gradient clipping (Trainer measures the norm even without clipping), step, zero_grad."""
    model, args = trainer.model, trainer.args
    model.train()
    start = time.perf_counter()
    inputs = trainer._prepare_inputs(batch)
    with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():
        loss = trainer.compute_loss(model, inputs)
    trainer.accelerator.backward(loss / args.gradient_accumulation_steps)
    _synchronize()
    middle = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else math.inf)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    _synchronize()
    return middle - start, time.perf_counter() - middle


def _time_inference(trainer: Trainer, loader, timed: int, rate: float | None = None) -> tuple[int, float, float]:
    """(batches, seconds, seconds per padded position) of one pass over an evaluation or prediction dataloader:
    every batch is drawn (that is the pass's real loading time), `timed` of them spread over the whole pass (it
    may be sorted by length) run Trainer.prediction_step and preprocess_logits_for_metrics, as evaluation_loop
    does; a known `rate` skips the forward passes."""
    model, args = trainer.model, trainer.args
    loss_only = trainer.compute_metrics is None or args.prediction_loss_only  # as Trainer.evaluate decides
    count = len(loader) if hasattr(loader, "__len__") else None
    wanted = set() if rate is not None else _spread(count, timed, count or 64)
    loads, positions, rates, was_training = [], [], [], model.training
    model.eval()
    for index, (seconds, batch) in enumerate(_draws(loader)):
        loads.append(seconds)
        positions.append(_positions(batch))
        if index in wanted:
            start = time.perf_counter()
            with trainer.accelerator.autocast():
                _, logits, labels = trainer.prediction_step(model, batch, loss_only)
                if logits is not None and trainer.preprocess_logits_for_metrics is not None:
                    trainer.preprocess_logits_for_metrics(logits, labels)
            _synchronize()
            rates.append((time.perf_counter() - start) / positions[-1])
    model.train(was_training)
    rate = rate if rate is not None else statistics.median(rates[1:] or rates) if rates else 0.0
    return len(loads), sum(loads) + rate * sum(positions), rate


def _time_evaluation(trainer: Trainer, timed: int) -> dict:
    """One evaluation of every eval dataset (a dict of them is evaluated one by one), as `train()` runs it."""
    datasets = trainer.eval_dataset
    names = list(datasets) if isinstance(datasets, dict) else [None] if datasets is not None else []
    passes = [_time_inference(trainer, trainer.get_eval_dataloader(name), timed) for name in names]
    return {
        "eval_batches": sum(batches for batches, _, _ in passes),
        "seconds_per_evaluation": sum(seconds for _, seconds, _ in passes),
        "eval_seconds_per_position": statistics.mean(rate for _, _, rate in passes) if passes else None,
    }


def _time_test(trainer: Trainer, split, timed: int, rate: float | None) -> dict:
    """Prediction on a test split, which the recipes run after training (not part of train_runtime): its batches
    drawn, their forward passes at the evaluation's rate when there is one."""
    if split is None or not hasattr(split, "__len__"):
        return {"test_batches": None, "test_prediction_seconds": None}
    batches, seconds, _ = _time_inference(trainer, trainer.get_test_dataloader(split), timed, rate)
    return {"test_batches": batches, "test_prediction_seconds": seconds}


def _backend(trainer: Trainer) -> tuple[str, dict]:
    """The memory layout the run will use, as memory.BACKENDS names it, and ZeRO offload options: DeepSpeed's
    ZeRO stage, FSDP's sharding strategy (FSDP2: reshard_after_forward False is shard-grad-op), else DDP across
    processes or a single process."""
    state = trainer.accelerator.state
    if trainer.is_deepspeed_enabled:
        plugin = state.deepspeed_plugin
        zero = (plugin.deepspeed_config or {}).get("zero_optimization", {})
        offloaded = {
            f"offload_{kind}": str(zero.get(f"offload_{part}", {}).get("device", "none")) in ("cpu", "nvme")
            for kind, part in (("optimizer", "optimizer"), ("params", "param"))
        }
        return f"zero{int(plugin.zero_stage or 0)}", offloaded
    if trainer.is_fsdp_enabled:
        plugin = state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) == 2:
            return ("fsdp_full_shard" if plugin.reshard_after_forward else "fsdp_shard_grad_op"), {}
        strategy = str(getattr(plugin, "sharding_strategy", "FULL_SHARD")).rsplit(".", 1)[-1].lower()
        # HYBRID_SHARD shards within a node like FULL_SHARD: the world size is then an optimistic divisor
        return {"no_shard": "fsdp_no_shard", "shard_grad_op": "fsdp_shard_grad_op"}.get(strategy, "fsdp_full_shard"), {}
    return ("ddp" if max(1, trainer.args.world_size) > 1 else "single"), {}


def _mixed_precision(trainer: Trainer) -> bool:
    """bf16/fp16 mixed precision: Trainer's flags or the accelerate config's, or a DeepSpeed config that turns it on
    itself."""
    if args_precision(trainer.args) is not None:
        return True
    if trainer.is_deepspeed_enabled:
        config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config or {}
        return any(config.get(kind, {}).get("enabled") is True for kind in ("bf16", "fp16"))
    return False


def _padded_length(trainer: Trainer, split) -> int:
    """The longest padded sequence a training batch can have: the collator's fixed max_length when it pads to
    it, else the split's longest row (rounded up to pad_to_multiple_of); for a stream, the truncation limit."""
    collator = trainer.data_collator
    fixed = getattr(collator, "max_length", None) if getattr(collator, "padding", None) == "max_length" else None
    if fixed:
        return int(fixed)
    if split is not None and hasattr(split, "__len__") and "input_ids" in (split.column_names or []) and len(split):
        longest = int(pc.max(pc.list_value_length(split.with_format("arrow")["input_ids"])).as_py() or 1)
        multiple = getattr(collator, "pad_to_multiple_of", None) or 1
        return math.ceil(longest / multiple) * multiple
    config = trainer.model.config
    limits = [getattr(trainer.processing_class, "model_max_length", None), config.max_position_embeddings]
    return min(int(limit) for limit in limits if limit and limit < 10**9)


def _head(model: torch.nn.Module, collator) -> tuple[str, float]:
    """What the model computes past its layers ('masked_lm', 'causal_lm' or 'classifier') and the share of
    positions its vocabulary projection covers (the sparse MLM head projects the masked ones only)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name.endswith("ForMaskedLM"):
        sparse = is_sparse_forward(base.__dict__.get("forward"))
        return "masked_lm", float(getattr(collator, "mlm_probability", 0.15)) if sparse else 1.0
    return ("causal_lm" if name.endswith("ForCausalLM") else "classifier"), 1.0


def _precision_label(trainer: Trainer, counts: memory.ParameterCounts, mixed: bool, backend: str) -> str:
    """How the weights are held, in words, for the plan's memory line."""
    half = "fp16" if args_precision(trainer.args) == "fp16" else "bf16"
    if backend.startswith("zero") and mixed:
        label = f"DeepSpeed {half} (16-bit weights, fp32 master copy)"
    elif counts.weight_bytes <= 2:
        label = "16-bit weights"
    else:
        label = f"{half} autocast over fp32 weights" if mixed else "fp32"
    return label + (", 4-bit base weights" if counts.quantized else "")


def plan_memory(trainer: Trainer, train_split) -> dict:
    """Memory per device for one training micro-batch of the longest padded length, under the backend, world
    size, precision and optimizer the Trainer will use (memory.estimate), and the device's memory to compare
    with. The parameter counts come from the model as built (so LoRA adapters, frozen layers and 4-bit weights are
    what will train); memory.meta_model gives the same counts from a config alone."""
    args, model = trainer.args, trainer.model
    backend, offload = _backend(trainer)
    world_size = max(1, args.world_size)
    mixed = _mixed_precision(trainer)
    head, fraction = _head(model, trainer.data_collator)
    config = model.config
    checkpointing = bool(args.gradient_checkpointing or getattr(model, "is_activation_checkpointing", False))
    batch, length = args.per_device_train_batch_size, _padded_length(trainer, train_split)
    device_type = args.device.type
    counts = memory.count_parameters(model)
    estimate = memory.estimate(
        counts,
        memory.TransformerShape.from_config(config),
        batch,
        length,
        backend=backend,
        world_size=world_size,
        mixed_precision=mixed,
        optim=str(getattr(args.optim, "value", args.optim)),
        attention=memory.attention_kind(
            getattr(config, "_attn_implementation", None),
            memory.TransformerShape.from_config(config).attention_dropout,
            device_type,
        ),
        device_type=device_type,
        checkpointing=checkpointing,
        head=head,
        logit_fraction=fraction,
        **offload,
    )
    available = memory.device_memory(args.device)
    sharing = memory.processes_sharing_memory(args.device, world_size)
    return {
        **estimate.as_dict(),
        **{"batch": batch, "length": length, "mixed_precision": mixed, "gradient_checkpointing": checkpointing},
        **{"precision": _precision_label(trainer, counts, mixed, backend), "device": str(args.device)},
        **{"device_memory": available, "processes_on_device": sharing},
        "exceeds": available is not None and estimate.total * sharing > available,
    }


def _checkpoint_bytes(trainer: Trainer, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a checkpoint writes: the weights, and the optimizer state unless save_only_model."""
    tensors = list(trainer.model.state_dict().values())
    if not trainer.args.save_only_model:
        tensors += [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _scratch_folder_parent(output_dir: str) -> str:
    """Where to time a save: the nearest existing folder above output_dir (the checkpoints' disk, not inside
    output_dir); the system's temporary folder when that is not writable."""
    folder = nearest_folder_above(output_dir)
    return folder if os.access(folder, os.W_OK) else tempfile.gettempdir()


def _time_save(trainer: Trainer, optimizer: torch.optim.Optimizer, max_gb: float) -> dict:
    """Seconds per checkpoint save. A real save, as Trainer._save_checkpoint writes its bulk (save_model: weights,
    tokenizer, training_args.bin; optimizer.pt), into a temporary folder removed at once: the actual serialisation
    and disk, which a write-speed figure alone would miss. A checkpoint above `max_gb` GiB is not written in full
    (a dry run should not spend minutes or fill a disk): `max_gb` GiB are, and the time is scaled by the bytes."""
    size, limit = _checkpoint_bytes(trainer, optimizer), int(max_gb * 2**30)
    parent = _scratch_folder_parent(trainer.args.output_dir)
    with tempfile.TemporaryDirectory(prefix=".transferkit-dry-run-save-", dir=parent) as folder:
        start = time.perf_counter()
        if size <= limit:
            trainer.save_model(folder, _internal_call=True)  # as _save_checkpoint calls it: no Hub push
            if not trainer.args.save_only_model and trainer.args.should_save:
                torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
            return {"seconds_per_save": time.perf_counter() - start, "save_timing": "timed", "checkpoint_bytes": size}
        save_file({"probe": torch.zeros(limit, dtype=torch.uint8)}, os.path.join(folder, "probe.safetensors"))
        seconds = (time.perf_counter() - start) * size / limit
        return {"seconds_per_save": seconds, "save_timing": "extrapolated", "checkpoint_bytes": size}


def _count(number: int, noun: str) -> str:
    """'1 batch', '3 batches', '2 evaluations': the plan's lines read as sentences."""
    return f"{number} {noun}{'' if number == 1 else 'es' if noun.endswith('ch') else 's'}"


def _seconds(value: float) -> str:
    """Seconds below a minute and a half, minutes above: how people plan a run."""
    return f"{value / 60:.1f} min" if value >= 90 else f"{value:.1f} s"


def _size(value: float) -> str:
    """Bytes as MiB below a GiB, GiB above."""
    return f"{value / 2**30:,.1f} GiB" if value >= 2**30 else f"{value / 2**20:,.1f} MiB"


BACKEND_NAMES = {
    "single": "one process",
    "ddp": "DDP",
    "fsdp_no_shard": "FSDP no-shard",
    "fsdp_shard_grad_op": "FSDP shard-grad-op",
    "fsdp_full_shard": "FSDP full shard",
    **{f"zero{stage}": f"DeepSpeed ZeRO-{stage}" for stage in range(4)},
}


def print_memory(m: dict) -> None:
    """Log the memory estimate per device, and a warning when the device (the RAM, shared by the processes on a
    CPU machine) has less than it needs, with what lowers it."""
    processes = f", {m['world_size']} processes" if m["world_size"] > 1 else ""
    checkpointing = ", gradient checkpointing" if m["gradient_checkpointing"] else ""
    logger.info(
        f"dry run: memory per device ({BACKEND_NAMES[m['backend']]}{processes}, {m['precision']}): about "
        f"{_size(m['total'])} = weights {_size(m['weights'])} + gradients {_size(m['gradients'])} + optimizer states "
        f"{_size(m['optimizer'])} + activations {_size(m['activations'])} (batch {m['batch']} x length "
        f"{m['length']}{checkpointing}; computed, not measured; CUDA context and fragmentation not included)"
    )
    if m["device_memory"] is None:
        return
    shared = f", shared by {m['processes_on_device']} processes" if m["processes_on_device"] > 1 else ""
    where = f"{m['device']} has {_size(m['device_memory'])} of memory{shared}"
    if not m["exceeds"]:
        logger.info(f"dry run: fits: {where}")
        return
    logger.warning(
        f"dry run: the run needs about {_size(m['total'] * m['processes_on_device'])} but {where}: it will likely "
        "run out of memory. Lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the global "
        "batch), shorten max_seq_length, set gradient_checkpointing true, bf16, LoRA (use_peft), or shard with "
        "FSDP / DeepSpeed ZeRO-3 across more devices."
    )


def print_plan(plan: dict) -> None:
    """Log the plan in a few readable lines, saying what the time estimate holds and what it leaves out."""
    p, epochs = plan, f", {plan['epochs']} epochs" if plan["epochs"] else ""
    for name, count in p["examples"].items():
        tokens = f", {p['tokens'][name]:,} tokens" if p["tokens"][name] is not None else ""
        logger.info(f"dry run: {name}: {count} examples{tokens}")
    logger.info(
        f"dry run: {p['total_steps']} optimizer steps ({p['steps_per_epoch']} per epoch{epochs}); global batch "
        f"{p['global_batch']} = {p['per_device_batch']} per device x {p['gradient_accumulation_steps']} accumulation "
        f"x {p['world_size']} processes"
    )
    if "memory" in p:
        print_memory(p["memory"])
    saves = f"{'up to ' if p['saves_at_most'] else ''}{_count(p['saves'], 'checkpoint save')}"
    evaluations = _count(p["evaluations"], "evaluation")
    if p["estimated_train_seconds"] is None:
        logger.info(f"dry run: {evaluations}, {saves}")
        logger.info("dry run: no time estimate under FSDP or DeepSpeed (the model is sharded when training starts).")
        return
    logger.info(
        f"dry run: about {p['seconds_per_step']:.3f} s per optimizer step (data loading, forward, backward, "
        f"optimizer step; {p['timed_batches']} timed batches)"
    )
    warmup = f" (first-step warm-up {_seconds(p['warmup_seconds'])} included)" if p["warmup_seconds"] >= 0.05 else ""
    parts = [f"{p['total_steps']} steps {_seconds(p['train_steps_seconds'])}{warmup}"]
    if p["evaluations"]:
        parts.append(
            f"{evaluations} of {_count(p['eval_batches'], 'batch')} "
            f"{_seconds(p['evaluations'] * p['seconds_per_evaluation'])}"
        )
    if p["saves"]:
        how = "timed" if p["save_timing"] == "timed" else "extrapolated from a partial write"
        how += " in a temporary folder beside output_dir, removed"
        size = f"{p['checkpoint_bytes'] / 2**20:,.1f} MiB"
        parts.append(f"{saves} of {size} {_seconds(p['saves'] * p['seconds_per_save'])} ({how})")
    logger.info(f"dry run: about {_seconds(p['estimated_train_seconds'])} of training: {' + '.join(parts)}")
    test = p["test_prediction_seconds"]
    test = (
        f"prediction on the test split ({_count(p['test_batches'], 'batch')}, about {_seconds(test)}), " if test else ""
    )
    logger.info(f"dry run: not in the estimate: what the recipe runs after training: {test}final evaluation, save.")
