"""Loading tokenizers and models, with the settings every recipe needs and the checks that save a wasted run."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from transferkit.arguments import ModelArguments
from transferkit.errors import TransferKitError
from transferkit.labels import LabelSpec

logger = logging.getLogger(__name__)
DEFAULT_MAX_SEQ_LENGTH = 512


def _hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "revision": model_args.model_revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }


def _weight_kwargs(model_args: ModelArguments) -> dict:
    """dtype and attention kernel, only when set: transformers' own defaults otherwise."""
    chosen = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation}
    return {key: value for key, value in chosen.items() if value is not None}


def _not_found(what: str, name: str, err: Exception) -> TransferKitError:
    option = "tokenizer_name or model_name_or_path" if what == "tokenizer" else "model_name_or_path"
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1:  # a path, not a Hub id
        if not os.path.isdir(os.path.expanduser(name)):  # else transformers calls it an invalid repo id
            return TransferKitError(f"Could not load the {what} '{name}': no such folder. Check {option}.")
    return TransferKitError(
        f"Could not load the {what} '{name}': {str(err).rstrip('.')}. Check {option} (a local folder or a Hub "
        "id); offline, the model must be in the Hugging Face cache (HF_HUB_OFFLINE=1)."
    )


def load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    name = model_args.tokenizer_name or model_args.model_name_or_path
    try:
        return AutoTokenizer.from_pretrained(name, **_hub_kwargs(model_args))
    except (OSError, ValueError) as err:
        raise _not_found("tokenizer", name, err) from None


def load_config(model_args: ModelArguments, **overrides) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **_hub_kwargs(model_args), **overrides)
    except (OSError, ValueError) as err:
        raise _not_found("model config", model_args.model_name_or_path, err) from None


def load_pretrained(
    auto_class, model_args: ModelArguments, config: PretrainedConfig, without_weights: bool = False, **load_kwargs
) -> PreTrainedModel:
    """`auto_class.from_pretrained`, safetensors only unless pickled weights are explicitly allowed; `load_kwargs`
    go to `from_pretrained` as they are (QLoRA's quantization_config and device_map).

    The weights the checkpoint lacked (a new head) are kept in `model.transferkit_missing_keys`.
    `without_weights` (preprocess_only: a CPU node preparing data for a GPU launch) builds the model's layers on
    the meta device from its config: its embedding table's size and config are checked, no weight is read.
    """
    if without_weights:
        return _without_weights(auto_class, model_args, config)
    try:
        model, info = auto_class.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            use_safetensors=None if model_args.allow_pickle_weights else True,
            output_loading_info=True,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **_weight_kwargs(model_args),
            **_hub_kwargs(model_args),
            **load_kwargs,
        )
    except (OSError, ValueError) as err:
        hint = (
            ""
            if model_args.allow_pickle_weights
            else " Only safetensors weights are loaded by default; set allow_pickle_weights: true for a trusted .bin."
        )
        raise TransferKitError(f"Could not load the model '{model_args.model_name_or_path}': {err}.{hint}") from None
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        raise TransferKitError(
            f"'{model_args.model_name_or_path}' has weights whose shapes do not match this run's model (a head "
            "finetuned on other labels?): set ignore_mismatched_sizes: true to build those layers anew."
        ) from None
    model.transferkit_missing_keys = list(info.get("missing_keys", []))
    # Saved with the config, so the next stage's model card can tell base -> adapted -> finetuned.
    lineage = list(getattr(model.config, "transferkit_lineage", None) or [])
    model.config.transferkit_lineage = lineage + [model_args.model_name_or_path]
    return model


def _without_weights(auto_class, model_args: ModelArguments, config: PretrainedConfig) -> PreTrainedModel:
    """The model's layers on the meta device: shapes and config, no memory, no weight file read."""
    remote_code = {"trust_remote_code": model_args.trust_remote_code}
    if model_args.trust_remote_code and model_args.model_revision:  # the model's code at the revision asked for
        remote_code["code_revision"] = model_args.model_revision
    try:
        with torch.device("meta"):
            model = auto_class.from_config(config, **remote_code)
    except (OSError, ValueError) as err:  # no such head for this architecture, remote code not found, ...
        raise TransferKitError(f"Could not build the model '{model_args.model_name_or_path}': {err}") from None
    model.transferkit_missing_keys = []
    return model


