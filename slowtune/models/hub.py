"""Base models from the Hugging Face Hub: resumable downloads into the hub's own cache, and offline look-ups.

Files go where huggingface_hub keeps them (``HF_HOME`` / ``HF_HUB_CACHE``, its usual blobs/snapshots/refs layout),
shared with every other tool on the machine. Only what training and export need is fetched (``ALLOW_PATTERNS``):
config, safetensors weights and their index, tokenizer files and chat template; no PyTorch ``.bin``, GGUF, ONNX or
``original/`` folders.

Why slowtune moves the bytes itself: huggingface_hub 2.x writes each file to a temporary name unique to one attempt
and deletes it when the download fails or is cancelled, so an interrupted multi-gigabyte download starts again from
zero (its retry inside one call resumes only from whole 10 MB chunks). slowtune asks the hub for the same metadata
(``repo_info``, ``list_repo_tree`` and a HEAD per file, whose ETag names the blob in the cache), streams each file
into ``blobs/<etag>.incomplete`` (the name older huggingface_hub versions gave resumable partial files), resumes it
with an HTTP ``Range`` request, and renames it to ``blobs/<etag>`` under the hub's own lock file. Finally
``snapshot_download`` finds every blob present and writes the snapshot links, refs and tree listing exactly as it
always does.

huggingface_hub is imported inside functions: importing slowtune must stay fast.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune import secrets
from slowtune.progress import Cancelled, Progress, ensure

log = logging.getLogger(__name__)

STAGE = "download"
LIBRARY_NAME = "slowtune"

# What training (mlx-lm) and export (llama.cpp's converter) read from a model repo.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
)
# Sub-folders hold other formats (original/ has Meta's .pth checkpoints); Mistral repos carry a second full copy
# of the weights as consolidated.safetensors for mistral-inference.
IGNORE_PATTERNS: tuple[str, ...] = ("*/*", "consolidated*")

_CHUNK = 1 << 20  # bytes between cancel checks and progress updates
_MAX_RETRIES = 5  # consecutive failed attempts on one file without a byte arriving
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(RuntimeError):
    """A download or look-up failed. The message is written for the user and never contains the token.

    ``kind`` says what went wrong, for a GUI that offers the fix: "gated", "not_found", "revision_not_found",
    "unauthorized", "forbidden", "offline", "network", "server", "disk_full", "not_downloaded", "bad_name".
    """

    def __init__(self, message: str, *, kind: str, repo_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.repo_id = repo_id


# --- public API --------------------------------------------------------------------------------------------


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    progress: Progress | None = None,
    token: str | None = None,
) -> Path:
    """Download the files slowtune needs from ``repo_id`` into the Hugging Face cache; return the snapshot folder.

    Progress: stage "download", bytes done/total over all files, metrics ``file``, ``file_done``, ``file_total``.
    ``progress.cancel()`` stops within about a megabyte and raises ``Cancelled``; the partial file stays and the
    next call resumes it with an HTTP Range request. Without a connection, a model downloaded before is returned
    from the cache. ``token`` defaults to the Hugging Face token in the keychain (Providers). Errors the user can act
    on (gated model, unknown repo, offline, disk full, ...) raise ``HubError``.
    """
    repo_id = _checked_repo_id(repo_id)
    progress = ensure(progress)
    token = _token(token)
    try:
        return _download(repo_id, revision, progress, token)
    except (Cancelled, HubError):
        raise
    except Exception as exc:
        error = _user_error(exc, repo_id, revision, token_given=token is not None)
        if error is None:
            raise
        # The exception's text can carry a signed download URL: log its type and status only.
        log.warning("Download of %s failed: %s %s", repo_id, type(exc).__name__,
                    getattr(getattr(exc, "response", None), "status_code", ""))
        raise error from exc


def find_cached(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` if it is fully downloaded in the Hugging Face cache, else None. Offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = _checked_repo_id(repo_id)
    try:
        folder = Path(snapshot_download(
            repo_id, revision=revision, local_files_only=True,
            allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS),
        ))
    except LocalEntryNotFoundError:  # includes IncompleteSnapshotError
        return None
    # A snapshot folder made by another tool with other patterns may lack what slowtune needs.
    return folder if (folder / "config.json").is_file() else None


def resolve_model(name_or_path: str, *, revision: str | None = None) -> Path:
    """A model folder for ``name_or_path``: an existing local folder, or a repo id already downloaded. Offline.

    Raises HubError when it is neither (kind "not_downloaded" for a repo id that is not in the cache yet).
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        if candidate.is_dir():
            return candidate.resolve()
        raise HubError(f"{candidate} is a file, not a model folder.", kind="bad_name")
    name = name_or_path.strip()
    if not _is_repo_id(name):
        raise HubError(
            f"There is no folder {candidate}, and {name_or_path!r} is not a Hugging Face model name (owner/model).",
            kind="bad_name",
        )
    folder = find_cached(name, revision)
    if folder is None:
        raise HubError(
            f"{name} is not downloaded yet. Download it first (this needs an internet connection once); "
            "after that it works offline.",
            kind="not_downloaded", repo_id=name,
        )
    return folder


