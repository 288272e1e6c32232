"""Publishing to the Hub, end to end against the local fake Hub in hub_server.py (no network needed).

A tiny BERT classifier (and a LoRA adapter on it) is pushed with the real huggingface_hub client and loaded
back with transformers/peft from the server, so these tests break when a client upgrade changes the calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    PreTrainedTokenizerBase,
    pipeline,
)

from tests.hub_server import (
    HubServer,
    hub_server_fixture,  # noqa: F401 - provides the `hub_server` fixture
    point_clients_at,
)
from tests.tiny import build_tokenizer, tiny_bert_config
from transferkit.errors import TransferKitError
from transferkit.hub import (
    PushError,
    check_push_access,
    push_checkpoint,
    push_main,
    push_output_dir,
    select_files,
)
from transferkit.model_card import build_model_card, write_model_card

TEXTS = ["the movie was great", "a very boring and bad plot", "dull ending !"]
REPO = "tester/tiny-bert"


def _png() -> bytes:
    """A valid 1x1 PNG, so the card has a plot to embed without importing matplotlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")


def _logits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def _digests(folder: Path) -> dict[str, str]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _assert_no_token(token: str, folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        assert not path.is_file() or token.encode() not in path.read_bytes(), f"token leaked into {path}"
    for text in texts:
        assert token not in text


CLASSIFICATION_METRICS = {"eval_accuracy": 0.75, "eval_f1": 0.7, "eval_loss": 0.52, "test_accuracy": 0.72}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished classification run (model, tokenizer, results, plot, card) plus what must not be pushed."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = tiny_bert_config(len(tokenizer), num_labels=2, id2label={0: "rotten", 1: "fresh"},
                              label2id={"rotten": 0, "fresh": 1})  # fmt: skip
    out = tmp_path / "run"
    BertForSequenceClassification(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "all_results.json").write_text(json.dumps({**CLASSIFICATION_METRICS, "train_loss": 0.6}))
    (out / "eval_results.json").write_text(json.dumps({k: v for k, v in CLASSIFICATION_METRICS.items() if "eval" in k}))
    (out / "confusion_matrix.png").write_bytes(_png())
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"optimizer state")
    (out / "runs" / "Nov29").mkdir(parents=True)
    (out / "runs" / "Nov29" / "events.out.tfevents.1").write_bytes(b"tensorboard")
    write_model_card(
        out,
        repo_id=REPO,
        base_model=str(tmp_path / "mlm"),
        task="text-classification",
        datasets=["rotten_tomatoes", str(tmp_path / "reviews.csv")],
        metrics=CLASSIFICATION_METRICS,
        hyperparameters={"learning_rate": 5e-5, "num_train_epochs": 1, "hub_token": "hf_must_not_appear"},
        lineage=["sentence-transformers/all-MiniLM-L6-v2", str(tmp_path / "mlm"), REPO],
        library_name="transformers",
        tags=["sentiment"],
        license="apache-2.0",
    )
    return out


