"""Loading from URLs, the model hub and the named releases, with checksums and resumed downloads.

Everything is offline: an HTTP server on 127.0.0.1 (a thread started and stopped by the fixture)
serves the reference fixtures, and the hub tests build huggingface_hub's cache layout in a
temporary folder (HF_HUB_OFFLINE=1 is set by conftest before huggingface_hub is imported).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import torch

from elmo import ElmoBiLM, Embedder, load_original
from elmo import hub
from elmo.hub import ChecksumError, DownloadError

SENTENCES = [["The", "hub", "test", "."], ["Short"]]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server:
    """Serves ``files`` {url path: bytes}; paths in ``drop`` send half of the body and close the
    connection on their first ``drop[path]`` requests; paths in ``no_range`` ignore Range."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.no_range: set = set()
        self.delay: dict[str, float] = {}  # seconds to wait before answering
        self.requests: list = []  # (path, Range header or None)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                time.sleep(server.delay.get(self.path, 0.0))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and self.path not in server.no_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop.get(self.path, 0) > 0:
                    server.drop[self.path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, data: bytes, digest: bool = False) -> None:
        self.files[path] = data
        if digest:
            self.files[path + ".sha256"] = f"{_sha(data)}  {os.path.basename(path)}\n".encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "elmo-cache"
    monkeypatch.setenv("ELMO_CACHE", str(folder))
    return folder


@pytest.fixture
def fixture_bytes(reference_dir):
    with open(os.path.join(reference_dir, "options.json"), "rb") as f:
        options = f.read()
    with open(os.path.join(reference_dir, "lm_weights.hdf5"), "rb") as f:
        weights = f.read()
    return options, weights


def _layers(model):
    with torch.no_grad():
        return Embedder(model, device="cpu").embed_batch(SENTENCES)