# --- the download ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RemoteFile:
    repo_id: str
    path: str  # in the repo
    size: int
    etag: str  # names the blob in the cache: the sha256 of an LFS file, the git blob id of others
    # The file's URL on the hub at the commit being downloaded. For LFS files it redirects to a signed CDN URL,
    # fresh on every request (a stored one would expire during a long download); the HTTP client drops the
    # token when it follows a redirect to another host.
    url: str


def _download(repo_id: str, revision: str | None, progress: Progress, token: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    progress.report(STAGE, 0, None, status=f"Looking up {repo_id}", force=True)
    try:
        files = _remote_files(repo_id, revision, token)
    except Exception as exc:
        # Like snapshot_download: when the hub cannot be asked, a complete earlier download is good enough.
        if _is_connection_problem(exc) or isinstance(exc, HfHubHTTPError):
            cached = find_cached(repo_id, revision)
            if cached is not None:
                log.warning("Hugging Face could not be reached for %s (%s); using the downloaded copy.",
                            repo_id, type(exc).__name__)
                return cached
        if _is_connection_problem(exc):
            raise HubError(
                f"You are offline and {repo_id} is not downloaded yet. Connect to the internet and try again; "
                "once downloaded, it works offline.",
                kind="offline", repo_id=repo_id,
            ) from exc
        raise

    cache = Path(constants.HF_HUB_CACHE).expanduser().resolve()
    repo_folder = "models--" + repo_id.replace("/", "--")  # the hub's own naming (repo_folder_name)
    blobs = cache / repo_folder / "blobs"
    locks = cache / ".locks" / repo_folder
    already = {f.path: _bytes_present(blobs, f) for f in files}
    missing = sum(f.size for f in files) - sum(already.values())
    _check_free_space(repo_id, blobs, missing)

    tracker = _Tracker(progress, files, already)
    for file in files:
        progress.check()
        _fetch(file, blobs, locks, token, tracker, progress)

    # Every blob is in place: the hub links the snapshot, writes refs/<revision> and its tree listing.
    folder = snapshot_download(
        repo_id, revision=revision, token=token, library_name=LIBRARY_NAME,
        allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS),
        tqdm_class=_silent_bar_class(),
    )
    progress.report(STAGE, tracker.total, tracker.total, status=f"Downloaded {repo_id}", force=True)
    return Path(folder)


def _remote_files(repo_id: str, revision: str | None, token: str | None) -> list[_RemoteFile]:
    """The files to fetch at the revision's current commit, with the metadata a HEAD request gives."""
    from huggingface_hub import HfApi, constants, hf_hub_url
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(token=token, library_name=LIBRARY_NAME)
    info = api.repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    commit = info.sha
    if not commit:
        raise HubError(f"Hugging Face gave no commit for {repo_id}; try again later.", kind="server", repo_id=repo_id)
    entries = [e for e in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(e, RepoFile)]
    wanted = list(filter_repo_objects(
        entries, allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS), key=lambda e: e.path
    ))
    # Small files first: a cancelled download then leaves the config and tokenizer complete.
    wanted.sort(key=lambda e: (e.path.endswith(".safetensors"), e.path))
    return [_head(repo_id, hf_hub_url(repo_id, e.path, revision=commit), e.path, e.size, token) for e in wanted]


def _head(repo_id: str, resolve_url: str, path: str, listed_size: int, token: str | None) -> _RemoteFile:
    """A file's blob name (its ETag) and size, from a HEAD request to the hub."""
    from huggingface_hub import constants, get_hf_file_metadata

    meta = get_hf_file_metadata(resolve_url, token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                library_name=LIBRARY_NAME)
    if not meta.etag:
        raise HubError(f"Hugging Face gave no ETag for {path} of {repo_id}; try again later.", kind="server",
                       repo_id=repo_id)
    size = meta.size if meta.size is not None else listed_size
    return _RemoteFile(repo_id, path, size, meta.etag, resolve_url)


