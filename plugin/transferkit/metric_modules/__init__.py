"""evaluate metric modules shipped with TransferKit, one folder per problem type.

The evaluate wheel ships no metric scripts (they live on the Hub), so `evaluate.load("accuracy")` fails offline.
These modules are loaded by path (`evaluate.load(<folder>)`) and compute the whole set a problem type needs.
"""

import os

MODULES_DIR = os.path.dirname(os.path.abspath(__file__))


def module_path(problem_type: str) -> str:
    return os.path.join(MODULES_DIR, problem_type)
