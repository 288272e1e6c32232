"""Tiny models and data built offline for the tests: a word-level BERT tokenizer, a 2-layer BERT, review CSVs.

The data is a toy sentiment task (positive words -> 'pos', negative -> 'neg') so that a few steps of training
move the metrics, which lets tests check learning and not only that files appear.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys

from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "clever", "warm", "bright"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "flat", "tedious", "messy", "cold", "bland"]
NEUTRAL = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "cast",
    "is",
    "was",
    "very",
    "quite",
    "and",
    "but",
    "story",
    "acting",
    "score",
    "ending",
    "really",
    "so",
    "this",
    "it",
    ".",
    ",",
    "!",
    "1999",
    "2024",
]
WORDS = POSITIVE + NEGATIVE + NEUTRAL + ["##s", "##ly"]


def build_tokenizer() -> BertTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)


def tiny_bert_config(vocab_size: int, **overrides) -> BertConfig:
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # no dropout: runs compare exactly
    settings.update(overrides)
    return BertConfig(**settings)


def save_tiny_bert(directory: str, seed: int = 0) -> str:
    """A tiny BertForMaskedLM + tokenizer in `directory`; loads as MaskedLM or (new head) SequenceClassification."""
    import torch

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = BertForMaskedLM(tiny_bert_config(len(tokenizer)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def review(rng: random.Random, positive: bool) -> str:
    pool = POSITIVE if positive else NEGATIVE
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 8))] + [rng.choice(pool) for _ in range(2)]
    rng.shuffle(words)
    return " ".join(words)


def write_reviews_csv(path: str, rows: int, seed: int = 0, labels: tuple[str, str] = ("neg", "pos")) -> str:
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(rows):
            positive = index % 2 == 0
            writer.writerow([review(rng, positive), labels[int(positive)]])
    return path


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_templated_corpus(path: str, lines: int = 120, seed: int = 0) -> str:
    """Templated review lines: most tokens are predictable from context, so a few epochs visibly lower an LM loss."""
    rng = random.Random(seed)
    templates = ("the film was {} and {} .", "this movie is so {} , really {} !")
    text = [
        " ".join(rng.choice(templates).format(*rng.sample(POSITIVE if i % 2 else NEGATIVE, 2)) for _ in range(2))
        for i in range(lines)
    ]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(text) + "\n")
    return path


def launch_two_processes(recipe_file: str, args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` a recipe (a file in recipes/, or any script's path) with the shipped 2-process CPU config,
    as a user would; fails on non-zero exit."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(REPO, "accelerate_configs", "cpu_ddp.yaml"),
        "--main_process_port",
        "0",
        os.path.join(REPO, "recipes", recipe_file),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# -- tiny decoders: a word-level tokenizer with EOS and no pad token (as GPT-2 and Llama ship), GPT-2, Llama ----------
DECODER_WORDS = [word for word in WORDS if not word.startswith("##")]


def build_decoder_tokenizer(llama_style: bool = False):
    """A fast word-level tokenizer without a pad token. GPT-2 style: one <|endoftext|> token for BOS/EOS/UNK, nothing
    added to a text. Llama style: <unk>, <s>, </s>, and <s> put before every text (add_bos_token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] if llama_style else ["<|endoftext|>"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + DECODER_WORDS)}, unk_token=specials[0]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if llama_style:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
        names = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    else:
        names = dict.fromkeys(("unk_token", "bos_token", "eos_token"), "<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=64, **names)


def save_tiny_decoder(directory: str, kind: str = "gpt2", seed: int = 0) -> str:
    """A tiny GPT2LMHeadModel or LlamaForCausalLM + its tokenizer in `directory`, no pad token in either (as shipped);
    loads as CausalLM or (new `score` head) SequenceClassification."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_decoder_tokenizer(llama_style=kind == "llama")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            **ids,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
        )
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            **ids,
        )  # grouped-query attention, untied LM head: the Llama layout
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"kind must be gpt2 or llama, got {kind!r}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
