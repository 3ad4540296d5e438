"""Push an export to the Hugging Face Hub (``factory push-hf``): repo, branch, resumable commits, no leaked token.

The source is an export folder (``README.md`` + ``data/*.parquet``, as :func:`factory.share.hf_export.export_hf`
writes it), or a factory dataset folder or pool JSON, exported first to a temporary folder. The push:

1. resolves the token: the ``token`` argument, else ``HF_TOKEN``, else the saved login
   (``huggingface_hub.get_token()``); it is sent only as the ``Authorization`` header, and is never printed,
   logged, written or uploaded (a file to upload that holds it stops the push; every error text is scrubbed
   of it and of anything that looks like a credential, :func:`factory.core.secrets.redact`);
2. checks the token (``whoami``), creates the dataset repo (``exist_ok``; ``--private`` on a repo that
   already exists and is public stops the push rather than publish), and the branch ``revision`` from
   ``main`` if it is missing;
3. lists the files already on the branch, skips those with the same content (sha256 for LFS files, the git
   blob id otherwise), and commits the rest in bounded commits: data files first, at most ``commit_every``
   files and ``commit_bytes`` bytes each, then the card and ``croissant.json`` last, with the removal of
   stale files under ``data/`` (shards of an older export) in the same commit. An interrupted push resumes
   where it stopped: what the earlier commits brought is skipped.

``dry_run`` does all the local work (export, listing, hashing, the secret scan) and no network call.
The endpoint is ``HF_ENDPOINT`` (read at call time) or huggingface_hub's default.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from factory.core.errors import FactoryError
from factory.core.secrets import check_no_secret, redact

log = logging.getLogger(__name__)

CARD = "README.md"
DATA_DIR = "data"
COMMIT_FILES = 50  # files per commit: an interrupted push loses at most one commit's work
COMMIT_BYTES = 1 << 30  # bytes per commit (the Hub takes at most 1 GB of regular files in one commit)
TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt", ".csv")  # scanned for any credential
_REDACTED = "<token>"


@dataclass(frozen=True)
class LocalFile:
    """One file of the export: its path in the repo, on disk, its size and sha256."""

    path: str
    file: Path
    size: int
    sha256: str


@dataclass
class PushResult:
    """What a push did (or, for a dry run, would do)."""

    repo_id: str
    revision: str
    dry_run: bool
    files: list[LocalFile]
    card: str
    token_source: str | None
    private: bool | None = None
    url: str | None = None
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    planned_commits: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "dry_run": self.dry_run,
                "private": self.private, "url": self.url, "token_source": self.token_source,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
                "bytes": self.bytes, "uploaded": self.uploaded, "skipped": self.skipped, "deleted": self.deleted,
                "commits": self.commits, "planned_commits": self.planned_commits}


# ---------------------------------------------------------------------------------------------- the source

def is_export(folder: Path) -> bool:
    """A folder holding ``README.md`` and ``data/*.parquet``."""
    return (folder / CARD).is_file() and any((folder / DATA_DIR).glob("*.parquet"))


@contextlib.contextmanager
def export_folder(src: Path, repo_id: str | None = None) -> Iterator[Path]:
    """The export folder to push: ``src`` itself, or ``src`` (a dataset folder or pool JSON) exported to a
    temporary folder (under ``TMPDIR``) that is removed afterwards; ``repo_id`` (``owner/name``) goes into
    the card's example and Croissant's ``url``."""
    src = Path(src)
    if src.is_dir() and is_export(src):
        yield src
        return
    if not ((src.is_dir() and (src / "index.json").is_file()) or (src.is_file() and src.suffix == ".json")):
        what = "does not exist" if not src.exists() else "is not an export folder (README.md + data/*.parquet)"
        raise FactoryError(f"{src}: {what}, a factory dataset folder or a pool JSON")
    from factory.share.hf_export import export_hf

    with tempfile.TemporaryDirectory(prefix="factory-push-") as tmp:
        out = Path(tmp) / "export"
        export_hf(src, out, repo_id=repo_id if repo_id and "/" in repo_id else None)
        if not is_export(out):
            raise FactoryError(f"{src}: its export in {out} holds no README.md and data/*.parquet")
        yield out


def _scan(path: Path, needle: bytes | None) -> tuple[str, bool]:
    """The sha256 of ``path`` and whether ``needle`` occurs in it (one read; matches across blocks too)."""
    h, found, tail = hashlib.sha256(), False, b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            if needle and not found:
                found = needle in tail + block
                tail = (tail + block)[-(len(needle) - 1):] if len(needle) > 1 else b""
    return h.hexdigest(), found


def export_files(folder: Path, token: str | None = None) -> list[LocalFile]:
    """Every file of the export to upload, data files first and the card last; hidden files and folders
    (``.cache``, temporary files) are left out. A link or special file, a text file holding anything like a
    credential, or any file holding ``token`` stops it with one line naming the file."""
    folder = Path(folder)
    found: list[LocalFile] = []
    needle = token.encode() if token else None
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise FactoryError(f"{path}: a link or special file; an export holds regular files only")
        if path.is_dir():
            continue
        sha, holds_token = _scan(path, needle)
        if holds_token:
            raise FactoryError(f"{path}: holds the Hugging Face token used for the push; it is never uploaded")
        if path.suffix.lower() in TEXT_SUFFIXES:
            check_no_secret(path.read_bytes().decode("utf-8", "replace"), rel)
        found.append(LocalFile(rel, path, path.stat().st_size, sha))
    if not any(f.path == CARD for f in found):
        raise FactoryError(f"{folder}: no {CARD} (the dataset card)")

    def order(f: LocalFile) -> tuple[int, str]:
        return (0 if f.path.startswith(DATA_DIR + "/") else 2 if f.path == CARD else 1, f.path)

    return sorted(found, key=order)


def plan_commits(files: list[LocalFile], commit_every: int = COMMIT_FILES,
                 commit_bytes: int = COMMIT_BYTES) -> list[list[LocalFile]]:
    """Data files in commits of at most ``commit_every`` files and ``commit_bytes`` bytes (a bigger file
    alone), then the other files (card, ``croissant.json``) together in the last commit."""
    if commit_every < 1 or commit_bytes < 1:
        raise FactoryError(f"commit_every and commit_bytes must be at least 1; got {commit_every}, {commit_bytes}")
    data = [f for f in files if f.path.startswith(DATA_DIR + "/")]
    rest = [f for f in files if not f.path.startswith(DATA_DIR + "/")]
    commits: list[list[LocalFile]] = []
    batch: list[LocalFile] = []
    size = 0
    for f in data:
        if batch and (len(batch) >= commit_every or size + f.size > commit_bytes):
            commits.append(batch)
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        commits.append(batch)
    if rest:
        commits.append(rest)
    return commits


# ---------------------------------------------------------------------------------------------- the token

def resolve_token(token: str | None = None) -> tuple[str | None, str | None]:
    """``(token, where it came from)``: the argument, ``HF_TOKEN``, or the saved login; ``(None, None)``."""
    if token and token.strip():
        return token.strip(), "argument"
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env, "HF_TOKEN"
    from huggingface_hub import get_token

    saved = get_token()
    if saved and saved.strip():
        return saved.strip(), "saved login"
    return None, None


def scrub(text: str, token: str | None) -> str:
    """``text`` as one line, without ``token`` and with anything credential-like cut (redact)."""
    if token:
        text = text.replace(token, _REDACTED)
    return redact(" ".join(str(text).split()))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection and timeout errors (httpx2 for huggingface_hub 2, httpx for 1)."""
    kinds: list[type[BaseException]] = [ConnectionError]
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        kinds.append(module.HTTPError)
    return tuple(kinds)


@contextlib.contextmanager
def _step(what: str, token: str, endpoint: str) -> Iterator[None]:
    """Turn the Hub's and the network's errors in ``what`` into one scrubbed line (a FactoryError)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except FactoryError:
        raise
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        reason = exc.server_message or str(exc).split("\n")[0]
        hint = {401: " (check HF_TOKEN or `hf auth login`)",
                403: " (the token has no write access to this namespace)"}.get(status or 0, "")
        message = f"push-hf: {what}: the Hub answered {status}: {reason}{hint}"
        raise FactoryError(scrub(message, token)) from None
    except _transport_errors() as exc:
        raise FactoryError(scrub(f"push-hf: {what}: cannot reach {endpoint}: {exc}", token)) from None
    except ValueError as exc:  # huggingface_hub's own checks (a bad repo id, invalid card metadata)
        raise FactoryError(scrub(f"push-hf: {what}: {exc}", token)) from None
    except Exception as exc:  # noqa: BLE001 - still an internal error, but its text loses the token
        raise RuntimeError(scrub(f"push-hf: {what}: {type(exc).__name__}: {exc}", token)) from None


# ---------------------------------------------------------------------------------------------- the push

def _same_content(remote: Any, f: LocalFile) -> bool:
    """Whether a ``RepoFile`` on the Hub holds exactly ``f`` (LFS: sha256; a regular file: git blob id)."""
    if remote.size != f.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == f.sha256
    h = hashlib.sha1(b"blob %d\0" % f.size)
    with open(f.file, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return remote.blob_id == h.hexdigest()


def push_hf(src: Path | str, repo_id: str, *, private: bool = False, revision: str | None = None,
            dry_run: bool = False, token: str | None = None, endpoint: str | None = None,
            commit_every: int = COMMIT_FILES, commit_bytes: int = COMMIT_BYTES,
            progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None) -> PushResult:
    """Push the export ``src`` (or a dataset folder / pool JSON, exported first) to the dataset repo
    ``repo_id`` on branch ``revision`` (default ``main``); see the module docstring. ``progress(commits,
    total)`` may wrap the commit loop (a bar in the CLI)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise FactoryError(f"REPO_ID {repo_id!r}: {' '.join(str(exc).split())}") from None
    branch = revision or "main"
    secret, source = resolve_token(token)
    if not dry_run and secret is None:
        raise FactoryError("push-hf: no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                           "(--dry-run needs none)")
    from huggingface_hub import constants

    if not dry_run and constants.HF_HUB_OFFLINE:
        raise FactoryError("push-hf: HF_HUB_OFFLINE is set: the push needs the network; unset it (or use --dry-run)")
    with export_folder(Path(src), repo_id) as folder:
        files = export_files(folder, secret)
        card = (folder / CARD).read_text(encoding="utf-8", errors="replace")
        result = PushResult(repo_id, branch, dry_run, files, card, source, private=private or None)
        result.planned_commits = len(plan_commits(files, commit_every, commit_bytes))
        if dry_run:
            return result
        assert secret is not None
        _push(result, secret, endpoint or os.environ.get("HF_ENDPOINT") or None, private, revision,
              commit_every, commit_bytes, progress)
    return result


def _push(result: PushResult, token: str, endpoint: str | None, private: bool,
          revision: str | None, commit_every: int, commit_bytes: int,
          progress: Callable[[Iterable[Any], int], Iterable[Any]] | None) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from factory import __version__

    api = HfApi(endpoint=endpoint, token=token, library_name="factory", library_version=__version__)
    shown = api.endpoint
    repo_id, branch = result.repo_id, result.revision
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # the library stays quiet; the CLI draws one bar over the commits
    try:
        with _step("check the token", token, shown):
            user = api.whoami()
        if "/" not in repo_id:
            repo_id = result.repo_id = f"{user['name']}/{repo_id}"
        with _step(f"create {repo_id}", token, shown):
            api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
            info = api.repo_info(repo_id, repo_type="dataset")
        if private and info.private is False:
            raise FactoryError(f"push-hf: {repo_id} already exists and is public; --private does not change an "
                               "existing repo: make it private on the Hub first, or push without --private")
        result.private = info.private
        if revision and revision != "main":
            with _step(f"create branch {revision} of {repo_id}", token, shown):
                api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        with _step(f"list {repo_id}@{branch}", token, shown):
            remote = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, repo_type="dataset",
                                                            revision=branch) if isinstance(e, RepoFile)}
        local = {f.path for f in result.files}
        todo = []
        for f in result.files:
            there = remote.get(f.path)
            (result.skipped if there is not None and _same_content(there, f) else todo).append(f.path)
        stale = sorted(p for p in remote if p.startswith(DATA_DIR + "/") and p not in local)
        pending = set(todo)
        commits = plan_commits([f for f in result.files if f.path in pending], commit_every, commit_bytes)
        if stale and (not commits or commits[-1][0].path.startswith(DATA_DIR + "/")):
            commits.append([])  # the removal gets a commit of its own, after the data
        if result.skipped:
            log.info("%d of %d files already on %s@%s with the same content", len(result.skipped),
                     len(result.files), repo_id, branch)
        steps: Iterable[tuple[int, list[LocalFile]]] = enumerate(commits, 1)
        if progress is not None:
            steps = progress(steps, len(commits))
        for k, batch in steps:
            ops: list[Any] = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.file)) for f in batch]
            removed = stale if k == len(commits) else []
            ops += [CommitOperationDelete(path_in_repo=p) for p in removed]
            message = f"factory push-hf: {len(batch)} files" + (f", {len(removed)} removed" if removed else "")
            with _step(f"commit {k}/{len(commits)} to {repo_id}@{branch}", token, shown):
                info_commit = api.create_commit(repo_id, ops, commit_message=f"{message} ({k}/{len(commits)})",
                                                repo_type="dataset", revision=branch)
            result.commits.append(info_commit.oid)
            result.uploaded += [f.path for f in batch]
            result.deleted += removed
            log.info("commit %d/%d: %d files, %d removed -> %s", k, len(commits), len(batch), len(removed),
                     info_commit.oid)
        prefix = f"{api.endpoint}/datasets/{repo_id}"
        result.url = prefix if branch == "main" else f"{prefix}/tree/{branch}"
    finally:
        if not bars_were_off:
            enable_progress_bars()
