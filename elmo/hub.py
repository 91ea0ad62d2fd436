"""Where a model comes from: a local folder, an http(s) URL, a model hub repository, a named release.

    resolve_model("runs/lm")                                  # a local folder: used as it is
    resolve_model("https://example.org/models/my-elmo/")      # a folder URL, downloaded to the cache
    resolve_model("org/my-elmo", revision="v1")               # a hub repository (extra [hub]);
                                                              # "org/my-elmo@v1" on command lines
    resolve_model("elmo-original")                            # AllenNLP's release (needs network)
    resolve_file("https://example.org/options.json")          # one file (--options-file, --weight-file)

Every form returns a local path that ``ElmoBiLM.from_pretrained`` / ``load_original`` read.

Plain URLs are downloaded into ``$ELMO_CACHE`` (default ``~/.cache/elmo-pytorch``): each file
goes to ``NAME.partial`` first and is renamed only when complete and verified, so the cache never
holds a truncated file. A dropped connection is resumed with an HTTP ``Range`` request (within
the same call, ``retries`` times, and on the next call, from the ``.partial`` left behind). A
file is checked against a sha256 when one is known: given by the caller (``sha256=``) or published
next to it as ``NAME.sha256`` (the ``sha256sum`` format: the hex digest first). A mismatch
raises ``ChecksumError`` naming the file and both digests, and removes the bad download.

Hub repositories go through ``huggingface_hub`` (optional extra ``[hub]``) and its cache
(``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads only what is cached); files with a
``.sha256`` next to them in the repository are verified too.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Union

logger = logging.getLogger(__name__)

CACHE_ENV = "ELMO_CACHE"
CHUNK = 1 << 20

# Files that make a model folder, in the order they are looked for. Ours first (the weights in
# safetensors, or a torch state dict from earlier versions), then the original format.
CONFIG_NAME = "elmo_config.json"
WEIGHT_NAMES = ("elmo_weights.safetensors", "elmo_weights.pt")
ORIGINAL_NAMES = ("options.json", "weights.hdf5")

_ALLENNLP = "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo"
# AllenNLP's published ELMo releases (Peters et al. 2018; allennlp.org/elmo). Downloading them
# needs network access; the sizes are the float32 weights (the HDF5 files are about as large).
RELEASES = {
    "elmo-small": "2x1024_128_2048cnn_1xhighway",  # 13.6M parameters, ~52 MiB
    "elmo-medium": "2x2048_256_2048cnn_1xhighway",  # 28.0M parameters, ~107 MiB
    "elmo-original": "2x4096_512_2048cnn_2xhighway",  # 93.6M parameters, ~357 MiB
    "elmo-original-5.5b": "2x4096_512_2048cnn_2xhighway_5.5B",  # the same size, trained on 5.5B tokens
}


class ChecksumError(ValueError):
    """A downloaded file's sha256 is not the expected one."""


class DownloadError(OSError):
    """A download failed (network, server); a ``.partial`` file may be left to resume from."""


def release_urls(name: str) -> tuple[str, str]:
    """(options URL, weights URL) of one of AllenNLP's releases (``RELEASES``)."""
    if name not in RELEASES:
        raise ValueError(f"unknown release {name!r}; the named releases are {', '.join(RELEASES)}")
    stem = RELEASES[name]
    base = f"{_ALLENNLP}/{stem}/elmo_{stem}"
    return f"{base}_options.json", f"{base}_weights.hdf5"


