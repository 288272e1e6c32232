"""Publish a finished run to the Hugging Face Hub: model card, early access check, resilient push.

Why not Trainer's `push_to_hub=True`: it creates the repo inside `Trainer.__init__`, its card leaves MLM
perplexity out of `model-index`, and a push that fails after hours of training should leave the run intact
and say exactly how to retry. The token is never written to a file, a log line or the card.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, get_token, validate_repo_id

from transferkit import __version__
from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

TASKS = ("text-classification", "fill-mask", "text-generation")
LM_TASKS = ("fill-mask", "text-generation")  # MLM / CLM continued pretraining: perplexity is the metric
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "matthews_correlation")
SPLIT_PREFIXES = {"eval_": "validation", "test_": "test", "predict_": "test"}
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
SKIPPED_DIRS = re.compile(r"^(checkpoint-[^/]*|runs|\..*|__pycache__)$")
MERGED_DIR = "merged"  # a LoRA run's merged model: published to its own repo, never inside the adapter's
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
# What only a resumed run needs: kept out of the repo root, uploaded with the checkpoint folder itself.
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|"
                            r"training_args\.bin|latest|zero_to_fp32\.py|README\.md)$")  # fmt: skip
TOKEN_SCAN_LIMIT = 50 * 2**20  # weights can't usefully hold a token; small text/pickles can
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_LOCAL_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".tsv", ".parquet", ".arrow")
NO_TOKEN_HELP = "set HF_TOKEN to a write token or run `hf auth login`"
try:  # huggingface_hub 2.x talks through httpx2; 1.x through httpx
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError as _TransportError  # type: ignore[no-redef]
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (_TransportError,)


class PushError(TransferKitError):
    """The upload failed; the message says the local output is intact and gives the command to retry."""


# -- model card ----------------------------------------------------------------------------------------------
def _looks_like_hub_id(name: str) -> bool:
    """Local paths and data files must not go into `base_model`/`datasets` metadata: the Hub rejects them."""
    return bool(_HUB_ID.match(name)) and not name.endswith(_LOCAL_SUFFIXES) and not Path(name).exists()


def _split_metric(key: str) -> tuple[str | None, str]:
    for prefix, split in SPLIT_PREFIXES.items():
        if key.startswith(prefix):
            return split, key[len(prefix) :]
    return None, key


def _with_perplexity(metrics: dict[str, float]) -> dict[str, float]:
    """MLM runs report eval loss; perplexity (exp loss) is what readers compare, so derive it when missing."""
    out = dict(metrics)
    for prefix in SPLIT_PREFIXES:
        loss = metrics.get(f"{prefix}loss")
        if loss is not None and f"{prefix}perplexity" not in out and loss < 700:
            out[f"{prefix}perplexity"] = math.exp(loss)
    return out


def _eval_results(task: str, metrics: dict[str, float], datasets: list[str]) -> list[EvalResult]:
    wanted = ("perplexity",) if task in LM_TASKS else CLASSIFICATION_METRICS
    dataset = datasets[0] if datasets else "custom"
    dataset_type = dataset if _looks_like_hub_id(dataset) else "custom"
    results = []
    for key, value in sorted(metrics.items()):
        split, name = _split_metric(key)
        metric_type = next((w for w in wanted if name == w or name.startswith(w + "_")), None)
        if metric_type is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset_type,
                dataset_name=dataset if dataset_type != "custom" else Path(dataset).name or dataset,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=key.replace("_", " ").title().replace("Eval ", "Validation "),
                metric_value=float(value),
            )
        )
    return results


def _framework_versions() -> dict[str, str]:
    versions = {"transferkit": __version__}
    for package in ("torch", "transformers", "peft", "datasets", "tokenizers", "huggingface_hub"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _table(rows: dict[str, Any], header: tuple[str, str]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {cell(k)} | {cell(v)} |" for k, v in rows.items()])


def _redact(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Training arguments carry `hub_token`; a card is public, so drop every string-valued *token* entry."""
    secret = get_token()
    return {
        key: value
        for key, value in hyperparameters.items()
        if not ("token" in key.lower() and isinstance(value, str)) and (secret is None or value != secret)
    }


