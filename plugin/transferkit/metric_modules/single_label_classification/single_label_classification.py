"""Single-label classification: accuracy, macro and micro F1, macro precision and recall, Matthews correlation."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

_DESCRIPTION = "Accuracy, F1 (macro, micro), precision and recall (macro) and MCC for single-label classification."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): gold class ids.
Returns:
    accuracy, f1_macro, f1_micro, precision_macro, recall_macro, matthews_correlation (floats).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SingleLabelClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0)),
            "f1_micro": float(f1_score(references, predictions, average="micro", zero_division=0)),
            "precision_macro": float(precision_score(references, predictions, average="macro", zero_division=0)),
            "recall_macro": float(recall_score(references, predictions, average="macro", zero_division=0)),
            "matthews_correlation": float(matthews_corrcoef(references, predictions)),
        }
