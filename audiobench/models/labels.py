"""Aligning a model's classes with the dataset's vocabulary, and the label-map file.

A model's logit columns have meanings (its ``labels``, or ``config.id2label`` for Hugging Face
models, or the AudioSet vocabulary for the registered models); the dataset's targets follow the
dataset's :class:`~audiobench.data.vocab.Vocabulary`. :func:`plan_labels` decides how the model's
logits become logits in the DATASET's class order:

* same class count, and the labels match the dataset's classes by AudioSet MID or display name
  (case and spacing ignored): the columns are reordered; no labels at all: taken in order;
* a different class count, or labels that cannot be aligned: refused with one line, unless a
  label map is given;
* ``--label-map FILE``: a CSV with the header ``model_class,dataset_class``, one row per pair.
  Each cell is a class index (0-based), an AudioSet MID or a display name, looked up in the
  model's labels and in the dataset vocabulary respectively. Several model classes may map to one
  dataset class: its logit is then the MAXIMUM of theirs (a monotone choice: sigmoid(max) is the
  max of the probabilities, so "any of these classes" scores as the most confident one). Model
  classes that are not mapped are dropped.

Every dataset class must receive at least one model class. A dataset class the model lacks is
refused rather than given a constant (e.g. -inf) logit: a constant score would silently change
mAP (the class's AP becomes its positive rate) and make the attacks' BCE loss infinite on its
positives; the user should drop the class from the data or map it explicitly.

:class:`LabelMappedTagger` applies a plan to any wrapped model (a gather, then a max over each
dataset class's group): differentiable, batched, and it keeps features and embeddings unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from audiobench.errors import ConfigError, DataError
from audiobench.models import base as _base
from audiobench.models.contract import EMBEDDING, ModelContractError, capabilities

LABEL_MAP_HEADER = ("model_class", "dataset_class")


@dataclasses.dataclass(frozen=True)
class LabelPlan:
    """How model logits become dataset logits: ``groups[k]`` = model columns of dataset class k."""

    groups: Tuple[Tuple[int, ...], ...]
    n_model_classes: int
    how: str  # "identity" | "aligned by MID/name" | "label map"
    label_map: Optional[str] = None
    label_map_sha256: Optional[str] = None

    @property
    def is_identity(self) -> bool:
        return len(self.groups) == self.n_model_classes and all(g == (k,) for k, g in enumerate(self.groups))

    def describe(self) -> Dict[str, object]:
        return {
            "how": self.how,
            "n_model_classes": self.n_model_classes,
            "n_dataset_classes": len(self.groups),
            "identity": self.is_identity,
            "label_map": self.label_map,
            "label_map_sha256": self.label_map_sha256,
        }


def _norm(label: str) -> str:
    return " ".join(str(label).split()).lower()


def _listing(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(s) for s in items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")


def read_label_map(path: Union[str, Path]) -> List[Tuple[int, str, str]]:
    """Rows ``(line number, model_class, dataset_class)`` of a label-map CSV (see the module doc)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"label map {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"label map {path} cannot be read: {exc}") from None
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header = tuple(h.strip().lower() for h in next(reader, []))
    if header != LABEL_MAP_HEADER:
        raise ConfigError(f"label map {path}: header must be 'model_class,dataset_class', got {','.join(header)!r}")
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"label map {path}: line {lineno} must be 'model_class,dataset_class', got {','.join(row)!r}")
        rows.append((lineno, row[0].strip(), row[1].strip()))
    if not rows:
        raise ConfigError(f"label map {path} maps no classes")
    return rows


class _ModelClasses:
    """Look-up of a model class by index, label (exact, then case/space-insensitive) or MID."""

    def __init__(self, n: int, labels: Optional[Sequence[str]], vocab=None):
        self.n = n
        self.labels = list(labels) if labels is not None else None
        self.vocab = vocab  # a Vocabulary naming the model's classes (registered models), or None
        self.exact: Dict[str, int] = {}
        self.loose: Dict[str, int] = {}
        for i, lab in enumerate(self.labels or []):
            self.exact.setdefault(lab, i)
            self.loose.setdefault(_norm(lab), i)

    def find(self, key: str) -> Optional[int]:
        if key in self.exact:
            return self.exact[key]
        if _norm(key) in self.loose:
            return self.loose[_norm(key)]
        return None

    def lookup(self, key: str) -> int:
        if re.fullmatch(r"\d+", key):
            i = int(key)
            if i >= self.n:
                raise ConfigError(f"model class {i} is out of range (the model has {self.n} classes)")
            return i
        found = self.find(key)
        if found is not None:
            return found
        if self.vocab is not None:
            try:
                return self.vocab.index_of(key)
            except DataError as exc:
                raise ConfigError(str(exc)) from None
        what = "its labels" if self.labels is not None else "it has no labels, so use class indices"
        raise ConfigError(f"model class {key!r} is not a class of the model ({what})")


