"""Multi-label classification: micro and macro F1 over labels, and exact-match (subset) accuracy."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Micro and macro F1 and exact-match accuracy for multi-label classification (multi-hot vectors)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): predicted multi-hot vectors.
    references (list of list of int): gold multi-hot vectors.
Returns:
    f1_micro, f1_macro, accuracy (exact match of the whole vector) (floats).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultiLabelClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        return {
            "f1_micro": float(f1_score(references, predictions, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(references, predictions)),
        }