def cache_dir() -> str:
    """The folder for plain-URL downloads: ``$ELMO_CACHE``, else ``~/.cache/elmo-pytorch``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "elmo-pytorch")


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_hub_id(spec: str) -> bool:
    """``org/name`` or ``org/name@revision`` (or ``hf://org/name``) that is not a local path."""
    if spec.startswith("hf://"):
        return True
    return bool(_REPO_ID.match(spec)) and not os.path.exists(spec) and ".." not in spec


def split_revision(repo: str, revision: Optional[str]) -> tuple[str, Optional[str]]:
    """``org/name@rev`` -> (``org/name``, ``rev``); the command lines' way to give a revision."""
    repo = repo[len("hf://"):] if repo.startswith("hf://") else repo
    if "@" in repo:
        repo, at = repo.split("@", 1)
        if revision is not None and revision != at:
            raise ValueError(f"{repo}@{at}: the revision is given twice ({at!r} and revision={revision!r})")
        revision = at
    return repo, revision


# -- model folders ---------------------------------------------------------------------------
def resolve_model(spec: Union[str, os.PathLike], *, revision: Optional[str] = None,
                  sha256: Optional[Union[str, dict]] = None, cache: Optional[str] = None,
                  force_download: bool = False) -> str:
    """A model given as a local folder, an http(s) folder URL, a hub id or a release name ->
    the local folder holding it.

    ``sha256`` is the expected digest of the weights file (a str), or ``{file name: digest}``.
    ``revision`` (a branch, tag or commit) applies to hub ids. ``cache`` overrides the cache folder
    (``cache_dir()`` for URLs, huggingface_hub's for hub ids).
    """
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        return spec
    if revision is not None and not is_hub_id(spec):
        raise ValueError(f"revision={revision!r} applies to hub repositories only, not to {spec!r}")
    if spec in RELEASES:
        return _resolve_release(spec, sha256, cache, force_download)
    if is_url(spec):
        return _resolve_url_folder(spec, sha256, cache, force_download)
    if is_hub_id(spec):
        return _resolve_hub(*split_revision(spec, revision), sha256, cache, force_download)
    if os.path.exists(spec):
        raise ValueError(f"{spec}: is a file; a model is a folder (for the original format's two "
                         "files, pass options_file= and weight_file=)")
    raise FileNotFoundError(
        f"{spec}: no model found (no such folder); a model is a local folder, an http(s) URL of one, a hub "
        f"repository id (org/name, needs the [hub] extra), or one of {', '.join(RELEASES)}")


def resolve_file(spec: Union[str, os.PathLike], *, sha256: Optional[str] = None,
                 cache: Optional[str] = None, force_download: bool = False) -> str:
    """One file given as a local path or an http(s) URL -> its local path (URLs are downloaded)."""
    spec = os.fspath(spec)
    if not is_url(spec):
        return spec
    dest = os.path.join(_url_folder(spec.rsplit("/", 1)[0], cache), _url_name(spec))
    return download(spec, dest, sha256=sha256, force=force_download)


def _expected(sha256: Optional[Union[str, dict]], name: str, is_weights: bool) -> Optional[str]:
    if isinstance(sha256, dict):
        return sha256.get(name)
    return sha256 if is_weights else None


def _url_name(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise ValueError(f"{url}: the URL names no file")
    return name


def _url_folder(base: str, cache: Optional[str]) -> str:
    """The cache folder for files under ``base``: readable host/path plus a short digest."""
    parsed = urllib.parse.urlparse(base)
    tail = re.sub(r"[^\w.-]+", "_", parsed.path.strip("/"))[-60:] or "root"
    key = hashlib.sha256(base.encode()).hexdigest()[:12]
    return os.path.join(cache or cache_dir(), "url", re.sub(r"[^\w.-]+", "_", parsed.netloc),
                        f"{tail}-{key}")


def _resolve_release(name: str, sha256, cache, force) -> str:
    options_url, weights_url = release_urls(name)
    folder = os.path.join(cache or cache_dir(), "allennlp", name)
    if force or not _complete_folder(folder, sha256):
        logger.info("%s: AllenNLP's published release, downloaded once into %s (needs network "
                    "access): %s", name, folder, weights_url)
    try:
        download(options_url, os.path.join(folder, "options.json"), force=force)
        download(weights_url, os.path.join(folder, "weights.hdf5"),
                 sha256=_expected(sha256, "weights.hdf5", True), force=force)
    except DownloadError as e:
        raise DownloadError(f"{name}: the named releases are downloaded from AllenNLP's servers "
                            f"and need network access: {e}") from None
    return folder


def _resolve_url_folder(url: str, sha256, cache, force) -> str:
    base = url.rstrip("/")
    folder = _url_folder(base, cache)
    if not force and _complete_folder(folder, sha256):
        return folder
    try:
        download(f"{base}/{CONFIG_NAME}", os.path.join(folder, CONFIG_NAME), force=force)
    except FileNotFoundError:
        pass
    else:
        for name in WEIGHT_NAMES:
            try:
                download(f"{base}/{name}", os.path.join(folder, name),
                         sha256=_expected(sha256, name, True), force=force)
                return folder
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"{url}: has {CONFIG_NAME} but none of {', '.join(WEIGHT_NAMES)}")
    try:
        for name in ORIGINAL_NAMES:
            download(f"{base}/{name}", os.path.join(folder, name),
                     sha256=_expected(sha256, name, name.endswith(".hdf5")), force=force)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url}: no model found there; expected {CONFIG_NAME} + one of {', '.join(WEIGHT_NAMES)} "
            f"(this package's format) or {' + '.join(ORIGINAL_NAMES)} (the original format); for "
            "other file names pass options_file= and weight_file= URLs") from None
    return folder


