#!/bin/bash
# GPU check (not run in CI): the classify recipe under accelerate_configs/fsdp.yaml on every GPU of this machine,
# with a BERT-base-sized model built from a config and generated data, offline (no Hub). Prints throughput, checks
# that FSDP was active and that the FULL_STATE_DICT save gives a loadable model, then runs the same job with DDP
# (multi_gpu.yaml) for comparison.
#
#   bash tests/gpu/check_fsdp.sh                      # from the repository root, transferkit installed
#   NUM_GPUS=4 MAX_STEPS=100 COMPARE_DDP=0 bash tests/gpu/check_fsdp.sh
#
# Knobs: NUM_GPUS (default: nvidia-smi's count), MAX_STEPS (60), BATCH (per GPU, 32), SEQ_LEN (256),
# MODEL_SIZE (base | tiny), ROWS (20000), ACCELERATE_CONFIG (accelerate_configs/fsdp.yaml), COMPARE_DDP (1), WORK_DIR (a tmp dir).
# Plumbing smoke test on a CPU machine:
#   NUM_GPUS=2 MODEL_SIZE=tiny MAX_STEPS=3 SEQ_LEN=64 ROWS=400 COMPARE_DDP=0 \
#       ACCELERATE_CONFIG=accelerate_configs/cpu_ddp.yaml EXPECT_FSDP=0 bash tests/gpu/check_fsdp.sh
set -euo pipefail

NUM_GPUS="${NUM_GPUS:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}"
MAX_STEPS="${MAX_STEPS:-60}"
BATCH="${BATCH:-32}"
SEQ_LEN="${SEQ_LEN:-256}"
MODEL_SIZE="${MODEL_SIZE:-base}"
ROWS="${ROWS:-20000}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-accelerate_configs/fsdp.yaml}"
COMPARE_DDP="${COMPARE_DDP:-1}"
EXPECT_FSDP="${EXPECT_FSDP:-1}"
WORK_DIR="${WORK_DIR:-$(mktemp -d -t transferkit-fsdp-XXXXXX)}"
if [ "$NUM_GPUS" -lt 1 ]; then
    echo "no GPU found (nvidia-smi): run this on a GPU machine, or set NUM_GPUS for a CPU smoke test" >&2
    exit 2
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WORK_DIR SEQ_LEN MODEL_SIZE ROWS
echo "== $NUM_GPUS processes, $ACCELERATE_CONFIG, model $MODEL_SIZE, seq $SEQ_LEN, batch $BATCH/GPU, $MAX_STEPS steps"
echo "== work dir $WORK_DIR"

# 1. A BERT-base-sized classifier checkpoint and a labelled CSV, built locally.
python - <<'EOF'
import csv, os, random
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

work, seq_len = os.environ["WORK_DIR"], int(os.environ["SEQ_LEN"])
words = [f"w{i}" for i in range(2000)]
positive, negative = words[:20], words[20:40]
special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
base = os.environ["MODEL_SIZE"] == "base"
vocab_size = 30522 if base else 2100
vocab = {token: i for i, token in enumerate(special + words + [f"unused{i}" for i in range(vocab_size - 2005)])}
tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512)
size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072) if base else \
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
config = BertConfig(vocab_size=len(vocab), max_position_embeddings=512, **size)
model = BertForMaskedLM(config)
model.save_pretrained(f"{work}/model")
tokenizer.save_pretrained(f"{work}/model")
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocab {len(vocab)}")
rng = random.Random(0)
with open(f"{work}/train.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["text", "label"])
    for row in range(int(os.environ["ROWS"])):
        label = row % 2
        text = [rng.choice(words[40:]) for _ in range(rng.randint(seq_len // 2, seq_len))]
        text[rng.randrange(len(text))] = rng.choice(positive if label else negative)
        writer.writerow([" ".join(text), "pos" if label else "neg"])
EOF

run_classify() {  # $1: accelerate config, $2: output dir
    local start end
    start=$(date +%s)
    accelerate launch --config_file "$1" --num_processes "$NUM_GPUS" --main_process_port 0 \
        -m transferkit.recipes.classify \
        --model_name_or_path "$WORK_DIR/model" --train_file "$WORK_DIR/train.csv" --output_dir "$2" \
        --max_seq_length "$SEQ_LEN" --per_device_train_batch_size "$BATCH" --per_device_eval_batch_size "$BATCH" \
        --max_steps "$MAX_STEPS" --learning_rate 5e-5 --validation_split_percentage 5 \
        --eval_strategy no --save_strategy no --logging_steps 10 --report_to none --disable_tqdm true \
        --train_sampling_strategy random --dataloader_num_workers 2 2>&1 | tee "$2.log"
    end=$(date +%s)
    echo "wall time including start-up: $((end - start)) s"
}

# 2. FSDP must really be active: on a CPU, or without GPUs visible, accelerate silently drops FSDP2 (plain DDP).
cat > "$WORK_DIR/probe.py" <<'EOF'
import os
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
args = TrainingArguments(os.environ["WORK_DIR"] + "/probe", report_to="none", use_cpu=not torch.cuda.is_available())
config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
trainer = Trainer(model=BertForSequenceClassification(config), args=args)
if trainer.args.process_index == 0:
    print(f"probe: distributed_type {trainer.accelerator.distributed_type}, fsdp {trainer.is_fsdp_enabled}")
EOF
accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" --main_process_port 0 \
    "$WORK_DIR/probe.py" > "$WORK_DIR/probe.log" 2>&1
grep "^probe:" "$WORK_DIR/probe.log"
if [ "$EXPECT_FSDP" = 1 ] && ! grep -q "^probe: .*fsdp True" "$WORK_DIR/probe.log"; then
    echo "FAIL: FSDP is not active under $ACCELERATE_CONFIG (see $WORK_DIR/probe.log)" >&2
    exit 1
fi
run_classify "$ACCELERATE_CONFIG" "$WORK_DIR/fsdp"
# fsdp.yaml names no layer class: the recipe fills it from the model (transferkit.distributed.fill_fsdp_layer_classes).
if [ "$EXPECT_FSDP" = 1 ] && ! grep -q "FSDP wraps each BertEmbeddings,BertLayer as one unit" "$WORK_DIR/fsdp.log"; then
    echo "FAIL: the recipe did not name BERT's layer classes for FSDP (see $WORK_DIR/fsdp.log)" >&2
    exit 1
fi

# 3. Throughput, and the saved model: one full (gathered) state dict that loads without FSDP.
report() {  # $1: output dir, $2: label
    python - "$1" "$2" "$NUM_GPUS" "$SEQ_LEN" <<'EOF'
import json, os, sys
from transformers import AutoModelForSequenceClassification
out, label, gpus, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(os.path.join(out, "all_results.json")) as handle:
    results = json.load(handle)
samples = results["train_samples_per_second"]
print(f"{label}: {samples:.1f} samples/s ({samples / gpus:.1f} per GPU, at most ~{samples * seq_len:,.0f} tokens/s), "
      f"train_runtime {results['train_runtime']:.1f} s, eval_loss {results.get('eval_loss', float('nan')):.4f}")
model = AutoModelForSequenceClassification.from_pretrained(out)
print(f"{label}: saved model loads: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
EOF
}
report "$WORK_DIR/fsdp" "FSDP"

if [ "$COMPARE_DDP" = 1 ]; then
    run_classify accelerate_configs/multi_gpu.yaml "$WORK_DIR/ddp"
    report "$WORK_DIR/ddp" "DDP "
fi
echo "OK: outputs and logs in $WORK_DIR"
