"""The recipes' options, with transformers' example-script names, as dataclasses for HfArgumentParser.

`TrainingArguments` is used as it is; the dataclasses here hold only what the Trainer lacks. Checks that need no
data or model (ranges, combinations) run in `__post_init__`, so a bad config fails before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transferkit.errors import TransferKitError
from transferkit.precision import PRECISIONS
from transferkit.ranges import COUNT, PROBABILITY, at_least, between, check_own_ranges

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def with_help(text: str, **extra) -> dict:
    """dataclass field metadata: the --help text (and `range=`, shown there and checked)."""
    return {"metadata": {"help": text, **extra}}


def comma_separated(names: list[str] | None) -> list[str] | None:
    return names and [name.strip() for item in names for name in item.split(",") if name.strip()]


SEED_RANGE = between(0, 2**32 - 1)  # numpy's seed range, as TrainingArguments' seed


def parse_seeds(items: list[str] | None) -> list[int] | None:
    """`seeds` as integers, from a YAML list, `--seeds 1 2 3` or the comma form `1,2,3`."""
    names = comma_separated([str(item) for item in items or []])
    if not names:
        return None
    try:
        seeds = [int(name) for name in names]
    except ValueError:
        raise TransferKitError(f"seeds takes whole numbers such as 1,2,3, got {names}.") from None
    if any(seed not in SEED_RANGE for seed in seeds):
        raise TransferKitError(f"seeds must each be {SEED_RANGE}, got {seeds}.")
    if len(set(seeds)) < len(seeds):
        raise TransferKitError(f"seeds lists a seed twice ({seeds}): each seed's run would be the same run.")
    return seeds


@dataclass
class ModelArguments:
    model_name_or_path: str = field(**with_help("Hub id or local folder of the pretrained model to start from."))
    model_revision: str = field(default="main", **with_help("Branch, tag or commit of the model on the Hub."))
    tokenizer_name: str | None = field(default=None, **with_help("Tokenizer to use when not the model's own."))
    cache_dir: str | None = field(default=None, **with_help("Where downloaded models and datasets are cached."))
    trust_remote_code: bool = field(
        default=False, **with_help("Run code shipped inside a Hub repo. Off: only enable it for repos you trust.")
    )
    dtype: str | None = field(
        default=None,
        **with_help(
            "Load the weights in this dtype: auto (the checkpoint's), bfloat16, float16 or float32 (the default). "
            "bfloat16 halves the memory of a large model; for mixed precision over float32 weights set bf16 / fp16.",
            choices=["auto", "bfloat16", "float16", "float32"],
        ),
    )
    attn_implementation: str | None = field(
        default=None,
        **with_help(
            "Attention kernel: sdpa, eager, flash_attention_2 (CUDA, flash-attn installed; ModernBERT's unpadded "
            "path) or flex_attention. Default: transformers' choice for the model."
        ),
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        **with_help(
            "Start from a classifier finetuned on other labels: its head, whose size does not match, is built anew."
        ),
    )
    allow_pickle_weights: bool = field(
        default=False,
        **with_help("Also load pickled .bin weights (which can run arbitrary code). By default only safetensors."),
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, **with_help("Dataset id on the Hub (or a local dataset script)."))
    dataset_config_name: str | None = field(default=None, **with_help("Configuration name of the Hub dataset."))
    dataset_revision: str = field(default="main", **with_help("Branch, tag or commit of the Hub dataset."))
    train_file: str | None = field(
        default=None,
        **with_help("Training data: a csv, tsv, json, jsonl, parquet (or txt for MLM) file, folder or glob."),
    )
    validation_file: str | None = field(default=None, **with_help("Validation data, same formats as train_file."))
    test_file: str | None = field(default=None, **with_help("Test data, same formats; predictions are written for it."))
    validation_split_percentage: int = field(
        default=10,
        **with_help(
            "Percent of the training data held out for validation when there is no validation split.",
            range=between(0, 100, high_open=True),
        ),
    )
    test_split_percentage: int = field(
        default=0,
        **with_help(
            "Percent of the training data held out as a test split when there is none (0: none).",
            range=between(0, 100, high_open=True),
        ),
    )
    text_column_names: list[str] | None = field(
        default=None,
        **with_help(
            "One text column, or two encoded as a text pair, separated by spaces or commas (sentence1,sentence2). "
            "Default: 'text', 'sentence1 sentence2' or 'sentence'.",
            # run_classification.py's README writes --text_column_name, an abbreviation argparse took there
            aliases=["--text_column_name"],
        ),
    )
    text_column_delimiter: str | None = field(
        default=None,
        **with_help(
            "Join the text columns into one text with this delimiter (transformers' run_classification.py does, with "
            "any number of columns; escapes such as \\n are read as the character). Unset: one column, or two "
            "encoded as a text pair."
        ),
    )
    label_column_name: str = field(default="label", **with_help("Column holding the labels."))
    remove_splits: list[str] | None = field(
        default=None,
        **with_help(
            "Splits of a Hub dataset not to use, by name or comma-separated (train, validation, test are read)."
        ),
    )
    shuffle_train_dataset: bool = field(
        default=False,
        **with_help("Shuffle the training rows before max_train_samples keeps the first ones: a random subset."),
    )
    shuffle_seed: int = field(default=42, **with_help("Seed of shuffle_train_dataset.", range=between(0, 2**32 - 1)))
    drop_duplicates: bool = field(
        default=False, **with_help("Drop rows whose text repeats an earlier row, before any split is carved.")
    )
    max_seq_length: int | None = field(
        default=None,
        **with_help(
            "Longest input in tokens after truncation. Default: the model's limit, at most 512.", range=at_least(8)
        ),
    )
    pad_to_max_length: bool = field(
        default=False,
        **with_help(
            "Pad every batch to max_seq_length: fixed shapes, for TPUs and compiled graphs. Default: pad each batch "
            "to its longest text, which is faster."
        ),
    )
    max_train_samples: int | None = field(
        default=None,
        **with_help(
            "Keep only this many training examples (documents, before long_text windows cuts them).", range=COUNT
        ),
    )
    max_eval_samples: int | None = field(
        default=None, **with_help("Keep only this many validation examples.", range=COUNT)
    )
    max_test_samples: int | None = field(default=None, **with_help("Keep only this many test examples.", range=COUNT))
    preprocessing_num_workers: int | None = field(
        default=None,
        **with_help(
            "Processes used for tokenization (and clean_text). Default: one per 25,000 rows of a split, up to the "
            "usable CPU cores (at most 8): a split under 50,000 rows is done in one process, where starting workers "
            "would cost more than they save.",
            range=COUNT,
        ),
    )
    overwrite_cache: bool = field(default=False, **with_help("Tokenize again instead of reusing the datasets cache."))
    split_seed: int | None = field(
        default=None,
        **with_help("Seed of the validation/test split carved from train. Default: seed.", range=SEED_RANGE),
    )
    preprocess_only: bool = field(
        default=False,
        **with_help(
            "Load, check, clean and tokenize the data into the datasets cache, say where it is, and exit before "
            "training. Run it once, in one process, before a multi-process or multi-node launch: the training run "
            "(same data, model and preprocessing options) then reads the cache instead of making every process "
            "wait for rank 0 to tokenize within ddp_timeout."
        ),
    )

    def __post_init__(self) -> None:
        check_own_ranges(self)
        if self.dataset_name is None and self.train_file is None:
            raise TransferKitError("No training data: set dataset_name (a Hub dataset) or train_file (local files).")
        if self.validation_split_percentage + self.test_split_percentage >= 100:
            raise TransferKitError("validation_split_percentage + test_split_percentage must stay below 100.")
        # transformers' run_classification.py takes "sentence1,sentence2" and "\n" typed in a shell
        self.text_column_names = comma_separated(self.text_column_names)
        self.remove_splits = comma_separated(self.remove_splits)
        if self.text_column_delimiter is not None:
            escaped = self.text_column_delimiter.encode("latin-1", "backslashreplace")  # keeps non-ASCII as it is
            try:
                self.text_column_delimiter = escaped.decode("unicode_escape")
            except UnicodeDecodeError:
                raise TransferKitError(
                    f"text_column_delimiter {self.text_column_delimiter!r}: a backslash starts an escape such as \\n "
                    "or \\t; write \\\\ for a backslash itself."
                ) from None
        elif self.text_column_names is not None and not 1 <= len(self.text_column_names) <= 2:
            raise TransferKitError(
                f"text_column_names takes one column or two (a text pair), got {self.text_column_names}; to join "
                "more into one text, set text_column_delimiter (e.g. ' ')."
            )


@dataclass
class ClassificationArguments:
    problem_type: str | None = field(
        default=None,
        **with_help(
            f"One of {', '.join(PROBLEM_TYPES)}. Detected from the labels when unset: lists -> "
            "multi-label, floats -> regression, anything else -> single-label."
        ),
    )
    metric_name: str | None = field(
        default=None,
        **with_help(
            "An evaluate metric (local path or name) to use instead of the bundled metrics for the problem type."
        ),
    )
    class_weights: list[str] | None = field(
        default=None,
        **with_help(
            "Weight the loss per class: 'auto' (inverse frequency in train) or one number per label, in label order. "
            "With long_text windows, 'auto' counts the training windows, as the loss does."
        ),
    )
    early_stopping_patience: int | None = field(
        default=None,
        **with_help(
            "Stop after this many evaluations without improvement of metric_for_best_model; keeps the best model.",
            range=COUNT,
        ),
    )
    early_stopping_threshold: float = field(
        default=0.0, **with_help("Smallest change that counts as an improvement.", range=at_least(0))
    )
    head_warmup_steps: int = field(
        default=0,
        **with_help(
            "Train only the new classification head for this many steps, then the whole model (linear probing "
            "then finetuning): the random head does not disturb the pretrained encoder early on. The quickstart "
            "uses one epoch of steps.",
            range=at_least(0),
        ),
    )
    long_text: str = field(
        default="truncate",
        **with_help(
            "How a text longer than max_seq_length is read. truncate: its first tokens. head_tail: its first "
            "head_tokens and its last tokens, as many as fit (Sun et al. 2019: head 128 + tail 382 read IMDb best). "
            "windows: overlapping windows of max_seq_length tokens, window_stride apart; in training each window is "
            "an example with its document's label (an epoch holds more examples than documents); evaluation and "
            "prediction aggregate their logits per document (window_aggregation).",
            choices=["truncate", "head_tail", "windows"],
        ),
    )
    head_tokens: int | None = field(
        default=None,
        **with_help(
            "long_text head_tail: the first tokens kept; the rest of max_seq_length goes to "
            "the text's last tokens. Default: a quarter of the room (128 of 510, as Sun et al.).",
            range=at_least(0),
        ),
    )
    window_stride: int | None = field(
        default=None,
        **with_help(
            "long_text windows: tokens between the starts of two windows (less than a window's text tokens: they "
            "overlap). Default: half a window.",
            range=at_least(1),
        ),
    )
    window_aggregation: str = field(
        default="mean",
        **with_help(
            "long_text windows: a document's logits are the mean or the max of its windows' logits.",
            choices=["mean", "max"],
        ),
    )
    seeds: list[str] | None = field(
        default=None,
        **with_help(
            "Run once per seed (e.g. 1,2,3), each in output_dir/seed-<n>, on the same data split (split_seed), and "
            "write the mean, standard deviation and 95 percent confidence interval of every metric to output_dir "
            "(all_results.json, summary.md). Exclusive with num_seeds."
        ),
    )
    num_seeds: int | None = field(
        default=None,
        **with_help("Run N seeds: seed, seed+1, ..., seed+N-1 (as `seeds` does). Exclusive with seeds.", range=COUNT),
    )

    def __post_init__(self) -> None:
        check_own_ranges(self)
        self.seeds = parse_seeds(self.seeds)
        if self.seeds is not None and self.num_seeds is not None:
            raise TransferKitError(f"seeds ({self.seeds}) and num_seeds ({self.num_seeds}): set one of them.")
        if self.long_text not in ("truncate", "head_tail", "windows"):
            raise TransferKitError(f"long_text must be truncate, head_tail or windows, got {self.long_text!r}.")
        if self.window_aggregation not in ("mean", "max"):
            raise TransferKitError(f"window_aggregation must be mean or max, got {self.window_aggregation!r}.")
        if self.problem_type not in (None, *PROBLEM_TYPES):
            raise TransferKitError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}.")
        if self.class_weights and self.class_weights != ["auto"]:
            try:
                [float(weight) for weight in self.class_weights]
            except ValueError:
                raise TransferKitError(
                    f"class_weights takes 'auto' or one number per label, got {self.class_weights}."
                ) from None


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False,
        **with_help(
            "Start afresh in an output_dir that already holds checkpoints or a finished run (they are replaced)."
        ),
    )
    debug_errors: bool = field(default=False, **with_help("Show full tracebacks for input errors (for bug reports)."))
    dry_run: bool = field(
        default=False,
        **with_help(
            "Check config, data, labels and model, print the plan (examples, tokens, steps, global batch, an "
            "estimated time from a few timed steps) and stop without training."
        ),
    )
    min_free_disk_gb: float = field(
        default=1.0, **with_help("Fail early when output_dir's disk has less free space.", range=at_least(0))
    )
    precision: str | None = field(
        default=None,
        **with_help(
            "Training arithmetic: auto, bf16, fp16 or fp32. auto: bf16 mixed precision where the hardware runs it "
            "fast (a CUDA GPU with native bf16, compute capability 8.0+; a CPU with AMX: AVX-512 BF16 alone trains "
            "slower), fp32 elsewhere; it keeps an accelerate config's mixed_precision and a bf16 / fp16 flag you "
            "set. bf16 on a CPU also sets use_cpu. Unset: bf16 / fp16 and the accelerate config decide, fp32 "
            "otherwise.",
            choices=list(PRECISIONS),
        ),
    )
    preemption_check_steps: int = field(
        default=10,
        **with_help(
            "Under several processes, the ranks agree on a SIGTERM every this many optimizer steps (a host-device "
            "sync on GPUs); the scheduler's grace period must cover these steps plus one checkpoint save.",
            range=at_least(1),
        ),
    )

    def __post_init__(self) -> None:
        check_own_ranges(self)


OBJECTIVES = ("mlm", "clm")
MLM_ONLY = ("mlm_probability", "mask_replace_prob", "random_replace_prob", "whole_word_mask", "head_warmup_steps")


@dataclass
class MLMArguments:
    """Options of recipes/mlm.py: continued pretraining, masked (encoders) or causal (decoders)."""

    objective: str = field(
        default="mlm",
        **with_help(
            "mlm: masked-LM continued pretraining of an encoder (BERT, RoBERTa, ...); clm: causal-LM (next-token) "
            "continued pretraining of a decoder (GPT-2, Llama, Qwen, ...). The masking options apply to mlm only."
        ),
    )
    mlm_probability: float = field(
        default=0.15,
        **with_help(
            "Share of tokens masked in each training sequence.", range=between(0, 1, low_open=True, high_open=True)
        ),
    )
    mask_replace_prob: float = field(
        default=0.8, **with_help("Of the masked tokens, the share replaced by [MASK].", range=PROBABILITY)
    )
    random_replace_prob: float = field(
        default=0.1,
        **with_help(
            "Of the masked tokens, the share replaced by a random token (the rest stay as they are).",
            range=PROBABILITY,
        ),
    )
    whole_word_mask: bool = field(
        default=False, **with_help("Mask all the tokens of a word together (needs a fast tokenizer).")
    )
    line_by_line: bool = field(
        default=False, **with_help("One example per line / row, truncated, instead of packing texts into full chunks.")
    )
    sentence_chunks: bool = field(
        default=False,
        **with_help(
            "Pack whole sentences (NLTK Punkt) so that chunks end at sentence boundaries; needs transferkit[text]."
        ),
    )
    streaming: bool = field(
        default=False,
        **with_help(
            "Stream the corpus instead of loading it, for corpora larger than memory: needs max_steps; the first "
            "max_eval_samples rows (default 1000) are held out in memory for evaluation."
        ),
    )
    sparse_head: bool = field(
        default=True,
        **with_help(
            "Compute the MLM head only at masked positions (same loss, ~2x faster on small encoders); mlm only."
        ),
    )
    head_warmup_steps: int = field(
        default=0,
        **with_help(
            "Train only the MLM head for this many steps first: for checkpoints without one (sentence encoders).",
            range=at_least(0),
        ),
    )

    def __post_init__(self) -> None:
        check_own_ranges(self)
        if self.objective not in OBJECTIVES:
            raise TransferKitError(
                f"objective must be one of {OBJECTIVES} (masked or causal LM), got {self.objective!r}."
            )
        # A decoder reads every token and predicts the next one: masking options would be silently ignored.
        changed = [name for name in MLM_ONLY if getattr(self, name) != self.__dataclass_fields__[name].default]
        if self.objective == "clm" and changed:
            raise TransferKitError(f"{', '.join(changed)} only apply to objective: mlm; remove them for clm.")
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise TransferKitError("mask_replace_prob + random_replace_prob must not exceed 1.")
        if self.line_by_line and self.sentence_chunks:
            raise TransferKitError("line_by_line and sentence_chunks exclude each other: choose one.")