def _complete_folder(folder: str, sha256) -> bool:
    """Whether an earlier download left a whole model in ``folder`` (then checked, not fetched)."""
    present = [n for n in (CONFIG_NAME, *WEIGHT_NAMES, *ORIGINAL_NAMES)
               if os.path.isfile(os.path.join(folder, n))]
    if CONFIG_NAME in present:
        names = [next((n for n in WEIGHT_NAMES if n in present), None)]
    else:
        names = [n for n in ORIGINAL_NAMES if n in present]
        names = names if len(names) == len(ORIGINAL_NAMES) else [None]
    if None in names:
        return False
    for name in names:  # a cached file against a digest given now (its record: no re-read)
        expected = _expected(sha256, name, name in WEIGHT_NAMES or name.endswith(".hdf5"))
        if expected is not None:
            download("(cached)", os.path.join(folder, name), sha256=expected)
    return True


def _resolve_hub(repo_id: str, revision, sha256, cache, force) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"loading {repo_id!r} from the model hub needs huggingface_hub: "
                          "pip install elmo-pytorch[hub]") from None
    patterns = ["*.json", "*.safetensors", "*.pt", "*.hdf5", "*.sha256", "*.txt"]
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns,
                                   force_download=force)
    except OSError as e:  # not found, not cached while offline, no network (huggingface_hub's errors)
        at = f" at revision {revision!r}" if revision else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"{repo_id}: no model found: there is no local folder of that name, and the model hub "
            f"repository{at} could not be read ({type(e).__name__}: {first})") from None
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".sha256") or not os.path.isfile(path):
            continue
        expected = _expected(sha256, name, name in WEIGHT_NAMES or name.endswith(".hdf5"))
        sidecar = path + ".sha256"
        if expected is None and os.path.isfile(sidecar):
            expected = _read_digest(sidecar, f"{repo_id}/{name}.sha256")
        if expected is not None:
            _verify(path, expected, f"{repo_id}/{name}" + (f"@{revision}" if revision else ""))
    return folder


# -- one file ----------------------------------------------------------------------------------
def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_digest(path: str, digest: Optional[str] = None) -> str:
    """Write ``PATH.sha256`` (``sha256sum`` format) for a file, atomically; returns the digest.
    ``digest``, when the caller has just computed it, saves reading the file again."""
    from elmo.io import write_text_atomic

    digest = digest or sha256_of(path)
    write_text_atomic(path + ".sha256", f"{digest}  {os.path.basename(path)}\n")
    return digest


def _read_digest(path_or_text: str, where: str, text: Optional[str] = None) -> str:
    if text is None:
        with open(path_or_text, encoding="ascii", errors="replace") as f:
            text = f.read()
    digest = text.strip().split()[0].lower() if text.strip() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"{where}: not a sha256 digest file (expected 64 hex digits first, got "
                         f"{text[:80]!r})")
    return digest


def _verify(path: str, expected: str, name: str) -> None:
    expected = expected.strip().lower()
    found = sha256_of(path)
    if found != expected:
        raise ChecksumError(f"{name}: sha256 mismatch: expected {expected}, found {found}")


def _fetch_sidecar_digest(url: str, timeout: float) -> Optional[str]:
    """The digest published at ``URL.sha256``, or None when there is none (404)."""
    try:
        with urllib.request.urlopen(url + ".sha256", timeout=timeout) as resp:
            text = resp.read(4096).decode("ascii", errors="replace")
    except urllib.error.HTTPError as e:
        if e.code in (403, 404):
            return None
        raise DownloadError(f"{url}.sha256: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}.sha256: cannot download ({_reason(e)})") from None
    return _read_digest("", f"{url}.sha256", text)


def _reason(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e) or type(e).__name__


def download(url: str, dest: str, *, sha256: Optional[str] = None, retries: int = 3,
             timeout: float = 60.0, force: bool = False, lock_timeout: float = 3600.0) -> str:
    """Download ``url`` to ``dest`` (atomically, resumable, verified) unless it is already there.

    The bytes go to ``dest.partial``; after an interruption the next attempt asks for the rest
    with ``Range: bytes=N-`` (a server that ignores it sends the whole file again). The digest
    checked is ``sha256`` if given, else the one published at ``url.sha256`` if any. The digest
    of a completed download is kept as ``dest.sha256``, so a cached file is checked against a
    given ``sha256`` without being read again. Returns ``dest``.

    Raises FileNotFoundError (HTTP 404), ChecksumError, or DownloadError after ``retries``
    failed resumptions (the ``.partial`` stays for the next call to resume). Concurrent calls
    for one ``dest`` (threads or processes) download it once: the others wait on ``dest.lock``
    (up to ``lock_timeout`` seconds) and then use the file.
    """
    if os.path.isfile(dest) and not force:
        return _check_cached(url, dest, sha256)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    # One writer per file: processes that load the same model at once (e.g. every rank under
    # torchrun) wait for the first one's download instead of writing the same .partial.
    with _lock(dest, url, lock_timeout):
        if os.path.isfile(dest) and not force:  # another process completed it meanwhile
            return _check_cached(url, dest, sha256)
        return _download_now(url, dest, sha256, retries, timeout, force)


