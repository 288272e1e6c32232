#!/bin/bash
# Build .gpu_carry/ (git-ignored) for tests/gpu/acceptance.sh on a GPU machine that cannot download anything: wheels
# of the versions installed here that such a machine lacks (Python 3.12, x86-64), the quickstart model stored in
# bfloat16 (half the bytes; the run loads it as float32) and the quickstart reviews CSV. Run from the repository
# root, in the environment the README's quickstart command set up (it needs PyPI). Stays under 62 MiB so that it
# can travel with the working tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu_carry && mkdir -p .gpu_carry/wheels
PINS=$(python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
      ("transformers", "accelerate", "peft", "datasets", "evaluate", "dill", "multiprocess")))
PY
)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu_carry/wheels $PINS
python - <<'PY'
import shutil
import torch
from transformers import AutoModel, AutoTokenizer
from transferkit.quickstart import packaged_model_dir, prepare_reviews

source = packaged_model_dir()
AutoModel.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(".gpu_carry/minilm")
AutoTokenizer.from_pretrained(source).save_pretrained(".gpu_carry/minilm")
shutil.copy(prepare_reviews(".gpu_carry/reviews.tmp.csv"), ".gpu_carry/rotten_tomatoes.csv")
PY
rm -f .gpu_carry/reviews.tmp.csv
SIZE=$(( $(du -sb .gpu_carry | cut -f1) / 1048576 ))
echo ".gpu_carry: ${SIZE} MiB ($(ls .gpu_carry/wheels | wc -l) wheels)"
[ "$SIZE" -le 62 ] || { echo "too large to carry (limit 62 MiB: the device tool carries 64 MiB with the working tree)" >&2; exit 1; }
