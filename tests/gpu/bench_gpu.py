"""GPU benchmark, ready for a GPU machine (not run in CI): BERT-base-sized encoder built from a config (offline),
bf16 autocast, SDPA attention, torch.compile on and off.

Side by side in one run:
  - MLM training steps with the dense head vs the sparse head (head only at masked positions);
  - classification training steps padded to max_seq_length vs padded per batch of similar lengths.
Reports tokens/s (non-padding), samples/s, peak memory and MFU (6 x parameters x tokens/s / peak FLOP/s, plus the
attention term 12 x layers x hidden x seq per token), and writes JSON + Markdown to --out.

    python tests/gpu/bench_gpu.py --steps 30 --out bench_results/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from transferkit.sparse_mlm import enable_sparse_mlm_head

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def peak_flops() -> float | None:
    if os.environ.get("TRANSFERKIT_PEAK_FLOPS"):
        return float(os.environ["TRANSFERKIT_PEAK_FLOPS"])
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


def flops_per_token(config: BertConfig, seq: int, params: int) -> float:
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq


def mlm_batch(batch: int, seq: int, vocab: int, device: str) -> dict:
    ids = torch.randint(5, vocab, (batch, seq), device=device)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(batch, seq, device=device) < 0.15
    labels[masked] = ids[masked]
    ids[masked] = 4
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def cls_batch(batch: int, lengths: torch.Tensor, pad_to: int | None, vocab: int, device: str) -> dict:
    width = pad_to or int(lengths.max())
    ids = torch.randint(5, vocab, (batch, width), device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None].to(device)).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 2, (batch,), device=device)}


def time_steps(model, batches: list[dict], steps: int, warmup: int = 5) -> tuple[float, int]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    tokens = 0
    for index in range(warmup + steps):
        if index == warmup:
            torch.cuda.synchronize()
            started, tokens = time.perf_counter(), 0
        batch = batches[index % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    torch.cuda.synchronize()
    return time.perf_counter() - started, tokens


def run_case(name: str, model, batches, steps: int, config: BertConfig, seq: int) -> dict:
    torch.cuda.reset_peak_memory_stats()
    seconds, tokens = time_steps(model, batches, steps)
    params = sum(p.numel() for p in model.parameters())
    per_second = tokens / seconds
    peak = peak_flops()
    return {
        "case": name,
        "tokens_per_s": round(per_second),
        "samples_per_s": round(steps * batches[0]["input_ids"].shape[0] / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "mfu": round(flops_per_token(config, seq, params) * per_second / peak, 3) if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--out", default="bench_results/gpu")
    args = parser.parse_args()
    device, vocab = "cuda", 30522
    config = BertConfig(vocab_size=vocab, attn_implementation="sdpa")  # BERT-base: 12 x 768, 110M parameters
    results = []
    for compiled in (False, True):
        for sparse in (False, True):
            model = BertForMaskedLM(config).to(device)
            model.accepts_loss_kwargs = False
            if sparse:
                enable_sparse_mlm_head(model)
            model = torch.compile(model, dynamic=True) if compiled else model
            batches = [mlm_batch(args.batch, args.seq, vocab, device) for _ in range(4)]
            name = f"mlm {'sparse' if sparse else 'dense'} head{' compiled' if compiled else ''}"
            results.append(run_case(name, model, batches, args.steps, config, args.seq))
            print(results[-1], flush=True)
    lengths = [torch.randint(8, 64, (args.batch,)).sort().values for _ in range(4)]  # review-like lengths
    for pad_to in (128, None):
        model = BertForSequenceClassification(config).to(device)
        batches = [cls_batch(args.batch, length, pad_to, vocab, device) for length in lengths]
        results.append(
            run_case(
                f"classify {'pad to 128' if pad_to else 'bucketed dynamic padding'}",
                model,
                batches,
                args.steps,
                config,
                64,
            )
        )
        print(results[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as handle:
        json.dump({"device": torch.cuda.get_device_name(), "results": results}, handle, indent=2)
    lines = ["| case | tokens/s | samples/s | peak GiB | MFU |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['case']} | {r['tokens_per_s']} | {r['samples_per_s']} | {r['peak_memory_gib']} | {r['mfu']} |"
        for r in results
    ]
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as handle:
        handle.write(f"GPU: {torch.cuda.get_device_name()}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