def _check_cached(url: str, dest: str, sha256: Optional[str]) -> str:
    record = dest + ".sha256"
    if sha256 is not None:
        known = _read_digest(record, record) if os.path.isfile(record) else sha256_of(dest)
        if known != sha256.strip().lower():
            raise ChecksumError(f"{dest} (cached from {url}): sha256 mismatch: expected "
                                f"{sha256.strip().lower()}, found {known}; delete it to download again")
    return dest


@contextlib.contextmanager
def _lock(dest: str, url: str, wait: float):
    """``dest.lock`` (holding the writer's PID), created exclusively; a lock whose process has
    died is taken over; one held longer than ``wait`` seconds is an error."""
    from elmo.io import pid_running

    path, deadline = dest + ".lock", time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                with open(path, encoding="ascii") as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = -1  # being written this instant: look again
            if pid == 0 or (pid > 0 and not pid_running(pid)):
                logger.warning("%s: removing the lock of process %d, which no longer runs", dest, pid)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            if time.monotonic() > deadline:
                raise DownloadError(f"{url}: process {pid} has been downloading it into {dest} for "
                                    f"over {wait:.0f} s; wait for it, or remove {path} if it is stuck")
            time.sleep(0.1)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _download_now(url: str, dest: str, sha256: Optional[str], retries: int, timeout: float,
                  force: bool) -> str:
    partial = dest + ".partial"
    if force and os.path.exists(partial):
        os.remove(partial)
    attempt = 0
    while True:
        try:
            _fetch_into(url, partial, timeout)
            break
        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError,
                urllib.error.URLError, http.client.HTTPException) as e:
            if isinstance(e, urllib.error.HTTPError):
                if e.code == 404:
                    raise FileNotFoundError(f"{url}: not found (HTTP 404)") from None
                if e.code < 500:
                    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            attempt += 1
            have = os.path.getsize(partial) if os.path.exists(partial) else 0
            if attempt > retries:
                raise DownloadError(
                    f"{url}: download failed after {attempt} attempts ({_reason(e)}); {have} bytes "
                    f"are kept in {partial} and the next try resumes from there") from None
            logger.warning("%s: %s after %d bytes; resuming (attempt %d of %d)",
                           url, _reason(e), have, attempt, retries)
            time.sleep(min(0.2 * 2 ** attempt, 5.0))
    expected = sha256.strip().lower() if sha256 else _fetch_sidecar_digest(url, timeout)
    found = sha256_of(partial)
    if expected is not None and found != expected:
        os.remove(partial)
        raise ChecksumError(f"{_url_name(url)} ({url}): sha256 mismatch: expected {expected}, found "
                            f"{found}; the download was removed")
    if expected is None:
        logger.info("%s: no sha256 known (none given, no %s.sha256 published); not verified", url, url)
    os.replace(partial, dest)
    write_digest(dest, found)
    return dest


def _fetch_into(url: str, partial: str, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``partial``; raises IncompleteRead if cut short."""
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the partial file is complete
            return
        raise
    with resp:
        if resp.status == 206:
            mode = "ab"
            match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise http.client.HTTPException(f"server resumed at {resp.headers.get('Content-Range')!r}, "
                                                f"not at byte {have}")
        else:  # 200: the server sent the whole file (no Range support): start over
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, mode) as f:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
            f.flush()
            size = f.tell()
        if total is not None and size < total:
            raise http.client.IncompleteRead(b"", total - size)


# -- publishing --------------------------------------------------------------------------------
def push_folder(save, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                commit_message: str = "Upload ELMo model", token: Optional[str] = None) -> str:
    """``save(folder)`` into a temporary folder, then upload that folder to the hub repository
    ``repo_id`` (created if missing) on branch ``revision``. Returns the commit URL."""
    import tempfile

    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError("push_to_hub needs huggingface_hub: pip install elmo-pytorch[hub]") from None
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="elmo-push-") as folder:
        save(folder)
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(_model_card(repo_id))
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def _model_card(repo_id: str) -> str:
    """A minimal model card: how to load the repository with this package."""
    return (f"---\nlibrary_name: elmo-pytorch\ntags:\n- elmo\n---\n\n# {repo_id}\n\n"
            "An ELMo biLM (Peters et al. 2018) saved by elmo-pytorch: `elmo_config.json` and "
            "`elmo_weights.safetensors` (or `elmo_weights.pt`), with a `.sha256` of the weights "
            "that is checked after download.\n\n"
            "```python\nfrom elmo import Embedder\n\n"
            f"embedder = Embedder.from_pretrained(\"{repo_id}\")\n"
            "layers = embedder.embed_sentence([\"The\", \"cat\", \"sat\", \".\"])  # (L+1, 4, 2P)\n```\n\n"
            f"Command line: `elmo-embed input.txt output.hdf5 --model {repo_id}`.\n")