def mark_loss_as_per_batch_mean(model: PreTrainedModel) -> None:
    """Tell Trainer that this model's loss is a mean over its own micro-batch and ignores `num_items_in_batch`.

    Trainer takes a forward with `**kwargs` (BERT's, for attention options) to mean that the loss divides by the
    count of items in the whole accumulated batch, and then no longer averages over accumulation steps or ranks:
    a BERT loss would grow with `gradient_accumulation_steps` and the world size. Set only for masked-LM and
    classification heads; causal LMs route `num_items_in_batch` into transformers' `ForCausalLMLoss`, whose count
    over all micro-batches and ranks keeps padded batches exact (transformers 4.46's gradient-accumulation fix).
    """
    model.accepts_loss_kwargs = False


def supported_objectives(config: PretrainedConfig) -> list[str]:
    """The continued-pretraining objectives a model type has a head for: "mlm" (encoders), "clm" (decoders).

    BERT-family encoders also have a causal-LM class in transformers (BertLMHeadModel, for encoder-decoder use),
    so a type with both heads counts as an encoder, unless its config says `is_decoder`.
    """
    masked = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if masked and causal:
        return ["clm"] if getattr(config, "is_decoder", False) else ["mlm"]
    return [name for name, has_head in (("mlm", masked), ("clm", causal)) if has_head]


def _objective_error(name: str, config: PretrainedConfig, objective: str, supported: list[str]) -> TransferKitError:
    kind = f"'{name}' is a {config.model_type} model"
    if not supported:
        return TransferKitError(
            f"{kind}, which has neither a masked-LM nor a causal-LM head: continued pretraining needs an encoder "
            "(objective: mlm) or a decoder (objective: clm)."
        )
    if objective == "mlm":
        return TransferKitError(
            f"{kind}, which has no masked-LM head: it supports objective: clm (causal LM), not mlm. Set objective: "
            "clm, or choose an encoder (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ModernBERT, ...) for mlm."
        )
    return TransferKitError(
        f"{kind}, an encoder without a causal-LM head: it supports objective: mlm, not clm. Set objective: mlm, or "
        "choose a decoder (GPT-2, Llama, Qwen, Mistral, ...) for clm."
    )


def load_language_model(model_args: ModelArguments, objective: str = "mlm", **load_kwargs) -> PreTrainedModel:
    """An AutoModelForMaskedLM ("mlm") or AutoModelForCausalLM ("clm"); a model without that head gets one error
    naming the objective it does support, before any weights are loaded.

    A checkpoint without the head (an encoder saved as BertModel, a sentence-embedding model) loads with a new,
    random head: transformers then logs its loading report and, for the tied decoder bias, "This checkpoint seem
    corrupted" (transformers 5). Neither is wrong, but next to each other they read as a broken checkpoint, so
    transformers' records for this load are held and TransferKit says once what is new (`report_new_head`).
    """
    config = load_config(model_args)
    supported = supported_objectives(config)
    if objective not in supported:
        raise _objective_error(model_args.model_name_or_path, config, objective, supported)
    auto_class = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    with held_transformers_logs() as held:
        model = load_pretrained(auto_class, model_args, config, **load_kwargs)
    report_new_head(model, objective, held)
    if objective == "mlm":
        mark_loss_as_per_batch_mean(model)
    return model


