"""The model card of a run: `model-index` metrics (perplexity too), lineage, data, hyperparameters, how to use it.

Trainer's own card leaves MLM perplexity out of `model-index`. The card is public, so the token is never written
into it. Pushing it to the Hub is `transferkit.hub`; deciding when is `transferkit.publish`.
"""

from __future__ import annotations

import math
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import get_token

from transferkit import __version__
from transferkit.errors import TransferKitError

TASKS = ("text-classification", "fill-mask", "text-generation")
LM_TASKS = ("fill-mask", "text-generation")  # MLM / CLM continued pretraining: perplexity is the metric
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "matthews_correlation")
SPLIT_PREFIXES = {"eval_": "validation", "test_": "test", "predict_": "test"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_LOCAL_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".tsv", ".parquet", ".arrow")


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


def add_card_section(output_dir: str | Path, heading: str, body: str, repo_id: str | None = None) -> Path:
    """Add a section (before Lineage) to the card written in `output_dir`, named after `repo_id` when given.

    For a card that learns something after its run has finished: a multi-seed run pushes its first seed's model
    only once every seed has finished, so that card gets the repo's name and the results over seeds then.
    """
    path = Path(output_dir) / "README.md"
    card = ModelCard.load(path)
    text = card.text
    old = card.data.model_name or Path(output_dir).name  # as build_model_card named it
    if repo_id and old != repo_id:  # in the title, model-index and the usage snippet (`"{id}"` in _USAGE)
        text = text.replace(f"# {old}\n", f"# {repo_id}\n", 1).replace(f'"{old}"', f'"{repo_id}"')
        card.data.model_name = repo_id
    earlier = re.search(rf"\n## {re.escape(heading)}\n.*?(?=\n## |\Z)", text, flags=re.DOTALL)
    if earlier:  # a rerun (a push retried): the section is replaced, never added twice
        text = text[: earlier.start()] + text[earlier.end() :]
    card.text = text.replace("\n## Lineage", f"\n## {heading}\n\n{body}\n\n## Lineage", 1)
    card.save(path)
    return path