def _local(run: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    model = AutoModelForSequenceClassification.from_pretrained(run).eval()
    return model, AutoTokenizer.from_pretrained(run)


def test_push_then_load_from_hub(hub_server: HubServer, run_dir: Path, caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    url = push_output_dir(run_dir, REPO, backoff_s=0)
    assert url == f"{hub_server.url}/{REPO}"

    pushed = set(hub_server.repos[REPO].files)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert name in pushed
    assert {"all_results.json", "eval_results.json", "confusion_matrix.png"} <= pushed
    assert not [p for p in pushed if p.startswith(("checkpoint-", "runs/"))]

    local_model, tokenizer = _local(run_dir)
    remote = AutoModelForSequenceClassification.from_pretrained(REPO).eval()
    torch.testing.assert_close(_logits(remote, tokenizer), _logits(local_model, tokenizer))

    classify = pipeline("text-classification", model=REPO, top_k=None)
    probs = torch.softmax(_logits(local_model, tokenizer), dim=-1)
    for text_probs, predicted in zip(probs, classify(TEXTS), strict=True):
        scores = {item["label"]: item["score"] for item in predicted}
        assert scores == pytest.approx({"rotten": float(text_probs[0]), "fresh": float(text_probs[1])}, abs=1e-5)

    card = ModelCard.load(REPO)
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {
        ("validation", "accuracy"): 0.75,
        ("validation", "f1"): 0.7,
        ("test", "accuracy"): 0.72,
    }
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "![confusion matrix](confusion_matrix.png)" in card.text
    assert "hf_must_not_appear" not in card.content  # hub_token from the training arguments is dropped

    _assert_no_token(hub_server.token, run_dir, caplog.text, *capsys.readouterr())
    assert all(hub_server.token.encode() not in data for data in hub_server.repos[REPO].files.values())


def test_model_card_metadata_round_trips(tmp_path: Path) -> None:
    (tmp_path / "training_curves.png").write_bytes(_png())
    card = build_model_card(
        tmp_path,
        repo_id="tester/tiny-mlm",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        task="fill-mask",
        datasets=[str(tmp_path / "corpus.txt")],
        metrics={"eval_loss": 2.0, "train_loss": 2.5},
        hyperparameters={"mlm_probability": 0.15, "push_to_hub_token": "hf_secret_value"},
        lineage=None,
        library_name="transformers",
        tags=None,
    )
    parsed = ModelCard(str(card)).data  # the YAML front matter parses back into ModelCardData/EvalResult
    assert [(r.task_type, r.metric_type, r.dataset_split) for r in parsed.eval_results] == [
        ("fill-mask", "perplexity", "validation")
    ]
    assert parsed.eval_results[0].metric_value == pytest.approx(7.389056, rel=1e-6)  # exp(2.0)
    assert parsed.model_name == "tester/tiny-mlm" and parsed.pipeline_tag == "fill-mask"
    assert parsed.datasets is None  # a local file is listed in the body, not in Hub metadata
    assert "transferkit" in parsed.tags and parsed.library_name == "transformers"
    assert "![training curves](training_curves.png)" in card.text
    assert 'pipeline("fill-mask", model="tester/tiny-mlm")' in card.text
    assert "hf_secret_value" not in str(card) and "push_to_hub_token" not in str(card)
    for package in ("torch", "transformers", "transferkit"):
        assert f"- {package} " in card.text

    adapter = build_model_card(
        tmp_path, repo_id=None, base_model="tester/tiny-bert", task="text-classification", datasets=[],
        metrics={"eval_accuracy": 0.5}, hyperparameters={}, lineage=None, library_name="peft", tags=["x"],
    )  # fmt: skip
    assert "AutoPeftModelForSequenceClassification" in adapter.text
    assert ModelCard(str(adapter)).data.base_model == "tester/tiny-bert"
    with pytest.raises(TransferKitError, match="task"):
        build_model_card(tmp_path, repo_id=None, base_model="b", task="ner", datasets=[], metrics={},
                         hyperparameters={}, lineage=None, library_name="peft", tags=None)  # fmt: skip


def test_lora_adapter_round_trip(hub_server: HubServer, run_dir: Path, tmp_path: Path) -> None:
    from peft import AutoPeftModelForSequenceClassification, LoraConfig, TaskType, get_peft_model

    push_output_dir(run_dir, REPO, backoff_s=0)
    torch.manual_seed(1)
    base = AutoModelForSequenceClassification.from_pretrained(REPO)  # so the adapter names its Hub base
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"],
                      modules_to_save=["classifier"], init_lora_weights=False)  # fmt: skip
    model = get_peft_model(base, lora).eval()
    adapter_dir = tmp_path / "lora"
    model.save_pretrained(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    tokenizer.save_pretrained(adapter_dir)
    write_model_card(adapter_dir, repo_id="tester/tiny-lora", base_model=REPO, task="text-classification",
                     datasets=["rotten_tomatoes"], metrics={"eval_accuracy": 0.8, "eval_f1_macro": 0.79},
                     hyperparameters={"r": 4}, lineage=None, library_name="peft", tags=None)  # fmt: skip

    push_output_dir(adapter_dir, "tester/tiny-lora", backoff_s=0)
    assert "adapter_model.safetensors" in hub_server.repos["tester/tiny-lora"].files
    remote = AutoPeftModelForSequenceClassification.from_pretrained("tester/tiny-lora").eval()
    torch.testing.assert_close(_logits(remote, tokenizer), _logits(model, tokenizer))
    card = ModelCard.load("tester/tiny-lora")
    assert card.data.library_name == "peft" and card.data.base_model == REPO
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "f1"}


def test_check_push_access(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert check_push_access("tester/new-model") == "tester"
    assert "tester/new-model" in hub_server.repos  # created before training, like Trainer would
    assert check_push_access("transferkit-org/shared", private=True) == "tester"
    assert hub_server.repos["transferkit-org/shared"].private

    with pytest.raises(TransferKitError, match="rejected") as bad:
        check_push_access("tester/new-model", token="hf_not_a_valid_token")
    assert "hf_not_a_valid_token" not in str(bad.value) and "HF_TOKEN" in str(bad.value)
    with pytest.raises(TransferKitError, match="cannot create or write 'someone-else/model'"):
        check_push_access("someone-else/model")
    with pytest.raises(TransferKitError, match="cannot create or write"):
        check_push_access("tester/new-model", token=hub_server.read_token)

    with pytest.raises(TransferKitError, match="invalid Hub repo id"):
        check_push_access("not a repo id")

    with HubServer() as gone:  # a Hub that is down: connection refused
        point_clients_at(monkeypatch, gone.url, hub_server.token, tmp_path / "gone")
    with pytest.raises(TransferKitError, match="cannot check the token"):
        check_push_access("tester/new-model")

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(TransferKitError, match=r"no Hugging Face token found.*HF_TOKEN.*hf auth login"):
        check_push_access("tester/new-model")


def test_failing_hub_keeps_output_and_names_retry_command(
    hub_server: HubServer, run_dir: Path, caplog, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    monkeypatch.setattr("transferkit.hub.time.sleep", sleeps.append)
    before = _digests(run_dir)
    hub_server.fail_uploads = True
    with pytest.raises(PushError) as failure:
        push_output_dir(run_dir, REPO, retries=2, backoff_s=1.5)
    assert sleeps == [1.5, 3.0]  # exponential backoff between the three attempts
    message = str(failure.value)
    assert f"transferkit push {run_dir} {REPO}" in message and f"intact at {run_dir}" in message
    assert "after 3 attempt(s)" in message and "503" in message
    assert sum(path.endswith("/commit/main") for _, path in hub_server.requests) == 3
    assert _digests(run_dir) == before
    assert REPO not in hub_server.repos or "config.json" not in hub_server.repos[REPO].files

    hub_server.fail_uploads = False
    hub_server.fail_next_uploads = 1  # one more blip: the retry absorbs it
    sleeps.clear()
    assert push_main([str(run_dir), REPO, "--revision", "v1"]) == 0
    assert sleeps == [2.0]
    assert capsys.readouterr().out.strip() == f"{hub_server.url}/{REPO}/tree/v1"
    assert "model.safetensors" in hub_server.repos[REPO].commits[hub_server.repos[REPO].branches["v1"]]
    assert push_main([str(run_dir), REPO]) == 0
    assert "model.safetensors" in hub_server.repos[REPO].files

    assert push_main([str(run_dir / "missing"), REPO]) == 1
    assert capsys.readouterr().err.startswith("error: cannot push")
    _assert_no_token(hub_server.token, run_dir, caplog.text, message, *capsys.readouterr())


def test_files_holding_the_token_are_not_uploaded(hub_server: HubServer, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text(f"HF_TOKEN={hub_server.token}\n")
    push_output_dir(out, "tester/leaky", backoff_s=0)
    assert set(hub_server.repos["tester/leaky"].files) == {".gitattributes", "config.json"}
    assert "not uploading notes.txt" in caplog.text and hub_server.token not in caplog.text


def _checkpoint(folder: Path, step: int, extra: dict[str, bytes] | None = None) -> Path:
    """A Trainer-like checkpoint: model files plus the state only a resumed run needs."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": b"weights %d" % step, "optimizer.pt": b"adam",
             "scheduler.pt": b"lr", "rng_state.pth": b"rng", "trainer_state.json": b'{"global_step": %d}' % step,
             "training_args.bin": b"args", "README.md": b"peft's card", **(extra or {})}  # fmt: skip
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def test_push_checkpoint_strategies(hub_server: HubServer, tmp_path: Path) -> None:
    state = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}
    first = _checkpoint(tmp_path / "a", 1, {"global_step1/shard.pt": b"zero"})
    push_checkpoint(first, "tester/ckpt", strategy="checkpoint")
    second = _checkpoint(tmp_path / "a", 2)
    push_checkpoint(second, "tester/ckpt", strategy="checkpoint")
    files = hub_server.repos["tester/ckpt"].files
    assert files["model.safetensors"] == b"weights 2" and not state & set(files) and "README.md" not in files
    last = {path.removeprefix("last-checkpoint/") for path in files if path.startswith("last-checkpoint/")}
    assert last == state | {"config.json", "model.safetensors", "README.md"}  # the stale shard folder is gone
    assert files["last-checkpoint/trainer_state.json"] == b'{"global_step": 2}'

    push_checkpoint(first, "tester/all", strategy="all_checkpoints")
    push_checkpoint(second, "tester/all", strategy="all_checkpoints", revision="run-1")
    repo = hub_server.repos["tester/all"]
    on_branch = repo.commits[repo.branches["run-1"]]
    assert {"checkpoint-1/optimizer.pt", "checkpoint-1/global_step1/shard.pt", "checkpoint-2/optimizer.pt"} <= set(
        on_branch
    )
    push_checkpoint(second, "tester/every", strategy="every_save")
    assert set(hub_server.repos["tester/every"].files) == {".gitattributes", "config.json", "model.safetensors"}
    with pytest.raises(TransferKitError, match="strategy must be one of"):
        push_checkpoint(second, "tester/every", strategy="end")


def test_merged_folder_is_not_pushed_with_the_adapter(tmp_path: Path) -> None:
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "model.safetensors").write_bytes(b"merged weights")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"adapter")
    assert [p.name for p in select_files(tmp_path)] == ["adapter_model.safetensors"]
    assert [p.name for p in select_files(tmp_path / "merged")] == ["model.safetensors"]


def test_load_by_hub_id_with_a_pinned_revision_then_offline_from_the_cache(
    hub_server: HubServer, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    from transferkit.arguments import ModelArguments
    from transferkit.models import load_config, load_pretrained, load_tokenizer

    push_output_dir(run_dir, REPO, backoff_s=0)
    first = hub_server.repos[REPO].branches["main"]
    changed = AutoModelForSequenceClassification.from_pretrained(run_dir)
    with torch.no_grad():
        changed.classifier.bias += 1.0
    changed.save_pretrained(run_dir)
    push_output_dir(run_dir, REPO, backoff_s=0)  # main moves on; `first` still names the old weights

    def load(revision: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
        args = ModelArguments(model_name_or_path=REPO, model_revision=revision)
        assert args.trust_remote_code is False  # off unless set
        model = load_pretrained(AutoModelForSequenceClassification, args, load_config(args)).eval()
        return model, load_tokenizer(args)

    old, tokenizer = load(first)
    new, _ = load("main")
    torch.testing.assert_close(_logits(new, tokenizer) - _logits(old, tokenizer), torch.ones(len(TEXTS), 2))
    assert old.config.transferkit_lineage == [REPO]

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    seen = len(hub_server.requests)
    cached, _ = load(first)
    torch.testing.assert_close(_logits(cached, tokenizer), _logits(old, tokenizer))
    assert len(hub_server.requests) == seen  # served from the cache alone
    with pytest.raises(TransferKitError, match="never-downloaded'.*couldn't find them in the cached files"):
        load_tokenizer(ModelArguments(model_name_or_path="tester/never-downloaded"))