class _Held(logging.Handler):
    """Keeps the records it is given, to be dropped or passed on later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_transformers_logs() -> Iterator[list[logging.LogRecord]]:
    """Hold what transformers logs meanwhile (its library logger, "transformers", and its children) instead of
    printing it; the caller passes on what it keeps with `pass_on`. An exception passes everything on.

    transformers logs through one library logger, "transformers" (https://huggingface.co/docs/transformers/
    main_classes/logging), and offers verbosity setters, no capture. Lowering the verbosity would also hide what
    the caller keeps, so the library logger's handlers are swapped for the time of the call (records below its
    level never reach them: the user's verbosity still applies).
    """
    library = logging.getLogger("transformers")  # = transformers.utils.logging.get_logger("transformers")
    handler = _Held()
    saved = library.handlers[:], library.propagate
    library.handlers, library.propagate = [handler], False
    failed = True
    try:
        yield handler.records
        failed = False
    finally:
        library.handlers, library.propagate = saved
        if failed:
            pass_on(handler.records)


def pass_on(records: list[logging.LogRecord]) -> None:
    """Log held records as if they had never been held (the handlers and levels in place now)."""
    for record in records:
        logging.getLogger(record.name).handle(record)


def report_new_head(model: PreTrainedModel, objective: str, held: list[logging.LogRecord]) -> None:
    """One TransferKit warning naming the head weights the checkpoint lacked, instead of transformers' report.

    Only when every missing weight is outside the base model (the head alone is new) are transformers' records
    about those weights dropped; the rest is passed on. Missing encoder weights mean a wrong or broken checkpoint:
    then transformers' whole report stays, with a TransferKit line saying so.
    """
    missing = list(getattr(model, "transferkit_missing_keys", []))
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else None
    head = [key for key in missing if prefix is None or not key.startswith(prefix)]
    if not missing or len(head) < len(missing):
        pass_on(held)
        if missing:
            logger.warning(
                "The checkpoint lacks %d weights of the model body (e.g. %s; transformers' report above): is "
                "model_name_or_path the model meant?",
                len(missing) - len(head),
                next(key for key in missing if key not in head),
            )
        return
    pass_on([record for record in held if not any(key in record.getMessage() for key in head)])
    logger.warning(
        "The checkpoint has no trained %s head: its %d weights (%s) are new, randomly initialised (a "
        "sentence-embedding or bare encoder checkpoint?). Early losses will be high%s.",
        objective.upper(),
        len(head),
        _short_list(sorted(head)),
        "; set head_warmup_steps to train the head alone first" if objective == "mlm" else "",
    )


def _short_list(keys: list[str], shown: int = 6) -> str:
    more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def ensure_pad_token(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, padding_side: str | None = "right"
) -> None:
    """Decoders (GPT-2, Llama, ...) ship without a pad token, yet batches need one, and their classifiers pool the
    last token that is not padding: so pad with EOS and tell the model which id pads.

    Padding goes on the right: GPT-2's learned absolute positions are counted from the first token, pads included,
    so left padding would shift every position of the shorter texts and change their logits. (Rotary positions,
    Llama's, are relative and give the same logits either way; the pooling finds the last real token on both sides.)
    A decoder whose config names another pad id than the tokenizer pads with would pool a padding position: the
    config follows the tokenizer (encoders keep theirs: RoBERTa's position ids are built from it).
    `padding_side=None` leaves the tokenizer's side alone (CLM: its collator pads right by itself, and the saved
    tokenizer keeps the side that batched generation wants).
    """
    if padding_side is not None and tokenizer.padding_side != padding_side:
        logger.info("Padding on the %s (the tokenizer padded on the %s).", padding_side, tokenizer.padding_side)
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise TransferKitError(
                "The tokenizer has neither a pad nor an end-of-sequence token; add a pad token to it first."
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("The tokenizer has no pad token: padding with its EOS token '%s'.", tokenizer.eos_token)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    elif model.config.pad_token_id != tokenizer.pad_token_id and supported_objectives(model.config) == ["clm"]:
        logger.warning(
            "The model config's pad_token_id %s is not the tokenizer's pad token id %s: using the tokenizer's, so "
            "the classifier reads the last real token of each text.",
            model.config.pad_token_id,
            tokenizer.pad_token_id,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)  # saved next to a causal LM; Trainer warns on a mismatch
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def check_tokenizer_fits(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, model_args: ModelArguments
) -> None:
    """A token id past the embedding table fails only when a batch holds it (an IndexError on CPU, a device-side
    assert on GPU), minutes or hours in: so compare the tokenizer's ids with the table's rows at load time."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None) or getattr(model.config, "vocab_size", None)
    ids = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    if rows is not None and ids > rows:
        name = model_args.tokenizer_name or model_args.model_name_or_path
        raise TransferKitError(
            f"The tokenizer '{name}' has {ids} token ids but the model '{model_args.model_name_or_path}' has "
            f"embeddings for {rows}: ids {rows} and above would crash training. Use the tokenizer the model was "
            "trained with (leave tokenizer_name unset), or a model trained with this tokenizer."
        )


def load_classifier(model_args: ModelArguments, spec: LabelSpec, **load_kwargs) -> PreTrainedModel:
    config = load_config(
        model_args,
        num_labels=spec.num_labels,
        id2label=spec.id2label,
        label2id=spec.label2id,
        problem_type=spec.problem_type,
    )
    model = load_pretrained(AutoModelForSequenceClassification, model_args, config, **load_kwargs)
    mark_loss_as_per_batch_mean(model)  # one item per example: a mean over each micro-batch is exact
    return model


def model_length_limit(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> int:
    """The longest input the model takes: the tokenizer's limit and the position table, whichever is smaller."""
    limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
    sane = [value for value in limits if value and value < 1_000_000]  # a tokenizer without a limit says ~1e30
    return min(sane) if sane else DEFAULT_MAX_SEQ_LENGTH


def resolve_max_seq_length(requested: int | None, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> int:
    """The truncation length: the request if the model can take it, else a clear error; default the model's limit."""
    limit = model_length_limit(tokenizer, config)
    if requested is None:
        return min(limit, DEFAULT_MAX_SEQ_LENGTH)
    if requested > limit:
        raise TransferKitError(
            f"max_seq_length {requested} is above what the model takes ({limit} tokens). "
            f"Set max_seq_length to {limit} or less."
        )
    return requested
