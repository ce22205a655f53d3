"""load_model: weights resolution order, verified downloads, cache, offline, safe and strict loading."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from audiobench.errors import ConfigError, UnknownNameError, WeightsError
from audiobench.models import MODELS, ModelEntry
from audiobench.models.base import AudioTagger, ModelSpec, WeightsSpec
from audiobench.models.loading import load_model

NAME = "test-loading-tiny"
FILE = "tiny_test_weights.pt"


class _Tiny(AudioTagger):
    """Mean of 8 interleaved sample phases → Linear(8, 527)."""

    def __init__(self, spec, sample_rate=None):
        super().__init__(spec, sample_rate)
        self.net = nn.Linear(8, spec.n_classes)

    def features(self, waveform):
        return waveform.reshape(waveform.shape[0], -1, 8).mean(1)

    def forward_features(self, features):
        return self.net(features)


def _state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(527, 8, generator=g), "bias": torch.randn(527, generator=g)}


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


GOOD = _bytes(_state_dict())
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


class _Server:
    """A threaded http.server on 127.0.0.1 serving a dict of path → bytes (404 otherwise)."""

    def __init__(self, files):
        self.files = files
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server({"/tiny.pt": GOOD})
    yield s
    s.close()


def _register(monkeypatch, url=None, sha256=GOOD_SHA, file_name=FILE):
    spec = ModelSpec(name=NAME, family="cnn", description="tiny test model", sample_rate=16000,
                     weights=WeightsSpec(file_name=file_name, url=url, sha256=sha256, licence="test"))
    monkeypatch.setitem(MODELS._entries, NAME, ModelEntry(spec, _Tiny))
    return spec


def _home() -> Path:
    return Path(os.environ["AUDIOBENCH_HOME"])


@pytest.fixture(autouse=True)
def _fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUDIOBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("AUDIOBENCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _no_warning:
    """Turn warnings into errors inside the block."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_download_verified_and_atomic(monkeypatch, server):
    _register(monkeypatch, url=server.url("/tiny.pt"))
    with _no_warning():  # sha256 pinned: no 'unpinned' warning
        model = load_model(NAME)
    cached = _home() / "weights" / FILE
    assert cached.read_bytes() == GOOD
    assert sorted(p.name for p in cached.parent.iterdir()) == [FILE]  # no temp file left
    assert model.checkpoint_path == str(cached) and model.checkpoint_sha256 == GOOD_SHA
    assert torch.equal(model.net.weight, _state_dict()["weight"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # second load is a cache hit: no new request
    n = len(server.requests)
    load_model(NAME)
    assert len(server.requests) == n


def test_download_wrong_sha_refused_nothing_cached(monkeypatch, server):
    _register(monkeypatch, url=server.url("/tiny.pt"), sha256="0" * 64)
    with pytest.raises(WeightsError) as err:
        load_model(NAME)
    msg = str(err.value)
    assert "sha256" in msg and "does not match" in msg and "--checkpoint" in msg and "\n" not in msg
    wdir = _home() / "weights"
    assert not wdir.exists() or list(wdir.iterdir()) == []


def test_download_404(monkeypatch, server):
    _register(monkeypatch, url=server.url("/missing.pt"))
    with pytest.raises(WeightsError) as err:
        load_model(NAME)
    assert "404" in str(err.value) and FILE in str(err.value) and "AUDIOBENCH_WEIGHTS" in str(err.value)
    assert list((_home() / "weights").iterdir()) == []


def test_connection_refused_is_fast(monkeypatch):
    _register(monkeypatch, url=f"http://127.0.0.1:{_refused_port()}/tiny.pt")
    t0 = time.monotonic()
    with pytest.raises(WeightsError) as err:
        load_model(NAME)
    assert time.monotonic() - t0 < 5
    assert "failed" in str(err.value) and "--checkpoint" in str(err.value)


def test_offline_skips_download(monkeypatch, server):
    _register(monkeypatch, url=server.url("/tiny.pt"))
    for var in ("AUDIOBENCH_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        with pytest.raises(WeightsError) as err:
            load_model(NAME)
        msg = str(err.value)
        assert "offline" in msg and f"put {FILE} in {_home() / 'weights'}" in msg and "--checkpoint" in msg
        monkeypatch.delenv(var)
    assert server.requests == []


def test_cache_hit_without_network(monkeypatch):
    _register(monkeypatch, url=f"http://127.0.0.1:{_refused_port()}/tiny.pt")
    (_home() / "weights").mkdir(parents=True)
    (_home() / "weights" / FILE).write_bytes(GOOD)
    model = load_model(NAME)
    assert model.checkpoint_sha256 == GOOD_SHA
    assert torch.equal(model.net.bias, _state_dict()["bias"])


def test_cached_file_with_wrong_sha_is_refused(monkeypatch):
    _register(monkeypatch, url=None)
    (_home() / "weights").mkdir(parents=True)
    bad = _home() / "weights" / FILE
    bad.write_bytes(_bytes(_state_dict(seed=1)))
    with pytest.raises(WeightsError) as err:
        load_model(NAME)
    assert str(bad) in str(err.value) and "does not match" in str(err.value)


def test_audiobench_weights_dirs(monkeypatch, tmp_path):
    _register(monkeypatch, url=None)
    d1, d2 = tmp_path / "w1", tmp_path / "w2"
    d1.mkdir()
    d2.mkdir()
    (d2 / FILE).write_bytes(GOOD)
    monkeypatch.setenv("AUDIOBENCH_WEIGHTS", os.pathsep.join([str(d1), str(d2)]))
    model = load_model(NAME)
    assert model.checkpoint_path == str(d2 / FILE)
    # no URL and nothing anywhere: the message says so
    (d2 / FILE).unlink()
    with pytest.raises(WeightsError, match="no download URL"):
        load_model(NAME)


def test_user_checkpoint_need_not_match_spec_sha(monkeypatch, tmp_path):
    _register(monkeypatch, url=None)
    other = _bytes({"model": _state_dict(seed=3)})  # {"model": sd} wrapper accepted too
    p = tmp_path / "mine.pth"
    p.write_bytes(other)
    model = load_model(NAME, checkpoint=p)
    assert model.checkpoint_sha256 == hashlib.sha256(other).hexdigest() != GOOD_SHA
    assert model.checkpoint_path == str(p)
    assert torch.equal(model.net.weight, _state_dict(seed=3)["weight"])


def test_safetensors_checkpoint(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    _register(monkeypatch, url=None)
    p = tmp_path / "tiny.safetensors"
    save_file(_state_dict(seed=4), str(p))
    model = load_model(NAME, checkpoint=str(p))
    assert torch.equal(model.net.weight, _state_dict(seed=4)["weight"])


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_pickle_payload_refused_and_not_run(monkeypatch, tmp_path):
    # the payload is live: plain unpickling does create its marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()

    _register(monkeypatch, url=None)
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"model": _state_dict(), "extra": _Payload(marker)}, ckpt)
    with pytest.raises(WeightsError) as err:
        load_model(NAME, checkpoint=ckpt)
    assert "refused" in str(err.value) and str(ckpt) in str(err.value)
    assert not marker.exists()


def test_mismatched_keys_and_shapes_name_first_offender(monkeypatch, tmp_path):
    _register(monkeypatch, url=None)
    sd = _state_dict()
    missing = tmp_path / "missing.pt"
    torch.save({"weight": sd["weight"]}, missing)
    with pytest.raises(WeightsError, match=r"missing key 'bias'"):
        load_model(NAME, checkpoint=missing)
    shaped = tmp_path / "shaped.pt"
    torch.save({"weight": sd["weight"][:, :4], "bias": sd["bias"]}, shaped)
    with pytest.raises(WeightsError) as err:
        load_model(NAME, checkpoint=shaped)
    assert "'weight'" in str(err.value) and "(527, 4)" in str(err.value) and "(527, 8)" in str(err.value)
    extra = tmp_path / "extra.pt"
    torch.save({**sd, "head.weight": sd["bias"]}, extra)
    with pytest.raises(WeightsError, match=r"unexpected key 'head.weight'"):
        load_model(NAME, checkpoint=extra)


def test_bad_checkpoint_paths(monkeypatch, tmp_path):
    _register(monkeypatch, url=None)
    with pytest.raises(WeightsError, match="not found"):
        load_model(NAME, checkpoint=tmp_path / "nope.pt")
    folder = tmp_path / "hf_dir"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="is a folder"):
        load_model(NAME, checkpoint=folder)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="junk.pt"):
        load_model(NAME, checkpoint=junk)


