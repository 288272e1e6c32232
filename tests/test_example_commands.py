"""Command lines from transformers' example READMEs (examples/pytorch/text-classification/README.md for
run_classification.py, examples/pytorch/language-modeling/README.md for run_mlm.py), run through TransferKit's
recipes as they stand, with only the Hub's model and datasets replaced by local ones of the same shape: a tiny
BERT, and dataset folders laid out like Hub dataset repos (a README.md whose `configs` name the splits' files), which
`load_dataset` reads by path as it would read the repo."""

from __future__ import annotations

import json
import random
import re
import shlex

import pytest

from recipes import classify, mlm
from tests.tiny import NEGATIVE, NEUTRAL, POSITIVE, build_tokenizer, tiny_bert_config

AMAZON_REVIEWS = r"""
dataset="amazon_reviews_multi"
subset="en"
python run_classification.py \
    --model_name_or_path  google-bert/bert-base-uncased \
    --dataset_name ${dataset} \
    --dataset_config_name ${subset} \
    --shuffle_train_dataset \
    --metric_name accuracy \
    --text_column_name "review_title,review_body,product_category" \
    --text_column_delimiter "\n" \
    --label_column_name stars \
    --do_train \
    --do_eval \
    --max_seq_length 512 \
    --per_device_train_batch_size 32 \
    --learning_rate 2e-5 \
    --num_train_epochs 1 \
    --output_dir /tmp/${dataset}_${subset}/
"""

REUTERS = r"""
dataset="reuters21578"
subset="ModApte"
python run_classification.py \
    --model_name_or_path google-bert/bert-base-uncased \
    --dataset_name ${dataset} \
    --dataset_config_name ${subset} \
    --shuffle_train_dataset \
    --remove_splits "unused" \
    --metric_name f1 \
    --text_column_name text \
    --label_column_name topics \
    --do_train \
    --do_eval \
    --max_seq_length 512 \
    --per_device_train_batch_size 32 \
    --learning_rate 2e-5 \
    --num_train_epochs 15 \
    --output_dir /tmp/${dataset}_${subset}/
"""

MLM_WIKITEXT = r"""
python run_mlm.py \
    --model_name_or_path roberta-base \
    --dataset_name wikitext \
    --dataset_config_name wikitext-2-raw-v1 \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 \
    --do_train \
    --do_eval \
    --output_dir /tmp/test-mlm
"""

MLM_FILES = r"""
python run_mlm.py \
    --model_name_or_path roberta-base \
    --train_file path_to_train_file \
    --validation_file path_to_validation_file \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 \
    --do_train \
    --do_eval \
    --output_dir /tmp/test-mlm
"""

# An option the scripts have and TransferKit does not: the run stops at once with one line saying what to use.
NOT_TAKEN = r"""
python run_classification.py \
    --model_name_or_path google-bert/bert-base-uncased \
    --dataset_name imdb \
    --do_regression false \
    --do_train \
    --output_dir /tmp/imdb/
"""

RECIPES = {"run_classification.py": classify, "run_mlm.py": mlm}


def command_to_argv(command: str, replace: dict[str, str]) -> tuple[str, list[str]]:
    """The script and its arguments, as bash would pass them: `name="value"` lines set ${name}; backslash-newlines
    join lines; the Hub ids and paths in `replace` become local ones."""
    variables = dict(re.findall(r'^(\w+)="([^"]*)"$', command, flags=re.MULTILINE))
    line = next(line for line in command.replace("\\\n", " ").splitlines() if line.startswith("python "))
    for name, value in variables.items():
        line = line.replace("${" + name + "}", value)
    words = shlex.split(line)[1:]  # bash keeps "\n" in double quotes as a backslash and an n, and so does shlex
    return words[0], [replace.get(word, word) for word in words[1:]]


