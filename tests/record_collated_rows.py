"""Driver for tests/test_mlm.py: the MLM recipe under `accelerate launch`, each process recording the training rows
its own collator receives (token ids, one line each) in <output_dir>.rank<N>.rows."""

from __future__ import annotations

import os
import sys

from transferkit.mlm_data import MLMCollator
from transferkit.recipes import mlm


def recording(call, path: str):
    def collate(self, features):
        if "labels" not in features[0]:  # training rows; evaluation rows come with their fixed masks
            with open(path, "a", encoding="utf-8") as handle:
                handle.writelines(" ".join(map(str, feature["input_ids"])) + "\n" for feature in features)
        return call(self, features)

    return collate


if __name__ == "__main__":
    output_dir = sys.argv[sys.argv.index("--output_dir") + 1]
    path = f"{output_dir}.rank{os.environ.get('RANK', '0')}.rows"
    open(path, "w").close()
    MLMCollator.__call__ = recording(MLMCollator.__call__, path)
    mlm.main(sys.argv[1:])
