"""Models without editing audiobench: ``module:factory``, entry-point plugins, provenance, variants.

The plugin tests here write a minimal installed distribution (``*.dist-info`` with
``entry_points.txt``) straight onto ``sys.path``: what pip would leave, without the build. The
example plugin package (examples/plugin) is pip-installed offline into a temporary folder, listed
and benchmarked by name in subprocesses by tests/test_docs_byom.py (the walk-through's commands).
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
import types
import warnings

import pytest
import torch

from audiobench.errors import AudiobenchError, ConfigError, UnknownNameError, WeightsError
from audiobench.models import plugins
from audiobench.models.contract import ModelContractError, probe_model
from audiobench.models.resolve import check_model_source, model_provenance, resolve_model, split_variant, verify_provenance

MODULE = '''
import torch
from torch import nn

CALLS = []


class Tiny(nn.Module):
    """Tiny test tagger: strided conv, mean over time, linear."""

    sample_rate = 16000

    def __init__(self, n=527):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 64, stride=32)
        self.fc = nn.Linear(4, n)

    def forward(self, w):
        return self.fc(torch.tanh(self.conv(w[:, None])).mean(-1))


def make(checkpoint=None, sample_rate=None, device=None):
    CALLS.append(dict(checkpoint=checkpoint, sample_rate=sample_rate, device=device))
    model = Tiny()
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model


def make_plain():
    return Tiny()


def make_raises():
    raise ValueError("no weights for this size\\nsecond line of detail")


def make_wrong_type():
    return {"not": "a model"}


def make_wrong_shape():
    class Flat(Tiny):
        def forward(self, w):
            return super().forward(w)[:, :10, None]
    return Flat()


def make_nan():
    class NaN(Tiny):
        def forward(self, w):
            return super().forward(w) * float("nan")
    return NaN()


def make_needs_args(width):
    return Tiny(width)
'''


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh module ``byom_user_<n>`` on sys.path; returns its name and file."""
    name = f"byom_user_{abs(hash(tmp_path)) % 10**8}"
    path = tmp_path / f"{name}.py"
    path.write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, path
    sys.modules.pop(name, None)


