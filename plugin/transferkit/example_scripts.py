"""Options of transformers' example scripts (examples/pytorch/text-classification/run_classification.py and
examples/pytorch/language-modeling/run_mlm.py) that TransferKit does not take, each with what to do instead.

Every other option of those scripts is a TransferKit option with the same meaning (README: "Coming from
run_classification.py or run_mlm.py"), so a copied command line either runs or stops at its first such option with
this one line, before anything is loaded.
"""

from __future__ import annotations

NOT_TAKEN: dict[str, str] = {
    "config_name": "the model's own config is used; to change it, save a copy of the model with the new config "
    "and give that folder as model_name_or_path.",
    "config_overrides": "TransferKit continues the pretraining of a pretrained model and does not train one from "
    "scratch; give model_name_or_path.",
    "model_type": "TransferKit continues the pretraining of a pretrained model and does not train one from scratch; "
    "give model_name_or_path.",
    "token": "a token on the command line ends up in logs and shell history: log in with `hf auth login` or set "
    "HF_TOKEN.",
    "use_auth_token": "log in with `hf auth login` or set HF_TOKEN.",
    "use_fast_tokenizer": "the fast tokenizer is always used when the model has one; remove the option.",
    "torch_dtype": "the option is named dtype here (as in transformers 5).",
    "low_cpu_mem_usage": "transformers 5 always loads weights without a second copy; remove the option.",
    "do_regression": "set problem_type: regression (it is detected from float labels when unset).",
    "train_split_name": "a Hub dataset's splits named train, validation and test are used; for local files give "
    "train_file / validation_file / test_file.",
    "validation_split_name": "a Hub dataset's split named validation is used, else one is carved from train "
    "(validation_split_percentage); or give validation_file.",
    "test_split_name": "a Hub dataset's split named test is predicted; or give test_file.",
    "remove_columns": "only the text and label columns are read, others are left alone; remove the option.",
    "max_predict_samples": "the option is named max_test_samples here.",
}


def not_taken_message(key: str, source: str) -> str | None:
    """One line for an example-script option that TransferKit does not take, or None for any other key."""
    advice = NOT_TAKEN.get(key)
    return advice and f"{source}: '{key}' is an option of transformers' example scripts, not of TransferKit: {advice}"
