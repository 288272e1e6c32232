"""Regression: mean squared error, Pearson and Spearman correlation."""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_squared_error

_DESCRIPTION = "MSE, Pearson r and Spearman rho for regression."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): predicted scores.
    references (list of float): gold scores.
Returns:
    mse, pearsonr, spearmanr (floats; correlations are 0.0 when either side is constant).
"""


def _correlation(function, predictions, references) -> float:
    if len(set(predictions)) < 2 or len(set(references)) < 2:
        return 0.0
    return float(function(references, predictions)[0])


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {
            "mse": float(mean_squared_error(references, predictions)),
            "pearsonr": _correlation(pearsonr, predictions, references),
            "spearmanr": _correlation(spearmanr, predictions, references),
        }
