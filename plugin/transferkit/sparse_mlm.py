"""Compute the masked-language-model head only where there is something to predict.

During MLM training only about 15% of the positions carry a label (``labels != -100``), yet a stock
``*ForMaskedLM.forward`` runs the prediction head (a hidden-size transform, then the vocabulary projection,
then cross-entropy) at every position. For a small encoder the ``[B, L, H] x [H, V]`` projection and its
backward are a large share of the step, so running the head on the ``M`` masked rows only
(``[M, H] -> [M, V]``) saves roughly half the FLOPs of a MiniLM-sized model. ModernBERT ships the same idea
as ``sparse_prediction``.

What :func:`enable_sparse_mlm_head` changes, and only this:

* It sets ``model.forward`` on the *instance* (a ``types.MethodType``). Wrappers that call
  ``module.forward`` or ``module(...)`` (DDP, FSDP, DeepSpeed, PEFT) therefore still go through it and their
  hooks and gradient sync see every parameter. No module, parameter, buffer, config field or state-dict key
  changes, so ``save_pretrained`` writes a standard ``AutoModelForMaskedLM`` checkpoint and loading it gives
  the dense model.
* With ``labels`` the patched forward returns a :class:`~transformers.modeling_outputs.MaskedLMOutput` whose
  ``loss`` equals the dense loss (mean cross-entropy over the masked tokens) and whose ``logits`` is **not** a
  float ``[B, L, V]`` tensor but a LongTensor ``[B, L]``: the argmax token id at masked positions and ``-100``
  elsewhere. Evaluation thus never materialises ``[N, L, V]``; :func:`preprocess_logits_for_metrics` and
  :func:`masked_token_accuracy` understand both this form and dense logits.
* Without ``labels`` (inference, fill-mask pipelines) it calls the class's own forward: dense logits as usual.

Limitation: ``torch.nn.DataParallel`` (one process, several GPUs) copies module ``__dict__`` entries into its
replicas, so an instance-level forward would stay bound to the original module there. Use DDP (``torchrun`` /
``accelerate launch``) instead, as Trainer does for any multi-GPU run that is launched per process.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a position without a prediction target (the convention of transformers' collators)."""
COMPILED_ROW_BUCKET = 32
"""Under torch.compile the head runs on a multiple of this many rows (see _masked_rows): at most 31 rows of
padding, and at most a few distinct shapes per batch shape (masked counts vary by a few standard deviations)."""

HeadFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Layout:
    """Where an architecture keeps its encoder and how to apply its MLM head to ``[M, H]`` rows.

    The head functions call the head's modules (``module(x)``) rather than reaching for their weights, so that
    forward hooks, PEFT adapters or ``modules_to_save`` copies, and FSDP parameter gathering stay in effect.
    """

    encoder: str
    head: HeadFn
    segments: bool  # the forward takes token_type_ids (so the patched signature offers it to Trainer)
    encoder_takes_kwargs: bool = True  # False: the encoder drops **kwargs, pass only the flags it names