def _same(a, b):
    for x, y in zip(_layers(a), _layers(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _reference_model(reference_dir):
    return load_original(os.path.join(reference_dir, "options.json"),
                         os.path.join(reference_dir, "lm_weights.hdf5"))


# -- plain URLs ---------------------------------------------------------------------------------
def test_url_folder_in_the_original_format_is_downloaded_verified_and_cached(
        server, cache, reference_dir, fixture_bytes):
    options, weights = fixture_bytes
    server.add("/good/options.json", options)
    server.add("/good/weights.hdf5", weights, digest=True)
    model = ElmoBiLM.from_pretrained(f"{server.url}/good/")
    _same(model, _reference_model(reference_dir))
    folder = hub._url_folder(f"{server.url}/good", None)
    assert folder.startswith(str(cache))
    assert sorted(os.listdir(folder)) == ["options.json", "options.json.sha256", "weights.hdf5",
                                          "weights.hdf5.sha256"]
    with open(os.path.join(folder, "weights.hdf5"), "rb") as f:
        assert f.read() == weights
    # a second load is served from the cache: no request at all
    n = len(server.requests)
    ElmoBiLM.from_pretrained(f"{server.url}/good")
    assert len(server.requests) == n


def test_corrupted_download_names_the_file_and_both_digests_and_leaves_nothing(
        server, cache, fixture_bytes):
    options, weights = fixture_bytes
    bad = bytearray(weights)
    bad[len(bad) // 2] ^= 0xFF
    server.add("/bad/options.json", options)
    server.files["/bad/weights.hdf5"] = bytes(bad)
    server.files["/bad/weights.hdf5.sha256"] = f"{_sha(weights)}  weights.hdf5\n".encode()
    with pytest.raises(ChecksumError) as e:
        ElmoBiLM.from_pretrained(f"{server.url}/bad")
    msg = str(e.value)
    assert "weights.hdf5" in msg and _sha(weights) in msg and _sha(bytes(bad)) in msg
    folder = hub._url_folder(f"{server.url}/bad", None)
    assert not any(n.startswith("weights.hdf5") for n in os.listdir(folder))


def test_a_digest_given_by_the_user_is_checked_too(server, cache, fixture_bytes, reference_dir):
    options, weights = fixture_bytes
    server.add("/m/options.json", options)
    server.add("/m/weights.hdf5", weights)  # no .sha256 published
    with pytest.raises(ChecksumError, match="expected " + "0" * 64):
        ElmoBiLM.from_pretrained(f"{server.url}/m", sha256="0" * 64)
    model = ElmoBiLM.from_pretrained(f"{server.url}/m", sha256=_sha(weights).upper())
    _same(model, _reference_model(reference_dir))
    # the cached copy is checked against a later, different expectation without a download
    n = len(server.requests)
    with pytest.raises(ChecksumError, match="cached"):
        ElmoBiLM.from_pretrained(f"{server.url}/m", sha256="1" * 64)
    assert len(server.requests) == n


def test_a_dropped_connection_is_resumed_with_a_range_request(server, cache, fixture_bytes):
    _, weights = fixture_bytes
    server.add("/drop/weights.hdf5", weights, digest=True)
    server.drop["/drop/weights.hdf5"] = 1
    dest = str(cache / "w.hdf5")
    # no retries: the call fails, the first half stays in .partial
    with pytest.raises(DownloadError, match="resumes"):
        hub.download(f"{server.url}/drop/weights.hdf5", dest, retries=0)
    assert os.path.getsize(dest + ".partial") == len(weights) // 2
    assert not os.path.exists(dest)
    # the next call asks only for the rest
    assert hub.download(f"{server.url}/drop/weights.hdf5", dest) == dest
    assert server.requests[-2:] == [("/drop/weights.hdf5", f"bytes={len(weights) // 2}-"),
                                    ("/drop/weights.hdf5.sha256", None)]
    with open(dest, "rb") as f:
        assert f.read() == weights
    assert not os.path.exists(dest + ".partial")


def test_a_drop_is_resumed_within_the_same_call(server, cache, fixture_bytes):
    _, weights = fixture_bytes
    server.add("/drop2/weights.hdf5", weights, digest=True)
    server.drop["/drop2/weights.hdf5"] = 2  # the first request and the first resumption drop
    dest = hub.download(f"{server.url}/drop2/weights.hdf5", str(cache / "w.hdf5"), retries=3)
    with open(dest, "rb") as f:
        assert f.read() == weights
    ranges = [r for p, r in server.requests if p == "/drop2/weights.hdf5"]
    half = len(weights) // 2
    assert ranges == [None, f"bytes={half}-", f"bytes={half + (len(weights) - half) // 2}-"]


def test_a_server_without_range_support_sends_the_whole_file_again(server, cache, fixture_bytes):
    _, weights = fixture_bytes
    server.add("/nr/weights.hdf5", weights, digest=True)
    server.drop["/nr/weights.hdf5"] = 1
    server.no_range.add("/nr/weights.hdf5")
    dest = hub.download(f"{server.url}/nr/weights.hdf5", str(cache / "w.hdf5"))
    with open(dest, "rb") as f:
        assert f.read() == weights


def test_concurrent_loads_download_once_and_stale_locks_are_taken_over(server, cache, fixture_bytes):
    _, weights = fixture_bytes
    server.add("/lock/weights.hdf5", weights, digest=True)
    server.delay["/lock/weights.hdf5"] = 0.5
    url, dest = f"{server.url}/lock/weights.hdf5", str(cache / "w.hdf5")
    results, errors = [], []

    def load():
        try:
            results.append(hub.download(url, dest))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and results == [dest] * 3
    assert [p for p, _ in server.requests].count("/lock/weights.hdf5") == 1
    assert not os.path.exists(dest + ".lock")
    # a lock left by a process that no longer runs is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    other = str(cache / "v.hdf5")
    with open(other + ".lock", "w") as f:
        f.write(dead)
    assert hub.download(url, other) == other
    # a lock held by a live process: wait, then a clear error
    with open(str(cache / "u.hdf5") + ".lock", "w") as f:
        f.write(str(os.getpid()))
    with pytest.raises(DownloadError, match=f"process {os.getpid()} has been downloading"):
        hub.download(url, str(cache / "u.hdf5"), lock_timeout=0.3)


def test_hub_ids_without_huggingface_hub_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"pip install elmo-pytorch\[hub\]"):
        ElmoBiLM.from_pretrained("org/not-local")


def test_missing_files_and_urls_give_clear_errors(server, cache):
    with pytest.raises(FileNotFoundError, match="no model found there"):
        ElmoBiLM.from_pretrained(f"{server.url}/nothing/")
    with pytest.raises(FileNotFoundError, match="HTTP 404"):
        hub.download(f"{server.url}/none.hdf5", str(cache / "x"))
    with pytest.raises(FileNotFoundError, match="no model found"):
        ElmoBiLM.from_pretrained(str(cache / "not-there"))


def test_our_format_served_over_http_round_trips(server, cache, tmp_path, tiny_config):
    model = ElmoBiLM(tiny_config)
    model.save_pretrained(tmp_path / "m")
    for name in os.listdir(tmp_path / "m"):
        with open(tmp_path / "m" / name, "rb") as f:
            server.files[f"/ours/{name}"] = f.read()
    loaded = ElmoBiLM.from_pretrained(f"{server.url}/ours")
    _same(loaded, model)


def test_options_and_weight_file_urls(server, cache, fixture_bytes, reference_dir):
    options, weights = fixture_bytes
    server.add("/files/elmo_options.json", options)
    server.add("/files/elmo_weights.hdf5", weights, digest=True)
    embedder = Embedder.from_pretrained(options_file=f"{server.url}/files/elmo_options.json",
                                        weight_file=f"{server.url}/files/elmo_weights.hdf5", device="cpu")
    _same(embedder.model, _reference_model(reference_dir))
    with pytest.raises(ChecksumError):
        hub.resolve_file(f"{server.url}/files/elmo_options.json", sha256="2" * 64, force_download=True)


def test_the_named_releases_point_at_allennlps_published_files(server, cache, fixture_bytes,
                                                               monkeypatch, reference_dir):
    base = "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo"
    assert hub.release_urls("elmo-original") == (
        f"{base}/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_options.json",
        f"{base}/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5")
    assert hub.release_urls("elmo-small")[1] == (
        f"{base}/2x1024_128_2048cnn_1xhighway/elmo_2x1024_128_2048cnn_1xhighway_weights.hdf5")
    assert hub.release_urls("elmo-medium")[0].endswith("2x2048_256_2048cnn_1xhighway_options.json")
    assert hub.release_urls("elmo-original-5.5b")[0].endswith(
        "2x4096_512_2048cnn_2xhighway_5.5B/elmo_2x4096_512_2048cnn_2xhighway_5.5B_options.json")
    with pytest.raises(ValueError, match="elmo-small, elmo-medium"):
        hub.release_urls("elmo-large")
    # the download path of a release, against the local server instead of the network
    options, weights = fixture_bytes
    stem = "2x1024_128_2048cnn_1xhighway"
    server.add(f"/elmo/{stem}/elmo_{stem}_options.json", options)
    server.add(f"/elmo/{stem}/elmo_{stem}_weights.hdf5", weights)
    monkeypatch.setattr(hub, "_ALLENNLP", f"{server.url}/elmo")
    model = ElmoBiLM.from_pretrained("elmo-small", sha256=_sha(weights))
    _same(model, _reference_model(reference_dir))
    assert os.path.isfile(cache / "allennlp" / "elmo-small" / "weights.hdf5")
    # without network: an error that says so (a port on 127.0.0.1 that nothing listens on)
    closed = _Server()
    closed.close()
    monkeypatch.setattr(hub, "_ALLENNLP", f"{closed.url}/elmo")
    with pytest.raises(DownloadError, match="elmo-medium: the named releases .* need network access"):
        ElmoBiLM.from_pretrained("elmo-medium")


# -- the model hub (huggingface_hub's cache layout, offline) -------------------------------------
def _hub_cache(root, repo: str, snapshots: dict, main: str) -> str:
    """huggingface_hub's layout: models--org--name/{refs/main, snapshots/<commit>/files}."""
    base = os.path.join(root, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(main)
    for commit, folder in snapshots.items():
        shutil.copytree(folder, os.path.join(base, "snapshots", commit))
    return base


A, B = "a" * 40, "b" * 40


@pytest.fixture
def hub_cache(tmp_path, tiny_config, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "conftest must set HF_HUB_OFFLINE=1 before huggingface_hub loads"
    torch.manual_seed(1)
    first = ElmoBiLM(tiny_config)
    first.save_pretrained(tmp_path / "v1")
    torch.manual_seed(2)
    second = ElmoBiLM(tiny_config)
    second.save_pretrained(tmp_path / "v2")
    root = tmp_path / "hf"
    _hub_cache(root, "org/tiny-elmo", {A: tmp_path / "v1", B: tmp_path / "v2"}, main=A)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root, first, second


def test_hub_ids_and_revisions_read_huggingface_hubs_cache(hub_cache):
    root, first, second = hub_cache
    _same(ElmoBiLM.from_pretrained("org/tiny-elmo"), first)
    _same(ElmoBiLM.from_pretrained("org/tiny-elmo", revision=B), second)
    _same(ElmoBiLM.from_pretrained(f"org/tiny-elmo@{B}"), second)
    _same(Embedder.from_pretrained("org/tiny-elmo", revision=B, device="cpu").model, second)
    _same(ElmoBiLM.from_pretrained("hf://org/tiny-elmo", cache=str(root)), first)
    with pytest.raises(ValueError, match="given twice"):
        ElmoBiLM.from_pretrained(f"org/tiny-elmo@{B}", revision=A)
    with pytest.raises(FileNotFoundError, match="org/other-elmo: no model found: there is no local "
                                                "folder of that name"):  # not cached, and offline
        ElmoBiLM.from_pretrained("org/other-elmo")
    with pytest.raises(FileNotFoundError, match="at revision 'v9'"):
        ElmoBiLM.from_pretrained("org/tiny-elmo@v9")


def test_a_corrupted_hub_file_fails_its_published_digest(hub_cache):
    root, _, _ = hub_cache
    snap = root / "models--org--tiny-elmo" / "snapshots" / B
    weights = snap / "elmo_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=f"org/tiny-elmo/elmo_weights.safetensors@{B}: sha256 mismatch"):
        ElmoBiLM.from_pretrained("org/tiny-elmo", revision=B)


def test_push_to_hub_uploads_a_folder_that_from_pretrained_reads_back(tmp_path, tiny_config, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    calls = []
    uploaded = tmp_path / "uploaded"

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **kw):
        calls.append(("upload", repo_id, revision, commit_message))
        shutil.copytree(folder_path, uploaded)
        return "https://hub.invalid/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw.get("private"))))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch",
                        lambda self, repo_id, branch, **kw: calls.append(("branch", repo_id, branch)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = ElmoBiLM(tiny_config)
    assert model.push_to_hub("me/elmo", revision="v1", private=True) == "https://hub.invalid/commit/1"
    assert calls == [("create", "me/elmo", True), ("branch", "me/elmo", "v1"),
                     ("upload", "me/elmo", "v1", "Upload ELMo model")]
    assert sorted(os.listdir(uploaded)) == ["README.md", "elmo_config.json", "elmo_weights.safetensors",
                                            "elmo_weights.safetensors.sha256"]
    card = (uploaded / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: elmo-pytorch\n") and 'from_pretrained("me/elmo")' in card
    # what was uploaded, as the hub would serve it to from_pretrained
    _hub_cache(tmp_path / "hf", "me/elmo", {A: uploaded}, main=A)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    _same(ElmoBiLM.from_pretrained("me/elmo"), model)


def test_cli_accepts_a_url_and_a_hub_id(server, cache, hub_cache, fixture_bytes, tmp_path, reference_dir):
    from elmo.cli import main

    options, weights = fixture_bytes
    server.add("/cli/options.json", options)
    server.add("/cli/weights.hdf5", weights, digest=True)
    text = tmp_path / "in.txt"
    text.write_text("The hub test .\nShort\n")
    assert main([str(text), str(tmp_path / "url.hdf5"), "--top", "--quiet", "--device", "cpu",
                 "--model", f"{server.url}/cli"]) == 0
    assert main([str(text), str(tmp_path / "ref.hdf5"), "--top", "--quiet", "--device", "cpu",
                 "--options-file", f"{server.url}/cli/options.json",
                 "--weight-file", os.path.join(reference_dir, "lm_weights.hdf5")]) == 0
    assert main([str(text), str(tmp_path / "hub.hdf5"), "--top", "--quiet", "--device", "cpu",
                 "--model", f"org/tiny-elmo@{B}"]) == 0
    with h5py.File(tmp_path / "url.hdf5") as a, h5py.File(tmp_path / "ref.hdf5") as b, \
            h5py.File(tmp_path / "hub.hdf5") as c:
        np.testing.assert_array_equal(a["0"][...], b["0"][...])
        np.testing.assert_allclose(c["0"][...], _layers(hub_cache[2])[0][-1], atol=1e-6)
    # a corrupted download is one line on stderr and exit code 2
    server.files["/cli2/options.json"] = options
    server.files["/cli2/weights.hdf5"] = weights[:-1] + b"\0"
    server.files["/cli2/weights.hdf5.sha256"] = f"{_sha(weights)}  weights.hdf5\n".encode()
    assert main([str(text), str(tmp_path / "bad.hdf5"), "--quiet", "--device", "cpu",
                 "--model", f"{server.url}/cli2"]) == 2
    assert not os.path.exists(tmp_path / "bad.hdf5")
    # --sha256: the user's digest for a download that publishes none
    server.add("/cli3/options.json", options)
    server.add("/cli3/weights.hdf5", weights)
    assert main([str(text), str(tmp_path / "s.hdf5"), "--quiet", "--device", "cpu",
                 "--model", f"{server.url}/cli3", "--sha256", "3" * 64]) == 2
    assert main([str(text), str(tmp_path / "s.hdf5"), "--quiet", "--device", "cpu",
                 "--model", f"{server.url}/cli3", "--sha256", _sha(weights)]) == 0


def test_pretrain_init_and_task_model_take_a_url(server, cache, tmp_path, tiny_config):
    from pretrain.export import load_init
    from tasks.cli import _load_elmo
    from tasks.config import TaskConfig

    model = ElmoBiLM(tiny_config)
    model.save_pretrained(tmp_path / "m")
    for name in os.listdir(tmp_path / "m"):
        server.files[f"/init/{name}"] = (tmp_path / "m" / name).read_bytes()
    init = load_init(f"{server.url}/init")
    assert init.vocab is None and init.softmax is None
    _same(init.bilm, model)

    class Args:
        model, options_file, weight_file = f"{server.url}/init", None, None

    cfg = TaskConfig()
    _same(_load_elmo(Args, cfg), model)
    assert cfg.elmo.source == f"{server.url}/init"


def test_the_hub_cache_is_found_through_hf_hub_cache_in_a_fresh_process(hub_cache, tmp_path):
    root, _, second = hub_cache
    text = tmp_path / "in.txt"
    text.write_text("The hub test .\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root), "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "elmo.cli", str(text), str(tmp_path / "o.hdf5"), "--top",
                          "--quiet", "--device", "cpu", "--model", f"org/tiny-elmo@{B}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with h5py.File(tmp_path / "o.hdf5") as f:
        np.testing.assert_allclose(f["0"][...], _layers(second)[0][-1], atol=1e-6)
