"""Loading tokenizers and models, with the settings every recipe needs and the checks that save a wasted run."""

from __future__ import annotations

import logging

from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

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


def _not_found(what: str, name: str, err: Exception) -> TransferKitError:
    return TransferKitError(
        f"Could not load the {what} '{name}': {err}. Check model_name_or_path (a local folder or a Hub id); "
        "offline, the model must be in the Hugging Face cache (HF_HUB_OFFLINE=1)."
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


def load_pretrained(auto_class, model_args: ModelArguments, config: PretrainedConfig) -> PreTrainedModel:
    """`auto_class.from_pretrained`, safetensors only unless pickled weights are explicitly allowed.

    The weights the checkpoint lacked (a new head) are kept in `model.transferkit_missing_keys`.
    """
    try:
        model, info = auto_class.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            use_safetensors=None if model_args.allow_pickle_weights else True,
            output_loading_info=True,
            **_hub_kwargs(model_args),
        )
    except (OSError, ValueError) as err:
        hint = (
            ""
            if model_args.allow_pickle_weights
            else " Only safetensors weights are loaded by default; set allow_pickle_weights: true for a trusted .bin."
        )
        raise TransferKitError(f"Could not load the model '{model_args.model_name_or_path}': {err}.{hint}") from None
    model.transferkit_missing_keys = list(info.get("missing_keys", []))
    # Saved with the config, so the next stage's model card can tell base -> adapted -> finetuned.
    lineage = list(getattr(model.config, "transferkit_lineage", None) or [])
    model.config.transferkit_lineage = lineage + [model_args.model_name_or_path]
    # The loss-scaling trap (facts.md): BERT-family forwards take **kwargs, so Trainer would assume the model
    # divides its loss by num_items_in_batch, and it does not: losses scale with accumulation steps and ranks.
    model.accepts_loss_kwargs = False
    return model


def load_masked_lm(model_args: ModelArguments) -> PreTrainedModel:
    """An AutoModelForMaskedLM; a decoder-only model gets an error that says MLM needs an encoder."""
    config = load_config(model_args)
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise TransferKitError(
            f"'{model_args.model_name_or_path}' is a {config.model_type} model, which has no masked-LM head: "
            "MLM pretraining needs an encoder (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ModernBERT, ...)."
        )
    model = load_pretrained(AutoModelForMaskedLM, model_args, config)
    if model.transferkit_missing_keys:
        logger.warning(
            "The checkpoint has no trained MLM head (%d weights newly initialised, e.g. %s): a sentence-embedding "
            "model? Early losses will be high; set head_warmup_steps to train the head alone first.",
            len(model.transferkit_missing_keys),
            model.transferkit_missing_keys[0],
        )
    return model


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Decoders (GPT-2, Llama, ...) ship without a pad token, yet batches need one, and their classifiers pool the
    last token that is not padding: so pad with EOS and tell the model which id pads.

    Padding goes on the right: GPT-2's learned positions and Llama's rotary ones are counted from the first token,
    pads included, so left padding would shift every position of the shorter texts and change their logits.
    """
    if tokenizer.padding_side != "right":
        logger.info("Padding on the right for classification (the tokenizer padded on the %s).", tokenizer.padding_side)
        tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise TransferKitError(
                "The tokenizer has neither a pad nor an end-of-sequence token; add a pad token to it first."
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("The tokenizer has no pad token: padding with its EOS token '%s'.", tokenizer.eos_token)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_classifier(model_args: ModelArguments, spec: LabelSpec) -> PreTrainedModel:
    config = load_config(
        model_args,
        num_labels=spec.num_labels,
        id2label=spec.id2label,
        label2id=spec.label2id,
        problem_type=spec.problem_type,
    )
    return load_pretrained(AutoModelForSequenceClassification, model_args, config)


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