def _bert_head(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.cls(rows)


def _roberta_head(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.lm_head(rows)


def _distilbert_head(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    hidden = model.activation(model.vocab_transform(rows))
    return model.vocab_projector(model.vocab_layer_norm(hidden))


def _deberta_v2_head(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    # transformers 5.x builds `cls` (BERT-like head) for config.legacy=True, the default, and otherwise
    # `lm_predictions`, which projects with the input word embeddings passed in at call time.
    if model.legacy:
        return model.cls(rows)
    return model.lm_predictions(rows, model.deberta.embeddings.word_embeddings)


def _electra_head(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.generator_lm_head(model.generator_predictions(rows))


def _modernbert_head(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    # ModernBERT's own config.sparse_prediction would also skip unmasked rows, but it returns [M, V] logits
    # and is saved into config.json; this path keeps the checkpoint unchanged and the output uniform.
    return model.decoder(model.head(rows))


_ROBERTA = _Layout("roberta", _roberta_head, segments=True)

# Keyed by the transformers class name; a subclass qualifies only if it does not override forward.
_LAYOUTS: dict[str, _Layout] = {
    "BertForMaskedLM": _Layout("bert", _bert_head, segments=True),
    "RobertaForMaskedLM": _ROBERTA,
    "XLMRobertaForMaskedLM": _ROBERTA,
    "CamembertForMaskedLM": _ROBERTA,
    "DistilBertForMaskedLM": _Layout("distilbert", _distilbert_head, segments=False),
    "DebertaV2ForMaskedLM": _Layout("deberta", _deberta_v2_head, segments=True, encoder_takes_kwargs=False),
    "ElectraForMaskedLM": _Layout("electra", _electra_head, segments=True),
    "ModernBertForMaskedLM": _Layout("model", _modernbert_head, segments=False),
}


def _find_layout(model: nn.Module) -> tuple[_Layout | None, str]:
    """Return the model's head layout, or None and the reason the dense head has to stay."""
    for cls in type(model).__mro__:
        layout = _LAYOUTS.get(cls.__name__)
        if layout is None:
            continue
        if type(model).forward is not cls.forward:
            return None, f"{type(model).__name__} overrides {cls.__name__}.forward"
        return layout, ""
    return None, f"no known MLM head layout for {type(model).__name__}"


def _layout_of(model: nn.Module) -> _Layout:
    layout, reason = _find_layout(model)
    if layout is None:  # only reachable if the instance's class was swapped after enabling
        raise TypeError(f"sparse MLM forward bound to an unsupported model: {reason}")
    return layout


def is_sparse_forward(forward: Any) -> bool:
    """Whether `forward` (an instance's own, from its __dict__) is the sparse head's: the dry run counts its cost."""
    return getattr(forward, "__func__", None) in (_forward_with_segments, _forward_without_segments)


def enable_sparse_mlm_head(model: nn.Module) -> bool:
    """Make ``model`` run its MLM head only at labelled positions when it is called with ``labels``.

    Patches the instance's ``forward`` (see the module docstring for exactly what changes). A PEFT model is
    accepted too: its base transformers model is patched, which is the module PEFT calls.

    Returns True when the sparse head is active (also when it already was). Returns False, leaving the model
    unchanged and logging one INFO line that says why and that the dense head is used, when the head layout
    is unknown, when a subclass overrides the known class's forward (its extra logic would be skipped), or
    when something else already set an instance-level forward (replacing it would drop that wrapper).
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if is_sparse_forward(target.__dict__.get("forward")):
        return True
    layout, reason = _find_layout(target)
    if layout is None:
        logger.info("Sparse MLM head not enabled, the dense head is used: %s.", reason)
        return False
    if "forward" in target.__dict__:
        logger.info(
            "Sparse MLM head not enabled, the dense head is used: %s already has an instance-level forward "
            "that this would replace.",
            type(target).__name__,
        )
        return False
    function = _forward_with_segments if layout.segments else _forward_without_segments
    target.forward = types.MethodType(function, target)
    # The sparse loss divides by `num_items_in_batch` when Trainer passes it (_masked_lm_loss): the masked-token
    # count of the whole accumulated batch, over all ranks, so micro-batches with more masks weigh more, exactly.
    target.accepts_loss_kwargs = True
    return True


def _forward_with_segments(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> MaskedLMOutput | tuple:
    """Sparse-head forward for encoders with segment embeddings; the parameter names are what Trainer keeps.

    Arguments after ``attention_mask`` are keyword-only because the stock forwards order them differently.
    """
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "position_ids": position_ids,
        "inputs_embeds": inputs_embeds,
    }
    return _sparse_forward(self, inputs, labels, kwargs)


def _forward_without_segments(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> MaskedLMOutput | tuple:
    """Sparse-head forward for encoders without token_type_ids (DistilBERT, ModernBERT).

    Leaving ``token_type_ids`` out of the signature lets Trainer drop that column, as for the stock model.
    """
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "inputs_embeds": inputs_embeds,
    }
    return _sparse_forward(self, inputs, labels, kwargs)


def _sparse_forward(
    model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None, kwargs: dict[str, Any]
) -> MaskedLMOutput | tuple:
    """Run the encoder, the head on the labelled rows and the loss; without labels, the dense forward."""
    if labels is None:
        return type(model).forward(model, **inputs, **kwargs)
    layout = _layout_of(model)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    return_dict = kwargs.pop("return_dict", None)
    encoded = _encode(model, layout, inputs, kwargs)
    hidden = encoded[0]
    labels = labels.to(hidden.device)
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} for inputs of {tuple(hidden.shape[:-1])}")
    rows, count = _masked_rows(labels, COMPILED_ROW_BUCKET if torch.compiler.is_compiling() else 1)
    logits = layout.head(model, hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows))  # [K, V], K >= M
    targets = labels.reshape(-1).index_select(0, rows)  # IGNORE_INDEX on the rows that only pad to K
    output = MaskedLMOutput(
        loss=_masked_lm_loss(logits, targets, count, num_items_in_batch),
        logits=_scatter_predictions(logits, targets, rows, labels),
        hidden_states=getattr(encoded, "hidden_states", None),
        attentions=getattr(encoded, "attentions", None),
    )
    return output.to_tuple() if return_dict is False else output


def _encode(model: nn.Module, layout: _Layout, inputs: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """Call the bare encoder the way the architecture's own forward does."""
    if not layout.encoder_takes_kwargs:
        flags = ("output_attentions", "output_hidden_states")
        kwargs = {name: kwargs[name] for name in flags if name in kwargs}
    return getattr(model, layout.encoder)(**inputs, **kwargs, return_dict=True)


@torch.compiler.disable
def _masked_rows(labels: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat positions the head runs on, the masked ones first in their order, and how many are masked.

    Eagerly (``bucket`` 1) these are exactly the M masked positions. Under ``torch.compile`` the caller passes
    ``COMPILED_ROW_BUCKET``: M is rounded up to a multiple of it with unmasked positions, whose labels are
    IGNORE_INDEX and so add nothing to the loss; the head's shapes then take a few values instead of one per
    masked count. A boolean-mask index (``hidden[masked]``) has a data-dependent shape, which TorchDynamo cannot
    trace: it breaks the graph at ``aten.nonzero`` and, with static shapes, recompiles for every new count until
    ``torch._dynamo.config.recompile_limit`` sends the frame back to eager
    (https://docs.pytorch.org/docs/stable/torch.compiler_dynamic_shapes.html). Run eagerly (compiler.disable: the
    one graph break left), so that the graph after it sees only the rounded row count, never M itself.
    """
    masked = labels.reshape(-1) != IGNORE_INDEX
    count = masked.sum()
    budget = min(-(-int(count) // bucket) * bucket, masked.numel())
    # A stable sort of "not masked" lists the masked positions first, each in its original order.
    order = torch.argsort(torch.logical_not(masked).to(torch.uint8), stable=True)
    return order[:budget], count


def _masked_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """Cross-entropy over the ``count`` masked tokens: the dense loss, computed on the rows that contribute to it.

    Normally the mean over this batch's masked tokens, as ``CrossEntropyLoss(ignore_index=-100)`` gives for
    the dense model (rows whose target is IGNORE_INDEX, padding under torch.compile, add exactly 0 to the sum).
    When Trainer passes ``num_items_in_batch`` (it does when it believes the model normalises
    its own loss, i.e. ``accepts_loss_kwargs`` is not set to False) the sum is divided by that count instead,
    which is what Trainer then expects under gradient accumulation and DDP. A batch without masked tokens
    gives a zero loss that is still connected to the head (so DDP sees every parameter used) instead of the
    dense model's NaN.
    """
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is not None:
        denominator = torch.as_tensor(num_items_in_batch, device=total.device, dtype=total.dtype)
    else:
        denominator = count.clamp(min=1).to(total.dtype)  # a tensor: a compiled graph must not guard on it
    return total / denominator


def _scatter_predictions(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``[B, L]`` argmax ids at masked positions, -100 elsewhere, so metrics never see ``[B, L, V]``.

    A scatter to ``rows`` (distinct positions) keeps the shapes static; padding rows write the -100 they hold.
    """
    predicted = logits.detach().argmax(dim=-1).to(labels.dtype)
    predicted = torch.where(targets == IGNORE_INDEX, IGNORE_INDEX, predicted)
    return torch.full_like(labels, IGNORE_INDEX).reshape(-1).scatter(0, rows, predicted).view_as(labels)


def preprocess_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """Reduce a batch's model output to ``[B, L]`` predicted ids before Trainer accumulates it.

    Pass as ``Trainer(preprocess_logits_for_metrics=...)``. The sparse forward already returns ``[B, L]`` ids
    and they pass through; dense ``[B, L, V]`` logits (the fallback for unknown architectures) are argmaxed
    here, so evaluation memory stays ``O(N * L)`` either way and one metric function serves both.
    """
    del labels  # part of Trainer's callback signature; the predictions do not depend on it
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.dim() == 3:
        return logits.argmax(dim=-1)
    return logits


def predicted_ids_and_labels(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[N, L]`` predicted ids and labels, from predicted ids (the sparse forward, or
    :func:`preprocess_logits_for_metrics`) or dense ``[N, L, V]`` logits."""
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(axis=-1)
    return predictions, labels


def scored_accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The share of positions whose label is not IGNORE_INDEX that were predicted exactly (NaN when none is)."""
    scored = labels != IGNORE_INDEX
    if not scored.any():
        return {"accuracy": float("nan")}
    return {"accuracy": float((predictions[scored] == labels[scored]).mean())}


def masked_token_accuracy(eval_pred: Any) -> dict[str, float]:
    """Trainer ``compute_metrics``: the share of masked positions (labels != -100) predicted exactly.

    The key is ``accuracy`` (Trainer reports ``eval_accuracy``) because that is the name Trainer's model card
    recognises.
    """
    return scored_accuracy(*predicted_ids_and_labels(eval_pred))