def _dataset_lookup(vocab, key: str) -> int:
    if re.fullmatch(r"\d+", key):
        i = int(key)
        if i >= vocab.size:
            raise ConfigError(f"dataset class {i} is out of range (the vocabulary has {vocab.size} classes)")
        return i
    try:
        return vocab.index_of(key)
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def plan_from_label_map(name: str, path: Union[str, Path], n_model_classes: int, labels: Optional[Sequence[str]],
                        vocab, model_vocab=None) -> LabelPlan:
    from audiobench.models.weights import file_sha256

    path = Path(path).expanduser()
    model_classes = _ModelClasses(n_model_classes, labels, model_vocab)
    groups: List[List[int]] = [[] for _ in range(vocab.size)]
    for lineno, mcls, dcls in read_label_map(path):
        try:
            m = model_classes.lookup(mcls)
            d = _dataset_lookup(vocab, dcls)
        except ConfigError as exc:
            raise ConfigError(f"label map {path}, line {lineno}: {exc}") from None
        if m not in groups[d]:
            groups[d].append(m)
    missing = [vocab.name_of(k) for k, g in enumerate(groups) if not g]
    if missing:
        raise ModelContractError(
            f"label map {path} gives no model class for dataset classes {_listing(missing)}; every dataset class "
            f"needs one (drop the others from the data)"
        )
    return LabelPlan(tuple(tuple(sorted(g)) for g in groups), n_model_classes, "label map", str(path), file_sha256(path))


def plan_labels(name: str, *, n_model_classes: int, labels: Optional[Sequence[str]], vocab,
                label_map: Union[str, Path, None] = None, model_vocab_hash: Optional[str] = None,
                model_vocab=None) -> LabelPlan:
    """Decide how model ``name``'s logits map to the dataset vocabulary ``vocab`` (see the module doc).

    ``labels``: the model's class names/MIDs (None: unlabelled). ``model_vocab_hash``: for models
    trained on a known vocabulary (the registered AudioSet models), its hash; such a model aligns
    by identity exactly when the dataset's vocabulary has that hash. ``model_vocab``: that
    vocabulary, to look label-map names up in.
    """
    if label_map is not None:
        return plan_from_label_map(name, label_map, n_model_classes, labels, vocab, model_vocab)
    hint = "give a label map (CSV model_class,dataset_class; --label-map FILE)"
    if n_model_classes != vocab.size:
        raise ModelContractError(
            f"model {name} has {n_model_classes} classes but the dataset vocabulary has {vocab.size}; {hint}"
        )
    identity = LabelPlan(tuple((k,) for k in range(vocab.size)), n_model_classes, "identity")
    if model_vocab_hash is not None:
        if vocab.hash == model_vocab_hash:
            return identity
        raise ModelContractError(
            f"model {name} was trained on another vocabulary than the dataset's (hash {model_vocab_hash[:12]} vs "
            f"{vocab.hash[:12]}); {hint}"
        )
    if labels is None:
        return identity  # unlabelled: columns are taken in the dataset's order
    model_classes = _ModelClasses(n_model_classes, labels)
    groups: List[Optional[int]] = []
    for k in range(vocab.size):
        found = None
        if vocab.known(k):
            mid = vocab.mid_of(k)
            found = model_classes.find(mid) if mid else None
            if found is None:
                found = model_classes.find(vocab.name_of(k))
        groups.append(found)
    known = [k for k in range(vocab.size) if vocab.known(k)]
    unmatched = [vocab.name_of(k) for k in known if groups[k] is None]
    taken = [g for g in groups if g is not None]
    if not unmatched and known and len(set(taken)) == len(taken):
        if len(known) == vocab.size:
            plan = LabelPlan(tuple((g,) for g in groups), n_model_classes, "aligned by MID/name")
            return identity if plan.is_identity else plan
        # a partial vocabulary (some entries unknown): its known entries must sit at their own index
        if all(groups[k] == k for k in known):
            return identity
    if unmatched:
        why = f"dataset classes {_listing(unmatched)} match no model label by MID or display name"
    elif not known:
        why = "the dataset vocabulary names none of its classes"
    elif len(set(taken)) != len(taken):
        why = "several dataset classes match the same model label"
    else:
        why = "the dataset vocabulary is partial and its known classes are not at the model's indices"
    raise ModelContractError(f"model {name}: its labels cannot be aligned with the dataset vocabulary: {why}; {hint}")


class LabelMappedTagger(_base.AudioTagger):
    """A wrapped model whose logits are re-expressed in the dataset's class order by a
    :class:`LabelPlan` (gather; max over several model classes of one dataset class)."""

    def __init__(self, inner: _base.AudioTagger, plan: LabelPlan):
        spec = dataclasses.replace(inner.spec, n_classes=len(plan.groups), vocabulary=f"{inner.spec.vocabulary} -> dataset ({plan.how})")
        super().__init__(spec, inner.sample_rate)
        self.inner = inner
        self.plan = plan
        width = max(len(g) for g in plan.groups)
        # groups padded by repeating their first column: the max is unchanged
        index = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in plan.groups], dtype=torch.long)
        self.register_buffer("class_index", index, persistent=False)
        self.contract_capabilities = capabilities(inner)
        self.labels = getattr(inner, "labels", None)
        for attr in ("checkpoint_path", "checkpoint_sha256"):
            setattr(self, attr, getattr(inner, attr, None))

    def map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.plan.n_model_classes:
            raise ValueError(
                f"model returned logits of shape {tuple(logits.shape)}, expected (batch, {self.plan.n_model_classes}) "
                f"(its labels / label map cover {self.plan.n_model_classes} classes)"
            )
        if self.class_index.shape[1] == 1:
            return logits.index_select(1, self.class_index[:, 0])
        return logits[:, self.class_index].amax(dim=-1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.map_logits(self.inner(waveform))

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.inner.features(waveform)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.map_logits(self.inner.forward_features(features))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        if EMBEDDING not in self.contract_capabilities:
            return super().embed_features(features)
        return self.inner.embed_features(features)

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        if EMBEDDING not in self.contract_capabilities:
            return super().head(embedding)
        return self.map_logits(self.inner.head(embedding))

    def load_checkpoint(self, obj, what: str = "checkpoint") -> None:
        self.inner.load_checkpoint(obj, what)
