"""The MLM recipe and its data path: chunking, masking statistics, fixed evaluation masks, streaming, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForMaskedLM, TrainingArguments

from recipes.mlm import main
from tests.tiny import build_tokenizer, launch_two_processes, write_templated_corpus
from transferkit.arguments import DataArguments, MLMArguments
from transferkit.errors import TransferKitError
from transferkit.mlm_data import EVAL_MASK_PROBABILITY, MLMCollator, mask_for_evaluation, tokenize_for_mlm


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return write_templated_corpus(str(tmp_path_factory.mktemp("corpus") / "corpus.txt"))


def run_args(model: str, corpus: str, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--train_file",
        corpus,
        "--output_dir",
        str(output_dir),
        "--max_seq_length",
        "32",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "5e-3",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


def tokenize(texts: list[str], mlm_args: MLMArguments, size: int = 16) -> Dataset:
    splits = DatasetDict({"train": Dataset.from_dict({"text": texts})})
    data_args = DataArguments(train_file="unused")
    return tokenize_for_mlm(
        splits,
        build_tokenizer(),
        ["text"],
        size,
        data_args,
        mlm_args,
        TrainingArguments(output_dir="unused", report_to="none"),
    )["train"]


def test_run_writes_model_metrics_and_learns(tiny_bert, corpus, tmp_path):
    out = tmp_path / "mlm"
    metrics = main(run_args(tiny_bert, corpus, out, "--num_train_epochs", "4", "--logging_steps", "5"))
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-4)
    assert 0 <= metrics["eval_accuracy"] <= 1
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_loss", "eval_perplexity", "eval_accuracy", "train_loss"} <= set(results)
    assert (out / "training_curves.png").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert eval_losses[-1] < eval_losses[0] - 0.05  # it learns the toy corpus' word statistics (fixed eval masks)
    model = AutoModelForMaskedLM.from_pretrained(out)  # the saved checkpoint is a standard MaskedLM
    assert model.config.model_type == "bert"


def test_packed_chunks_are_full_and_keep_document_separators():
    tokenizer = build_tokenizer()
    chunks = tokenize(["good film . " * 6, "bad plot ! " * 6], MLMArguments(), size=16)
    assert all(len(ids) == 16 for ids in chunks["input_ids"])
    flat = [token for ids in chunks["input_ids"] for token in ids]
    assert flat.count(tokenizer.sep_token_id) >= 1 and flat.count(tokenizer.cls_token_id) >= 2


def test_line_by_line_and_sentence_chunks():
    lines = tokenize(["good film\nbad plot\n\nfun cast"], MLMArguments(line_by_line=True))
    assert len(lines) == 3
    pytest.importorskip("punkt", reason="needs the text extra: pip install 'transferkit[text]'")
    tokenizer = build_tokenizer()
    chunks = tokenize(
        ["The film is good. The plot is dull. The cast is fun and warm. It was bland."],
        MLMArguments(sentence_chunks=True),
        size=12,
    )
    for ids in chunks["input_ids"]:
        words = tokenizer.convert_ids_to_tokens(ids)
        assert words[-2] == "." and words[-1] == "[SEP]"  # every chunk ends at a sentence boundary


def test_training_masks_follow_the_ratios():
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    collator = MLMCollator(tokenizer, MLMArguments(mlm_probability=0.15))
    chunks = tokenize(["the film was good and the plot was fun . " * 400], MLMArguments(), size=64)
    original = torch.tensor(chunks["input_ids"])
    batch = collator([{k: chunks[i][k] for k in chunks.column_names} for i in range(len(chunks))])
    masked = batch["labels"] != -100
    specials = (original == tokenizer.cls_token_id) | (original == tokenizer.sep_token_id)
    assert not masked[specials].any()
    assert masked.sum() / (~specials).sum() == pytest.approx(0.15, abs=0.02)
    replaced = batch["input_ids"][masked]
    assert (replaced == tokenizer.mask_token_id).float().mean() == pytest.approx(0.8, abs=0.04)
    assert (replaced == original[masked]).float().mean() == pytest.approx(0.1 + 0.1 / len(tokenizer), abs=0.04)


def test_whole_word_masking_masks_words_together():
    tokens = build_tokenizer()
    collator = MLMCollator(tokens, MLMArguments(whole_word_mask=True, mlm_probability=0.3))
    chunks = tokenize(["goods goodly films " * 100], MLMArguments(whole_word_mask=True), size=32)
    assert "offset_mapping" in chunks.column_names
    batch = collator([{k: chunks[i][k] for k in chunks.column_names} for i in range(len(chunks))])
    pieces = [tokens.convert_ids_to_tokens(ids) for ids in chunks["input_ids"]]
    masked = batch["labels"] != -100
    for row, words in enumerate(pieces):
        for position, piece in enumerate(words):
            if position > 0 and piece.startswith("##"):  # masked exactly when its word's first piece is
                assert masked[row, position] == masked[row, position - 1]
    assert masked.any()


def test_evaluation_masks_are_fixed_and_at_15_percent():
    tokenizer = build_tokenizer()
    chunks = tokenize(["the film was good and the plot was fun . " * 200], MLMArguments(), size=64)
    first, second = mask_for_evaluation(chunks, tokenizer), mask_for_evaluation(chunks, tokenizer)
    assert first["labels"] == second["labels"] and first["input_ids"] == second["input_ids"]
    labels = torch.tensor(first["labels"])
    share = (labels != -100).sum() / (torch.tensor(chunks["special_tokens_mask"]) == 0).sum()
    assert share == pytest.approx(EVAL_MASK_PROBABILITY, abs=0.02)


def test_streaming_needs_max_steps_and_runs_with_it(tiny_bert, corpus, tmp_path):
    with pytest.raises(TransferKitError, match="set max_steps"):
        main(run_args(tiny_bert, corpus, tmp_path / "s", "--streaming", "true"))
    metrics = main(
        run_args(
            tiny_bert,
            corpus,
            tmp_path / "s",
            "--streaming",
            "true",
            "--max_steps",
            "4",
            "--max_eval_samples",
            "20",
            "--eval_strategy",
            "no",
        )
    )
    assert metrics["eval_loss"] > 0
    assert (tmp_path / "s" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mlm_probability", "1.5"], "mlm_probability must be > 0 and < 1"),
        (["--max_seq_length", "512"], "max_seq_length 512 is above what the model takes (64 tokens)"),
        (["--text_column_names", "body"], "text_column_names: column 'body' is not in the train split"),
    ],
)
def test_bad_input(tiny_bert, corpus, tmp_path, extra, message):
    with pytest.raises(TransferKitError) as info:
        main(run_args(tiny_bert, corpus, tmp_path / "bad", *extra))
    assert message in str(info.value)


def test_empty_corpus(tiny_bert, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(TransferKitError, match="empty"):
        main(run_args(tiny_bert, str(empty), tmp_path / "bad"))


def test_decoder_model_is_refused(tmp_path, corpus):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=60)).save_pretrained(tmp_path / "gpt2")
    build_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(TransferKitError, match="gpt2 model, which has no masked-LM head"):
        main(run_args(str(tmp_path / "gpt2"), corpus, tmp_path / "bad"))


def test_a_checkpoint_without_the_mlm_head_gets_one_message(tmp_path, caplog, monkeypatch):
    """A bare BertModel loads with a new MLM head: TransferKit's one warning, not transformers' loading report and
    its 'checkpoint seem corrupted' (tied decoder bias) next to it."""
    import logging
    import warnings

    from transformers import BertModel

    from tests.tiny import tiny_bert_config
    from transferkit.arguments import ModelArguments
    from transferkit.models import load_language_model

    BertModel(tiny_bert_config(len(build_tokenizer()))).save_pretrained(tmp_path / "bare")
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)  # caplog listens at the root logger
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_language_model(ModelArguments(model_name_or_path=str(tmp_path / "bare")), "mlm")
    shown = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(shown) == 1, shown
    assert "no trained MLM head" in shown[0] and "cls.predictions.decoder.bias" in shown[0]
    assert "head_warmup_steps" in shown[0]
    assert not [str(warning.message) for warning in caught]
    assert "cls.predictions.decoder.bias" in model.transferkit_missing_keys
    assert logging.getLogger("transformers").propagate  # the library logger is as it was


@pytest.mark.slow
def test_two_process_run(tiny_bert, corpus, tmp_path):
    result = launch_two_processes(
        "mlm.py",
        run_args(tiny_bert, corpus, tmp_path / "two", "--max_steps", "4", "--per_device_train_batch_size", "4"),
    )
    assert "Global batch 8 = 4 per device x 1 accumulation steps x 2 processes" in result.stderr
    assert "eval_perplexity" in json.loads((tmp_path / "two" / "all_results.json").read_text())


def numbered_lines(path, count: int = 240) -> str:
    """Distinct lines, in order: line i spells i in base len(WORDS) with three words."""
    from tests.tiny import NEUTRAL, POSITIVE

    words = POSITIVE + NEUTRAL
    lines = [" ".join(words[(i // len(words) ** k) % len(words)] for k in range(3)) for i in range(count)]
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


def streaming_args(model: str, corpus: str, output_dir, per_device: int) -> list[str]:
    return run_args(model, corpus, output_dir, "--streaming", "true", "--line_by_line", "true", "--max_steps", "6",
                    "--per_device_train_batch_size", str(per_device), "--validation_split_percentage", "10",
                    "--eval_strategy", "no", "--save_strategy", "no")  # fmt: skip


def held_out_rows(model: str, corpus: str) -> set[tuple[int, ...]]:
    """The rows a 10% held-out split keeps for evaluation: never trained on, whoever reads which file."""
    from transferkit.data import _held_out

    lines = Path(corpus).read_text().splitlines()
    rows = file_rows(model, corpus)
    return {row for row, line in zip(rows, lines) if _held_out({"text": line}, ["text"], 10)}


def collated_rows(path) -> list[tuple[int, ...]]:
    return [tuple(map(int, line.split())) for line in Path(path).read_text().splitlines()]


def file_rows(model: str, corpus: str) -> list[tuple[int, ...]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [tuple(tokenizer(line)["input_ids"]) for line in Path(corpus).read_text().splitlines()]


def test_a_streamed_corpus_is_shuffled(tiny_bert, tmp_path):
    import subprocess
    import sys

    from tests.tiny import REPO

    corpus = numbered_lines(tmp_path / "lines.txt")
    out = tmp_path / "one"
    driver = str(Path(__file__).parent / "record_collated_rows.py")
    subprocess.run([sys.executable, driver, *streaming_args(tiny_bert, corpus, out, 8)], check=True, cwd=REPO,
                   capture_output=True, env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    held_out = held_out_rows(tiny_bert, corpus)
    in_file = [row for row in file_rows(tiny_bert, corpus) if row not in held_out]
    seen = collated_rows(f"{out}.rank0.rows")
    # 6 steps of 8 rows, and the batch accelerate reads ahead
    assert len(seen) >= 48 and len(set(seen)) == len(seen) and set(seen) <= set(in_file)
    assert seen != in_file[: len(seen)]  # in file order, it was not shuffled
    assert 10 <= len(held_out) <= 40  # about 10% of 240


@pytest.mark.slow
@pytest.mark.parametrize("files", [1, 2], ids=["one-file", "two-unequal-files"])
def test_two_processes_stream_disjoint_rows(files, tiny_bert, tmp_path):
    """One file: every rank reads it and keeps its share of each global batch. Two files: one each (accelerate shards
    by file), 40 rows against 200; each rank cycles through its own, so neither runs out and leaves the other
    waiting in an all-reduce (more steps than the small file has rows)."""
    corpus = numbered_lines(tmp_path / "lines.txt")
    if files == 2:
        lines = Path(corpus).read_text().splitlines()
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "a.txt").write_text("\n".join(lines[:44]) + "\n")  # about 40 to train on
        (tmp_path / "corpus" / "b.txt").write_text("\n".join(lines[44:]) + "\n")
        corpus = str(tmp_path / "corpus")
    out = tmp_path / "two"
    args = streaming_args(tiny_bert, corpus, out, 4)
    args[args.index("--max_steps") + 1] = "15"  # 60 rows a rank: the 40-row file is read more than once
    launch_two_processes(str(Path(__file__).parent / "record_collated_rows.py"), args)
    ranks = [collated_rows(f"{out}.rank{rank}.rows") for rank in (0, 1)]
    assert len(ranks[0]) >= 60 and len(ranks[1]) >= 60  # collated where they are trained, not dispatched
    assert not set(ranks[0]) & set(ranks[1])
    lines = str(tmp_path / "lines.txt")
    assert set(ranks[0]) | set(ranks[1]) <= set(file_rows(tiny_bert, lines)) - held_out_rows(tiny_bert, lines)
