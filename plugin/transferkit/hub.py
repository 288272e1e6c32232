"""Publish a finished run to the Hugging Face Hub: early access check, file selection, resilient push.

Why not Trainer's `push_to_hub=True`: it creates the repo inside `Trainer.__init__`, its card leaves MLM
perplexity out of `model-index`, and a push that fails after hours of training should leave the run intact
and say exactly how to retry. The token is never written to a file, a log line or the card.

The card itself is built by `transferkit.model_card`.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, get_token, validate_repo_id

from transferkit.errors import TransferKitError

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
SKIPPED_DIRS = re.compile(r"^(checkpoint-[^/]*|runs|\..*|__pycache__)$")
MERGED_DIR = "merged"  # a LoRA run's merged model: published to its own repo, never inside the adapter's
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
# What only a resumed run needs: kept out of the repo root, uploaded with the checkpoint folder itself.
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|"
                            r"training_args\.bin|latest|zero_to_fp32\.py|README\.md)$")  # fmt: skip
TOKEN_SCAN_LIMIT = 50 * 2**20  # weights can't usefully hold a token; small text/pickles can
NO_TOKEN_HELP = "set HF_TOKEN to a write token or run `hf auth login`"
try:  # huggingface_hub 2.x talks through httpx2; 1.x through httpx
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError as _TransportError  # type: ignore[no-redef]
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (_TransportError,)


class PushError(TransferKitError):
    """The upload failed; the message says the local output is intact and gives the command to retry."""


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


def first_line(err: BaseException, token: str | None) -> str:
    """The first line of an error, with the token masked in case a server ever echoes it."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line.replace(token, "***") if token else line


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
        raise TransferKitError(f"cannot check the token with {api.endpoint}: {first_line(err, token)}") from None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.auth_check(repo_id, write=True)
    except Exception as err:
        if not isinstance(err, HfHubHTTPError) and not _is_transient(err):
            raise
        raise TransferKitError(
            f"user {user!r} cannot create or write {repo_id!r} on {api.endpoint} ({first_line(err, token)}); "
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
            reason = first_line(err, token)
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