@pytest.fixture(scope="module")
def bert_512(tmp_path_factory) -> str:
    """The tiny BERT, taking 512 positions like bert-base (the commands ask for max_seq_length 512)."""
    from transformers import BertForMaskedLM

    directory = str(tmp_path_factory.mktemp("bert-512"))
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 512
    BertForMaskedLM(tiny_bert_config(len(tokenizer), max_position_embeddings=512)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def hub_like_dataset(root, config: str, splits: dict[str, list[dict]]) -> str:
    """A folder laid out like a Hub dataset repo: data files plus a README whose `configs` map splits to them."""
    (root / "data").mkdir(parents=True)
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, rows in splits.items():
        (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        lines += [f"  - split: {split}", f"    path: data/{split}.jsonl"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return str(root)


def sentence(rng: random.Random, positive: bool) -> str:
    return " ".join([rng.choice(NEUTRAL), rng.choice(POSITIVE if positive else NEGATIVE), rng.choice(NEUTRAL)])


def amazon_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "review_title": sentence(rng, i % 2 == 0),
            "review_body": sentence(rng, i % 2 == 0),
            "product_category": rng.choice(["home", "book"]),
            "stars": 1 + (i % 5),
        }
        for i in range(count)
    ]


def reuters_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": sentence(rng, i % 2 == 0), "topics": [["earn"], ["acq", "earn"], []][i % 3]} for i in range(count)]


def finished(output_dir) -> dict:
    assert (output_dir / "run_finished.json").is_file()
    return json.loads((output_dir / "all_results.json").read_text())


def test_run_classification_amazon_reviews_command(bert_512, tmp_path):
    dataset = hub_like_dataset(
        tmp_path / "amazon", "en", {"train": amazon_rows(40, 0), "validation": amazon_rows(10, 1)}
    )
    script, argv = command_to_argv(
        AMAZON_REVIEWS, {"google-bert/bert-base-uncased": bert_512, "amazon_reviews_multi": dataset}
    )
    output_dir = tmp_path / "out"
    argv[argv.index("--output_dir") + 1] = str(output_dir)  # was /tmp/amazon_reviews_multi_en/
    RECIPES[script].main(argv)
    results = finished(output_dir)
    assert "eval_accuracy" in results and not any(key.startswith("test_") for key in results)  # no --do_predict


def test_run_classification_reuters_command(bert_512, tmp_path):
    splits = {"train": reuters_rows(40, 0), "test": reuters_rows(9, 1), "unused": [{"text": "x", "topics": ["unseen"]}]}
    dataset = hub_like_dataset(tmp_path / "reuters", "ModApte", splits)
    script, argv = command_to_argv(REUTERS, {"google-bert/bert-base-uncased": bert_512, "reuters21578": dataset})
    output_dir = tmp_path / "out"
    argv[argv.index("--output_dir") + 1] = str(output_dir)  # was /tmp/reuters21578_ModApte/
    RECIPES[script].main(argv)
    results = finished(output_dir)
    assert "eval_f1_micro" in results  # multi-label; validation carved from train (the dataset has none)


SIZES = {"train": 1200, "validation": 300}


@pytest.mark.parametrize("command", [MLM_WIKITEXT, MLM_FILES], ids=["hub", "files"])
def test_run_mlm_commands(bert_512, tmp_path, command):
    rng = random.Random(0)
    # enough text for several 512-token chunks (max_seq_length is the model's 512, as with roberta-base)
    lines = {split: [{"text": sentence(rng, i % 2 == 0)} for i in range(size)] for split, size in SIZES.items()}
    dataset = hub_like_dataset(tmp_path / "wikitext", "wikitext-2-raw-v1", lines)
    script, argv = command_to_argv(
        command,
        {
            "roberta-base": bert_512,
            "wikitext": dataset,
            "path_to_train_file": f"{dataset}/data/train.jsonl",
            "path_to_validation_file": f"{dataset}/data/validation.jsonl",
            "/tmp/test-mlm": str(tmp_path / "out"),
        },
    )
    RECIPES[script].main(argv)
    results = finished(tmp_path / "out")
    assert results["eval_loss"] > 0 and "eval_perplexity" in results


def test_an_option_transferkit_does_not_take_stops_with_one_line(bert_512, capsys):
    from transferkit.errors import TransferKitError

    script, argv = command_to_argv(NOT_TAKEN, {"google-bert/bert-base-uncased": bert_512})
    with pytest.raises(TransferKitError) as caught:
        RECIPES[script].main(argv)
    assert str(caught.value) == (
        "command line: 'do_regression' is an option of transformers' example scripts, not of TransferKit: set "
        "problem_type: regression (it is detected from float labels when unset)."
    )


# The fields of run_classification.py's and run_mlm.py's ModelArguments and DataTrainingArguments (transformers
# 4.57's examples; run_mlm's older torch_dtype, low_cpu_mem_usage and use_auth_token too).
EXAMPLE_SCRIPT_OPTIONS = """
model_name_or_path config_name tokenizer_name cache_dir use_fast_tokenizer model_revision token trust_remote_code
ignore_mismatched_sizes dataset_name dataset_config_name do_regression text_column_names text_column_delimiter
train_split_name validation_split_name test_split_name remove_splits remove_columns label_column_name max_seq_length
preprocessing_num_workers overwrite_cache pad_to_max_length shuffle_train_dataset shuffle_seed max_train_samples
max_eval_samples max_predict_samples metric_name train_file validation_file test_file
model_type config_overrides dtype torch_dtype low_cpu_mem_usage use_auth_token validation_split_percentage
mlm_probability line_by_line streaming
""".split()


@pytest.mark.parametrize("recipe", [classify, mlm])
def test_every_example_script_option_is_taken_or_has_its_line(recipe):
    from transferkit.config import build_parser
    from transferkit.example_scripts import NOT_TAKEN

    taken = {action.dest for action in build_parser(recipe.ARGUMENT_TYPES)._actions}
    classification_only = {"ignore_mismatched_sizes", "metric_name", "label_column_name", "test_file"}
    mlm_only = {"mlm_probability", "line_by_line", "streaming"}
    expected = set(EXAMPLE_SCRIPT_OPTIONS) - (classification_only if recipe is mlm else mlm_only)
    assert not taken & set(NOT_TAKEN), "an option is both taken and refused"
    assert expected <= taken | set(NOT_TAKEN), sorted(expected - taken - set(NOT_TAKEN))