_USAGE = {
    ("peft", "text-classification"): "from peft import AutoPeftModelForSequenceClassification\n"
    "from transformers import AutoTokenizer\n\n"
    'model = AutoPeftModelForSequenceClassification.from_pretrained("{id}"{labels})\n'
    'tokenizer = AutoTokenizer.from_pretrained("{id}")',
    (
        "peft",
        "fill-mask",
    ): "from peft import PeftConfig, PeftModel\nfrom transformers import AutoModelForMaskedLM\n\n"
    'config = PeftConfig.from_pretrained("{id}")\n'
    "base = AutoModelForMaskedLM.from_pretrained(config.base_model_name_or_path)\n"
    'model = PeftModel.from_pretrained(base, "{id}")',
    ("transformers", "text-classification"): "from transformers import pipeline\n\n"
    'classifier = pipeline("text-classification", model="{id}")\n'
    'classifier("A gripping, beautifully shot film.")',
    ("transformers", "fill-mask"): "from transformers import pipeline\n\n"
    'unmasker = pipeline("fill-mask", model="{id}")\n'
    'unmasker(f"The movie was {{unmasker.tokenizer.mask_token}}.")',
    ("peft", "text-generation"): "from peft import AutoPeftModelForCausalLM\n\n"
    'model = AutoPeftModelForCausalLM.from_pretrained("{id}")',
    ("transformers", "text-generation"): "from transformers import pipeline\n\n"
    'generator = pipeline("text-generation", model="{id}")\n'
    'generator("The movie was", max_new_tokens=20)',
}


def _label_kwargs(label_config: dict[str, Any] | None) -> str:
    """`, num_labels=3, id2label={...}` for the adapter snippet: the labels an adapter repo cannot carry itself."""
    return "".join(f", {key}={value!r}" for key, value in (label_config or {}).items() if value is not None)