def test_folder_checkpoint_passed_to_wrappers_that_accept_it(monkeypatch, tmp_path):
    seen = {}

    class _DirTiny(_Tiny):
        accepts_checkpoint_dir = True

        def load_checkpoint(self, obj, what="checkpoint"):
            seen["obj"] = obj

    spec = _register(monkeypatch, url=None)
    monkeypatch.setitem(MODELS._entries, NAME, ModelEntry(spec, _DirTiny))
    folder = tmp_path / "hf_dir"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    model = load_model(NAME, checkpoint=folder)
    assert seen["obj"] == folder
    assert model.checkpoint_path == str(folder) and len(model.checkpoint_sha256) == 64


def test_random_weights_and_options(monkeypatch):
    _register(monkeypatch, url=None)
    model = load_model(NAME, weights="random", sample_rate=8000)
    assert model.checkpoint_path is None and model.checkpoint_sha256 is None
    assert model.sample_rate == 8000 and not model.training
    assert model(torch.zeros(2, 64)).shape == (2, 527)
    with pytest.raises(ConfigError):
        load_model(NAME, weights="pretrained")
    with pytest.raises(ConfigError):
        load_model(NAME, weights="random", device="tpu:9")
    with pytest.raises(UnknownNameError, match="Did you mean"):
        load_model("efficientat-mn4")


def test_public_api_delegates(monkeypatch):
    import audiobench

    _register(monkeypatch, url=None)
    model = audiobench.load_model(NAME, weights="random")
    assert isinstance(model, _Tiny)


def test_unpinned_download_warns_with_sha(monkeypatch, server):
    _register(monkeypatch, url=server.url("/tiny.pt"), sha256=None)
    with pytest.warns(UserWarning, match=GOOD_SHA):
        model = load_model(NAME)
    assert model.checkpoint_sha256 == GOOD_SHA