def _bytes_present(blobs: Path, file: _RemoteFile) -> int:
    if (blobs / file.etag).is_file():
        return file.size
    partial = blobs / f"{file.etag}.incomplete"
    size = partial.stat().st_size if partial.is_file() else 0
    return size if size <= file.size else 0


def _free_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (which may not exist yet)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _check_free_space(repo_id: str, blobs: Path, needed: int) -> None:
    free = _free_bytes(blobs)
    if needed > free:
        raise HubError(
            f"Not enough free disk space to download {repo_id}: it needs {_gb(needed)} more and {_gb(free)} is "
            f"free in {blobs.parent.parent}. Free some space (or move the Hugging Face cache elsewhere with HF_HOME) "
            "and try again.",
            kind="disk_full", repo_id=repo_id,
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class _Tracker:
    """Bytes done over all files, reported to the Progress as one "download" stage."""

    def __init__(self, progress: Progress, files: list[_RemoteFile], already: dict[str, int]) -> None:
        self._progress = progress
        self._per_file = dict(already)
        self.total = sum(f.size for f in files)
        self.done = sum(already.values())
        progress.report(STAGE, self.done, self.total, status="Downloading", force=True)

    def update(self, file: _RemoteFile, file_done: int) -> None:
        if self._per_file.get(file.path) == file_done:
            return
        self.done += file_done - self._per_file.get(file.path, 0)
        self._per_file[file.path] = file_done
        self._progress.report(STAGE, self.done, self.total, status=f"Downloading {file.path}",
                              file=file.path, file_done=file_done, file_total=file.size)


def _fetch(file: _RemoteFile, blobs: Path, locks: Path, token: str | None, tracker: _Tracker,
           progress: Progress) -> None:
    blob = blobs / file.etag
    if blob.is_file():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    # The lock file huggingface_hub takes for this blob: no other process (slowtune or not) writes it meanwhile.
    with _blob_lock(locks / f"{file.etag}.lock", progress):
        if not blob.is_file():
            partial = blobs / f"{file.etag}.incomplete"
            _stream(file, partial, token, tracker, progress)
            os.replace(partial, blob)
    tracker.update(file, file.size)


@contextmanager
def _blob_lock(lock_file: Path, progress: Progress) -> Iterator[None]:
    from huggingface_hub.utils import WeakFileLock

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        while True:
            progress.check()  # another download of the same file may take long: stay cancellable
            try:
                stack.enter_context(WeakFileLock(lock_file, timeout=0.5))
                break
            except TimeoutError:  # filelock.Timeout: not acquired yet
                continue
        yield


def _stream(file: _RemoteFile, partial: Path, token: str | None, tracker: _Tracker, progress: Progress) -> None:
    """Append the missing bytes of ``file`` to ``partial``, resuming with Range; retry while bytes keep coming."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers(token=token, library_name=LIBRARY_NAME)
    headers["Accept-Encoding"] = "identity"  # byte ranges and sizes are of the file itself
    failures = 0
    while True:
        have = partial.stat().st_size if partial.is_file() else 0
        if have > file.size:
            partial.unlink()  # not a prefix of this file
            have = 0
        if have == file.size:
            partial.touch()  # an empty file has no bytes to fetch, but must exist
            break
        request_headers = {**headers, "Range": f"bytes={have}-"} if have else headers
        try:
            with get_session().stream("GET", file.url, headers=request_headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                if response.status_code == 416:  # the server disagrees about the size: start over
                    partial.unlink(missing_ok=True)
                    raise _Retry("range not satisfiable")
                if response.status_code in _RETRY_STATUS:
                    raise _Retry(f"HTTP {response.status_code}")
                hf_raise_for_status(response)
                resuming = have > 0 and response.status_code == 206 and _range_start(response) == have
                if response.status_code == 206 and not resuming:
                    # A range we did not ask for: its bytes cannot go at the start of the file. Start over.
                    partial.unlink(missing_ok=True)
                    raise _Retry("the server answered with another byte range")
                written = have if resuming else 0  # a 200 answer is the whole file: rewrite it
                with partial.open("ab" if resuming else "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        progress.check()
                        out.write(chunk)
                        written += len(chunk)
                        failures = 0
                        tracker.update(file, written)
                    if written == file.size:
                        out.flush()
                        os.fsync(out.fileno())
            if written != file.size:
                raise _Retry(f"got {written} of {file.size} bytes")
        except (httpx2.TransportError, _Retry) as exc:
            failures += 1
            if failures > _MAX_RETRIES:
                raise
            delay = min(8.0, 0.5 * 2 ** (failures - 1))
            log.warning("Download of %s interrupted (%s); resuming in %.1f s.", file.path,
                        exc if isinstance(exc, _Retry) else type(exc).__name__, delay)
            _sleep(delay, progress)


class _Retry(Exception):
    """A response that ended without all the bytes, though the connection did not fail."""


def _range_start(response: Any) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _sleep(seconds: float, progress: Progress) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        progress.check()
        time.sleep(min(0.1, left))


def _silent_bar_class() -> type:
    """A tqdm class for snapshot_download that draws nothing: slowtune reports progress its own way."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class _Silent(hub_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


# --- tokens and names --------------------------------------------------------------------------------------


def _token(explicit: str | None) -> str | None:
    if explicit:
        secrets.remember_secret(explicit)  # so that logs redact it
        return explicit
    try:
        return secrets.get_secret(secrets.HUGGINGFACE)
    except secrets.SecretsError as exc:
        log.warning("%s Continuing without a Hugging Face token.", exc)
        return None


def _is_repo_id(name: str) -> bool:
    # The hub's rules: owner/name of letters, digits, "-", "_", "."; no "--" or ".." (both have other meanings).
    return bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name


def _checked_repo_id(repo_id: str) -> str:
    name = repo_id.strip()
    if not _is_repo_id(name):
        raise HubError(f"{repo_id!r} is not a Hugging Face model name (owner/model).", kind="bad_name")
    return name


# --- errors the user can act on ----------------------------------------------------------------------------


def _is_connection_problem(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(exc, (httpx2.TransportError, OfflineModeIsEnabled))


def _user_error(exc: Exception, repo_id: str, revision: str | None, *, token_given: bool) -> HubError | None:
    """A HubError explaining ``exc`` in the user's terms, or None for an error that is a bug, not a situation.

    Messages are built here from known facts only, never from the library's text, so no header or URL with a
    credential can leak into them.
    """
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"https://huggingface.co/{repo_id}"
    providers = "save your Hugging Face token in Providers (slowtune keeps it in the keychain)"
    if isinstance(exc, GatedRepoError):
        if token_given:
            return HubError(
                f"{repo_id} is a gated model, and the Hugging Face account of your token has no access to it yet. "
                f"Accept its licence at {url} while logged in to that account (some authors approve requests by "
                "hand, which can take a while), then try again. The token is the Hugging Face token in Providers.",
                kind="gated", repo_id=repo_id,
            )
        return HubError(
            f"{repo_id} is a gated model: its licence must be accepted at {url} while logged in to Hugging Face. "
            f"Then {providers} and try again.",
            kind="gated", repo_id=repo_id,
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"{repo_id} was not found on Hugging Face. Check the name; a private or gated model also looks like "
            f"this without a token that has access: {providers}.",
            kind="not_found", repo_id=repo_id,
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {revision!r} on Hugging Face.", kind="revision_not_found",
                        repo_id=repo_id)
    if isinstance(exc, DisabledRepoError):
        return HubError(f"{repo_id} has been disabled on Hugging Face and cannot be downloaded.", kind="not_found",
                        repo_id=repo_id)
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"A file of {repo_id} disappeared on Hugging Face while downloading; try again.",
                        kind="server", repo_id=repo_id)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return HubError(
                f"Hugging Face did not accept the token while downloading {repo_id}. Check the Hugging Face token "
                "in Providers.",
                kind="unauthorized", repo_id=repo_id,
            )
        if status == 403:
            return HubError(
                f"Hugging Face refused access to {repo_id}. If it is gated, accept its licence at {url} while "
                "logged in; the Hugging Face token in Providers must belong to that account.",
                kind="forbidden", repo_id=repo_id,
            )
        return HubError(
            f"Hugging Face answered with an error (HTTP {status}) while downloading {repo_id}. Try again later; "
            "the download resumes where it stopped.",
            kind="server", repo_id=repo_id,
        )
    if _is_connection_problem(exc) or isinstance(exc, _Retry):
        return HubError(
            f"The connection to Hugging Face was lost while downloading {repo_id}. Run the download again: it "
            "resumes where it stopped.",
            kind="network", repo_id=repo_id,
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HubError(
            f"The disk is full: {repo_id} could not be downloaded completely. Free some space (or move the Hugging "
            "Face cache elsewhere with HF_HOME) and run the download again; it resumes where it stopped.",
            kind="disk_full", repo_id=repo_id,
        )
    return None
