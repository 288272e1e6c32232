"""Evaluation metrics through `evaluate`, offline: the bundled module for the problem type, or a user's metric.

Trainer hands `compute_metrics` raw logits; turning them into predictions depends on the problem type (argmax,
a sigmoid threshold, or the score itself), so that step lives here next to the metric it feeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import evaluate
import numpy as np
from transformers import EvalPrediction

from transferkit.errors import TransferKitError
from transferkit.labels import MULTI, REGRESSION, SINGLE
from transferkit.metric_modules import module_path

logger = logging.getLogger(__name__)

# metric_for_best_model when early stopping needs one and the user named none: (name, greater_is_better)
BEST_MODEL_METRIC = {SINGLE: ("accuracy", True), MULTI: ("f1_micro", True), REGRESSION: ("mse", False)}


# metric_name values of transformers' run_classification.py that the bundled module already reports (its "f1" on
# multi-label data is the micro average, the bundled f1_micro): computed offline, without fetching them from the Hub.
BUNDLED_NAMES = {SINGLE: ("accuracy",), MULTI: ("f1", "accuracy"), REGRESSION: ("mse",)}


def load_metric(problem_type: str, metric_name: str | None = None) -> evaluate.EvaluationModule:
    """The bundled metric module for `problem_type`, or `metric_name` (a local path or a Hub metric)."""
    if metric_name in BUNDLED_NAMES[problem_type]:
        logger.info("metric_name %s: the bundled %s metrics report it.", metric_name, problem_type)
        metric_name = None
    target = metric_name or module_path(problem_type)
    try:
        # keep_in_memory: no cache files, so several processes computing metrics never share a lock file
        return evaluate.load(target, keep_in_memory=True)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ... for a metric it can't get
        raise TransferKitError(
            f"metric_name: could not load the metric '{metric_name}': {err}. Offline, give the path of a local "
            "evaluate metric module, or leave metric_name unset to use the bundled metrics."
        ) from None


def predictions_from_logits(logits: np.ndarray, problem_type: str) -> np.ndarray:
    if problem_type == REGRESSION:
        return logits.reshape(-1)
    if problem_type == MULTI:
        return (logits > 0).astype(np.int64)  # sigmoid(x) > 0.5
    return logits.argmax(axis=-1)


def probabilities_from_logits(logits: np.ndarray, problem_type: str) -> np.ndarray:
    if problem_type == REGRESSION:
        return logits.reshape(-1, 1)
    if problem_type == MULTI:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def build_compute_metrics(problem_type: str, metric: evaluate.EvaluationModule) -> Callable[[EvalPrediction], dict]:
    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        references = prediction.label_ids
        if problem_type == MULTI:
            references = references.astype(np.int64)
        return metric.compute(predictions=predictions_from_logits(logits, problem_type), references=references)

    return compute_metrics