# --- module:factory --------------------------------------------------------------------------------
def test_module_factory_is_wrapped_probed_and_recorded(user_module, tmp_path):
    name, path = user_module
    model = resolve_model(f"{name}:make", sample_rate=32000)
    assert model.spec.name == f"{name}:make" and model.sample_rate == 32000 and model.spec.sample_rate == 16000
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    probe_model(model, sample_rate=32000, n_classes=527, needs_grad=True)
    calls = sys.modules[name].CALLS
    assert calls[-1] == {"checkpoint": None, "sample_rate": 32000, "device": "cpu"}
    prov = model_provenance(model)
    assert prov["kind"] == "module" and prov["module"] == name and prov["factory"] == "make"
    assert prov["source_files"] == [{"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    assert verify_provenance(prov) == []
    path.write_text(MODULE + "\n# edited\n")
    assert any("changed" in p for p in verify_provenance(prov))


def test_checkpoint_is_passed_to_the_factory_and_hashed(user_module, tmp_path):
    name, _ = user_module
    mod = __import__(name)
    ckpt = tmp_path / "w.pt"
    torch.save(mod.Tiny().state_dict(), ckpt)
    model = resolve_model(f"{name}:make", checkpoint=ckpt)
    assert mod.CALLS[-1]["checkpoint"] == str(ckpt)
    prov = model_provenance(model)
    assert prov["checkpoint"] == str(ckpt) and prov["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert model.checkpoint_sha256 == prov["checkpoint_sha256"]
    with pytest.raises(WeightsError) as e:
        resolve_model(f"{name}:make", checkpoint=tmp_path / "missing.pt")
    assert "checkpoint not found" in one_line(e)


def test_a_zero_argument_factory_works_and_refuses_a_checkpoint(user_module, tmp_path):
    name, _ = user_module
    assert resolve_model(f"{name}:make_plain").spec.n_classes == 527
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError) as e:
        resolve_model(f"{name}:make_plain", checkpoint=ckpt)
    assert "takes no 'checkpoint' argument" in one_line(e)


@pytest.mark.parametrize("factory, error, expected", [
    ("make_raises", ModelContractError, "its factory raised ValueError: no weights for this size"),
    ("make_wrong_type", ModelContractError, "gave a builtins.dict, expected a torch.nn.Module"),
    ("make_wrong_shape", ModelContractError, "returned shape (1, 10, 1)"),
    ("make_nan", ModelContractError, "returned NaN or inf logits"),
    ("make_needs_args", ConfigError, "its factory needs the argument 'width'"),
    ("no_such_factory", ConfigError, "has no attribute 'no_such_factory'"),
])
def test_bad_factories_are_one_line(user_module, factory, error, expected):
    name, _ = user_module
    with pytest.raises(error) as e:
        resolve_model(f"{name}:{factory}")
    msg = one_line(e)
    assert expected in msg and "second line" not in msg


def test_unimportable_modules_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        resolve_model("no_such_module_xyz:make")
    assert "cannot import module 'no_such_module_xyz'" in one_line(e)
    (tmp_path / "byom_broken_import.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as e:
        resolve_model("byom_broken_import:make")
    assert "importing module 'byom_broken_import' failed: ModuleNotFoundError" in one_line(e)


def test_the_current_directory_is_searched(tmp_path, monkeypatch):
    (tmp_path / "byom_cwd_module.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert resolve_model("byom_cwd_module:make_plain").spec.name == "byom_cwd_module:make_plain"
        assert str(tmp_path) not in sys.path  # searched for the import only
    finally:
        sys.modules.pop("byom_cwd_module", None)


def test_model_objects_resolve_like_factories(user_module):
    name, path = user_module
    mod = __import__(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as factories are called: the same initial weights
        obj = mod.Tiny()
    model = resolve_model(obj, sample_rate=16000, name="my-object")
    prov = model_provenance(model)
    assert model.spec.name == "my-object" and prov["kind"] == "object" and prov["class"] == f"{name}.Tiny"
    assert prov["source_files"][0]["path"] == str(path.resolve())
    via_factory = resolve_model(f"{name}:make_plain")
    x = torch.rand(2, 16000) - 0.5
    assert torch.equal(model(x), via_factory(x))  # same seeded weights either way
    assert prov["state_dict_sha256"] == model_provenance(via_factory)["state_dict_sha256"]


# --- names, variants ----------------------------------------------------------------------------------
def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownNameError) as e:
        resolve_model("toy-cn")
    msg = one_line(e)
    assert "Did you mean 'toy-cnn'" in msg and "module:factory" in msg
    with pytest.raises(UnknownNameError):
        check_model_source("toy-cn")
    check_model_source("toy-cnn")
    check_model_source("pkg.mod:make")
    check_model_source("hf:./anything")


def test_variant_suffix_is_split_and_applied_in_one_place(monkeypatch):
    assert split_variant("ast@int8") == ("ast", "int8") and split_variant("toy-cnn") == ("toy-cnn", None)
    assert split_variant("hf:org/name#abc@int8") == ("hf:org/name#abc", "int8")
    monkeypatch.setitem(sys.modules, "audiobench.models.quantize", None)  # not available
    with pytest.raises(ConfigError) as e:
        resolve_model("toy-cnn@int8", weights="random")
    assert "model variants ('@int8') are not available" in one_line(e)
    with pytest.raises(ConfigError):
        check_model_source("toy-cnn@int8")
    calls = []
    fake = types.ModuleType("audiobench.models.quantize")
    fake.apply_variant = lambda model, variant: calls.append(variant) or model
    monkeypatch.setitem(sys.modules, "audiobench.models.quantize", fake)
    model = resolve_model("toy-cnn@int8", weights="random")
    assert calls == ["int8"] and model_provenance(model)["variant"] == "int8"


def test_registered_models_resolve_with_provenance():
    model = resolve_model("toy-cnn", sample_rate=32000)
    prov = model_provenance(model)
    assert prov["kind"] == "registered" and prov["checkpoint_sha256"] == model.checkpoint_sha256
    assert model.sample_rate == 32000 and verify_provenance(prov) == []


# --- entry-point plugins ---------------------------------------------------------------------------
PLUGIN_MODULE = '''
import torch
from torch import nn
from audiobench.models.base import ModelSpec


class Mean(nn.Module):
    sample_rate = 16000

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 527)

    def forward(self, w):
        return self.fc(w.abs().mean(-1, keepdim=True))


def register(registry):
    for n in ("fake-one", "fake-two"):
        registry.register_model(ModelSpec(name=n, family="cnn", description=f"{n} test plugin", sample_rate=16000,
                                          reference_mAP=0.25), Mean)


def register_broken(registry):
    raise RuntimeError("plugin exploded\\ndetails")


def register_clash(registry):
    registry.register_model(ModelSpec(name="toy-cnn", family="cnn", description="clash", sample_rate=16000), Mean)
'''


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """An installed distribution 'byom-fake-plugin' 1.2.3 with three entry points on sys.path."""
    site = tmp_path / "site"
    (site / "byom_fake_plugin").mkdir(parents=True)
    (site / "byom_fake_plugin" / "__init__.py").write_text(PLUGIN_MODULE)
    info = site / "byom_fake_plugin-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: byom-fake-plugin\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [audiobench.models]
        fake = byom_fake_plugin:register
        broken = byom_fake_plugin:register_broken
        clash = byom_fake_plugin:register_clash
        """))
    (info / "RECORD").write_text("byom_fake_plugin/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    plugins.reset_plugins()
    yield site
    plugins.reset_plugins()
    sys.modules.pop("byom_fake_plugin", None)


def test_plugins_are_listed_with_their_package_and_usable_by_name(fake_plugin):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = {r.name: r for r in plugins.list_models()}
    assert rows["toy-cnn"].source == "audiobench"
    one = rows["fake-one"]
    assert (one.source, one.version, one.family, one.sample_rate, one.reference_mAP) == ("byom-fake-plugin", "1.2.3", "cnn", 16000, 0.25)
    assert "fake-two" in rows and one.line().endswith("[byom-fake-plugin 1.2.3]")
    texts = [str(w.message) for w in caught]
    assert any("plugin broken" in t and "RuntimeError: plugin exploded" in t for t in texts)
    assert any("'toy-cnn' is already a built-in audiobench model" in t for t in texts)
    assert all("\n" not in t for t in texts)
    model = resolve_model("fake-two", sample_rate=16000)
    probe_model(model, sample_rate=16000, n_classes=527, needs_grad=True)
    prov = model_provenance(model)
    assert (prov["kind"], prov["distribution"], prov["version"], prov["entry_point"]) == ("plugin", "byom-fake-plugin", "1.2.3", "fake")
    src = fake_plugin / "byom_fake_plugin" / "__init__.py"
    assert prov["source_files"] == [{"path": str(src.resolve()), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]


def test_a_broken_plugin_reports_its_error_when_asked_for(fake_plugin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AudiobenchError) as e:
            resolve_model("broken")
    assert "failed to load: RuntimeError: plugin exploded" in one_line(e)
