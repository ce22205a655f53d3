"""Vocabularies: full CSV, partial embedded entries, hashes, lookups and where the default comes from."""

from __future__ import annotations

import pytest

from audiobench.data import DataError, Vocabulary, default_vocabulary, load_vocabulary, open_dataset
from audiobench.data.vocab import AUDIOSET_VOCAB_HASH, cache_vocabulary, cached_vocabulary_path, mids_hash


def _csv(tmp_path, rows, name="v.csv"):
    p = tmp_path / name
    p.write_text("index,mid,display_name\n" + "".join(f'{i},{m},"{n}"\n' for i, m, n in rows))
    return p


def test_small_vocabulary_lookup_and_hash(tmp_path):
    v = load_vocabulary(_csv(tmp_path, [(0, "/m/a", "Alpha"), (1, "/m/b", "Beep, bleep"), (2, "/m/c", "Gamma")]))
    assert v.size == 3 and not v.partial
    assert v.mids == ["/m/a", "/m/b", "/m/c"] and v.names == ["Alpha", "Beep, bleep", "Gamma"]
    assert v.index_of("/m/b") == 1 and v.index_of("Beep, bleep") == 1 and v.index_of(" gamma ") == 2
    assert v.name_of(2) == "Gamma" and v.mid_of(0) == "/m/a"
    assert v.hash == mids_hash(["/m/a", "/m/b", "/m/c"])
    with pytest.raises(DataError, match=r"unknown label 'Gama'.*did you mean 'Gamma'"):
        v.index_of("Gama")


def test_malformed_vocabulary_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_vocabulary(tmp_path / "nope.csv")
    (tmp_path / "h.csv").write_text("idx,mid,name\n0,/m/a,A\n")
    with pytest.raises(DataError, match="header"):
        load_vocabulary(tmp_path / "h.csv")
    with pytest.raises(DataError, match="not contiguous"):
        load_vocabulary(_csv(tmp_path, [(0, "/m/a", "A"), (2, "/m/c", "C")], "gap.csv"))
    with pytest.raises(DataError, match="listed twice"):
        load_vocabulary(_csv(tmp_path, [(0, "/m/a", "A"), (0, "/m/c", "C")], "dup.csv"))


def test_partial_vocabulary_roundtrip():
    v = Vocabulary(527, [(419, "/m/03l9g", "Hammer")], full_hash=AUDIOSET_VOCAB_HASH)
    assert v.partial and v.hash == AUDIOSET_VOCAB_HASH
    assert v.name_of(0) == "class 0" and v.mid_of(0) == "" and v.name_of(419) == "Hammer"
    w = Vocabulary.from_manifest(v.to_manifest())
    assert w.hash == v.hash and w.entries() == [(419, "/m/03l9g", "Hammer")]


def test_full_audioset_vocabulary(shared_dir):
    v = load_vocabulary(shared_dir / "audioset" / "class_labels_indices.csv")
    assert v.size == 527 and v.hash == AUDIOSET_VOCAB_HASH
    assert v.index_of("Hammer") == 419 and v.index_of("/m/03l9g") == 419 and v.name_of(0) == "Speech"


def test_default_vocabulary_precedence(shared_dir, tmp_path, monkeypatch):
    full = shared_dir / "audioset" / "class_labels_indices.csv"
    monkeypatch.setenv("AUDIOBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUDIOBENCH_VOCAB", raising=False)
    assert default_vocabulary().partial  # nothing available: the toy set's partial vocabulary
    cache_vocabulary(full)
    assert cached_vocabulary_path().exists() and not default_vocabulary().partial
    small = _csv(tmp_path, [(0, "/m/a", "A")])
    monkeypatch.setenv("AUDIOBENCH_VOCAB", str(small))
    assert default_vocabulary().size == 1
    assert default_vocabulary(full).size == 527  # explicit path wins
    monkeypatch.setenv("AUDIOBENCH_VOCAB", str(full))
    with open_dataset("toy") as ds:  # the manifest's partial vocabulary is upgraded to the full one
        assert not ds.vocab.partial and ds.vocab.name_of(0) == "Speech"
    with pytest.raises(DataError, match="is not the dataset's"):
        open_dataset("toy", vocab=small)