def build_model_card(
    output_dir: str | Path,
    *,
    repo_id: str | None,
    base_model: str,
    task: str,
    datasets: list[str],
    metrics: dict[str, float],
    hyperparameters: dict[str, Any],
    lineage: list[str] | None = None,
    library_name: str = "transformers",
    tags: list[str] | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    summary: str | None = None,
    label_config: dict[str, Any] | None = None,
) -> ModelCard:
    """A card whose `model-index` holds the metrics (perplexity too) and whose body says how to use it.

    `summary` replaces the opening sentence. `label_config` (num_labels, id2label, ...) goes into an adapter's
    loading snippet: an adapter repo has no config.json, so the base model would otherwise load with 2 labels.
    """
    if (library_name, task) not in _USAGE:
        raise TransferKitError(f"model card: task must be one of {TASKS} and library_name transformers or peft")
    output_dir = Path(output_dir)
    model_name = repo_id or output_dir.name
    lineage = list(lineage or [base_model])
    if len(lineage) > 1 and lineage[-1] in (repo_id, str(output_dir), output_dir.name):
        lineage.pop()  # the card's own model is listed as "this model"
    metrics = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}  # speed
    metrics = _with_perplexity(metrics) if task in LM_TASKS else metrics
    hub_bases = [m for m in [base_model, *reversed(lineage)] if m != repo_id and _looks_like_hub_id(m)]
    kind = "LoRA adapter" if library_name == "peft" else "model"
    data = ModelCardData(
        model_name=model_name,
        base_model=hub_bases[0] if hub_bases else None,
        datasets=[d for d in datasets if _looks_like_hub_id(d)] or None,
        license=license,
        library_name=library_name,
        pipeline_tag=task,
        tags=["transferkit", task, *(["peft", "lora"] if library_name == "peft" else []), *(tags or [])],
        eval_results=_eval_results(task, metrics, datasets) or None,
    )
    steps = [f"{i}. `{step}`" for i, step in enumerate(lineage, 1)] + [f"{len(lineage) + 1}. **this {kind}**"]
    plots = [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in sorted(output_dir.glob("*.png"))]
    versions = "\n".join(f"- {name} {version}" for name, version in _framework_versions().items())
    usage = _USAGE[library_name, task].format(id=model_name, labels=_label_kwargs(label_config))
    sections = [
        f"# {model_name}",
        summary or f"A {task} {kind} adapted from `{base_model}` with TransferKit.",
        "## Lineage\n\n" + "\n".join(steps),
        "## Results\n\n" + (_table(metrics, ("Metric", "Value")) if metrics else "No metrics recorded."),
        "## Training data\n\n" + ("\n".join(f"- `{d}`" for d in datasets) or "Not recorded."),
        "## Training hyperparameters\n\n" + _table(_redact(hyperparameters), ("Hyperparameter", "Value")),
        *(["## Plots\n\n" + "\n\n".join(plots)] if plots else []),
        "## How to use\n\n```python\n" + usage + "\n```",
        "## Framework versions\n\n" + versions,
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_model_card(output_dir: str | Path, **kwargs: Any) -> Path:
    """Write README.md into `output_dir` (the Hub shows it as the model page) and return its path."""
    path = Path(output_dir) / "README.md"
    build_model_card(output_dir, **kwargs).save(path)
    return path


# -- access check --------------------------------------------------------------------------------------------
def _resolve_token(repo_id: str, token: str | None) -> str:
    """Validate the repo id and find the token: both mistakes should surface before any network call."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise TransferKitError(f"invalid Hub repo id {repo_id!r}: {err}") from None
    token = token or get_token()
    if not token:
        raise TransferKitError(f"no Hugging Face token found: {NO_TOKEN_HELP}")
    return token


def _reason(err: BaseException, token: str) -> str:
    """The first line of an error, with the token masked in case a server ever echoes it."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__).replace(token, "***")


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def check_push_access(
    repo_id: str, *, token: str | None = None, private: bool = False, revision: str | None = None
) -> str:
    """Before training, prove the token works and can write `repo_id` (creating it); return the user name.

    Pushing is the last step of a long run; finding a missing or read-only token there wastes the run.
    `revision` is accepted for symmetry with `push_output_dir`; its branch is created at push time.
    """
    token = _resolve_token(repo_id, token)
    api = HfApi(token=token)
    try:
        user = api.whoami(token=token)["name"]
    except Exception as err:
        if _status(err) == 401:
            raise TransferKitError(f"the Hugging Face token was rejected by {api.endpoint}: {NO_TOKEN_HELP}") from None
        if not isinstance(err, HfHubHTTPError) and not _is_transient(err):
            raise
        raise TransferKitError(f"cannot check the token with {api.endpoint}: {_reason(err, token)}") from None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.auth_check(repo_id, write=True)
    except Exception as err:
        if not isinstance(err, HfHubHTTPError) and not _is_transient(err):
            raise
        raise TransferKitError(
            f"user {user!r} cannot create or write {repo_id!r} on {api.endpoint} ({_reason(err, token)}); "
            "use a repo in your namespace or in an organization you can write to, and a write token"
        ) from None
    logger.info("Hub access checked: %s can write %s%s", user, repo_id, f" (revision {revision})" if revision else "")
    return user


# -- push ----------------------------------------------------------------------------------------------------
def select_files(output_dir: str | Path, token: str | None = None, skip_dirs: bool = True) -> list[Path]:
    """What to publish: not checkpoints, TensorBoard `runs/`, a LoRA run's `merged/` (it has its own repo), hidden
    files, nor any file holding the token. `skip_dirs=False` keeps every folder (a checkpoint's own content)."""
    root = Path(output_dir)
    chosen = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = path.relative_to(root).parts
        skipped = any(SKIPPED_DIRS.match(part) for part in parts) or parts[0] == MERGED_DIR
        if skip_dirs and skipped:
            continue
        if token and path.stat().st_size <= TOKEN_SCAN_LIMIT and token.encode() in path.read_bytes():
            logger.warning("not uploading %s: it contains the Hugging Face token", path.relative_to(root))
            continue
        chosen.append(path)
    return chosen


def _is_transient(err: BaseException) -> bool:
    """5xx/429/timeouts and dropped connections are worth a retry; 4xx (bad token, no rights) are not."""
    if isinstance(err, HfHubHTTPError):
        return _status(err) is None or _status(err) in TRANSIENT_STATUS
    return isinstance(err, (ConnectionError, TimeoutError, *_TRANSPORT_ERRORS))


def _push_command(output_dir: Path, repo_id: str, private: bool, revision: str | None) -> str:
    words = ["transferkit", "push", str(output_dir), repo_id, *(["--private"] if private else [])]
    return shlex.join(words + (["--revision", revision] if revision else []))


def _open_repo(api: HfApi, repo_id: str, private: bool, revision: str | None) -> str:
    """Create the repo (and the branch) when missing; return the URL a user would open."""
    url = str(api.create_repo(repo_id, private=private, exist_ok=True))
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return f"{url}/tree/{revision}" if revision else url


def _push_once(api: HfApi, root: Path, files: list[Path], repo_id: str, **options: Any) -> str:
    url = _open_repo(api, repo_id, options["private"], options["revision"])
    operations = [CommitOperationAdd(path.relative_to(root).as_posix(), str(path)) for path in files]
    api.create_commit(repo_id, operations, commit_message=options["commit_message"], revision=options["revision"])
    return url


def push_output_dir(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload model trained with TransferKit",
    retries: int = 3,
    backoff_s: float = 2.0,
) -> str:
    """Create the repo if needed, upload the run in one commit, retry transient failures; return the URL."""
    root = Path(output_dir)
    if not root.is_dir():
        raise TransferKitError(f"cannot push {root}: it is not a directory")
    token = _resolve_token(repo_id, token)
    files = select_files(root, token)
    if not files:
        raise TransferKitError(f"cannot push {root}: no files to upload outside checkpoint-*/ and runs/")
    api = HfApi(token=token)
    options = {"private": private, "revision": revision, "commit_message": commit_message}
    for attempt in range(1, max(retries, 0) + 2):
        try:
            url = _push_once(api, root, files, repo_id, **options)
            logger.info("pushed %d files from %s to %s", len(files), root, url)
            return url
        except Exception as err:  # whatever broke, the user needs the retry command, not a bare traceback
            reason = _reason(err, token)
            if not _is_transient(err) or attempt > retries:
                raise PushError(
                    f"pushing {root} to {repo_id} failed after {attempt} attempt(s): {reason}. The local "
                    f"output is intact at {root}; push it later with: "
                    + _push_command(root, repo_id, private, revision)
                ) from err
            delay = backoff_s * 2 ** (attempt - 1)
            logger.warning("push attempt %d failed (%s); retrying in %.1f s", attempt, reason, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def push_checkpoint(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    strategy: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
) -> str:
    """Publish a checkpoint saved during training, in one commit; return the URL. One attempt: the caller decides.

    Every strategy puts the checkpoint's model files (weights or adapter, config, tokenizer) at the repo root, so
    the repo loads as the latest model while training runs. `checkpoint` also uploads the whole checkpoint
    (optimizer, scheduler, RNG and trainer state) as `last-checkpoint/`, replacing the previous one, which is what
    a preempted run resumes from; `all_checkpoints` keeps each one as `checkpoint-<step>/`.
    """
    if strategy not in HUB_STRATEGIES[1:]:
        raise TransferKitError(f"push_checkpoint: strategy must be one of {HUB_STRATEGIES[1:]}, got {strategy!r}")
    root = Path(checkpoint_dir)
    token = _resolve_token(repo_id, token)
    files = select_files(root, token, skip_dirs=False)
    operations = [
        CommitOperationAdd(path.name, str(path))
        for path in files
        if path.parent == root and not TRAINING_STATE.match(path.name)
    ]
    api = HfApi(token=token)
    url = _open_repo(api, repo_id, private, revision)
    if strategy != "every_save":
        folder = "last-checkpoint" if strategy == "checkpoint" else root.name
        added = {f"{folder}/{path.relative_to(root).as_posix()}": path for path in files}
        operations += [CommitOperationAdd(name, str(path)) for name, path in added.items()]
        stale = [f for f in api.list_repo_files(repo_id, revision=revision) if f.startswith(f"{folder}/")]
        operations += [CommitOperationDelete(name) for name in stale if name not in added]
    message = f"Training in progress, {root.name.replace('-', ' ')} ({strategy})"
    api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    return url


# -- CLI -----------------------------------------------------------------------------------------------------
def _add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a finished run's output directory")
    parser.add_argument("repo_id", help="the Hub repo to push to, e.g. user/model-name")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--retries", type=int, default=3, help="retries on network/5xx errors")
    parser.set_defaults(func=run_push)


def add_push_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `transferkit push`; the token comes from HF_TOKEN or `hf auth login`, never from argv."""
    parser = subparsers.add_parser("push", help="upload a finished run to the Hugging Face Hub")
    _add_push_arguments(parser)
    return parser


def run_push(args: argparse.Namespace) -> int:
    """Handler for the parsed `push` arguments: one error line and exit code 1 on failure."""
    try:
        url = push_output_dir(args.output_dir, args.repo_id, private=args.private, revision=args.revision,
                              retries=args.retries)  # fmt: skip
    except TransferKitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


def push_main(argv: list[str] | None = None) -> int:
    """`transferkit push <output_dir> <repo_id> [--private] [--revision R]` as a standalone entry point."""
    parser = argparse.ArgumentParser(prog="transferkit push", description="Upload a finished run to the Hub.")
    _add_push_arguments(parser)
    return run_push(parser.parse_args(argv))
