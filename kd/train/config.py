"""Run configuration: typed dataclass sections, YAML presets, command-line overrides.

A preset (``configs/*.yaml``) holds sections named like the dataclasses below;
``--set section.key=value`` overrides any field (values parse as YAML, so
``--set train.lr=3e-5`` is a float and ``--set data.fractions=[0.8,0.1,0.1]``
a list). Unknown sections or keys are errors that list the known ones.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kd.data.splits import DataConfig
from kd.errors import UsageError
from kd.train.loop import TrainConfig


class _PlainYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: nested aliases expand
    exponentially (an "alias bomb" of a few lines holds billions of entries), and
    no config of the project needs them."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(problem="anchors and aliases (&name, *name) are not allowed; write the values out",
                                       problem_mark=event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` (from ``where``: a file or an option, for the message) the one
    way the project reads YAML: safe tags only, no anchors or aliases.

    Raises :class:`UsageError` (one line at the command line: where, line,
    column, problem) on any YAML error, including a ``!!python/...`` tag.
    """
    try:
        return yaml.load(text, Loader=_PlainYamlLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{where}{at}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{where}: {' '.join(str(err).split())}") from None


@dataclass
class ModelConfig:
    """Which model to train (YAML section ``model``)."""

    name_or_path: str = "packaged:minilm"
    """Hub name (``bert-base-uncased``), local folder, or ``packaged:minilm`` (the MiniLM-L6 from PyPI)."""
    max_length: int = 128
    """Tokens per URL after truncation (batches are padded only to their longest member)."""
    dropout: float | None = None
    """Override the model's hidden and attention dropout (None: keep the config's)."""
    pretrained: bool = True
    """Load pretrained weights (False: random initialisation from the config)."""

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"model.max_length must be >= 1, got {self.max_length}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1) (or null: keep the model's), got {self.dropout}")


@dataclass
class RunConfig:
    """A whole run: model, data, optimisation and where to write."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/teacher"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, raw: dict, where: str, base=None):
    """Instantiate dataclass ``cls`` from ``raw``, recursing into dataclass fields.

    Keys missing from ``raw`` keep the value of ``base`` (default: ``cls()``),
    so a nested section starts from its parent's default instance: a recipe's
    ``train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))``
    keeps lr 1e-4 when a preset sets only ``train.epochs``.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; known: {sorted(known)}")
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        default = getattr(base, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key, base=default)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return dataclasses.replace(base, **kwargs)


def _coerce(value, hint, key: str):
    """Convert YAML scalars to the field's type: YAML 1.1 reads ``1e-3`` as a string."""
    scalar = next((t for t in (bool, int, float) if hint is t or hint == t | None), None)
    if scalar is None or value is None or isinstance(value, scalar):
        return value
    try:
        if scalar is bool:
            if str(value).lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return str(value).lower() in ("true", "1", "yes")
        if scalar is float:
            return float(value)
        if float(value) != int(float(value)):
            raise ValueError(value)
        return int(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise ValueError(f"{key} must be {scalar.__name__}, got {value!r}") from None


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def teacher_data_section(teacher: str | Path | None) -> dict:
    """The data section recorded in a teacher checkpoint's ``run_info.json`` (``{}`` without one)."""
    info_file = Path(teacher) / "run_info.json" if teacher else None
    if info_file is None or not info_file.is_file():
        return {}
    return json.loads(info_file.read_text())["config"]["data"]


def load_config(cls, preset: str | Path | None = None, overrides: list[str] = (), data_base: dict | None = None):
    """Build ``cls`` (e.g. :class:`RunConfig`) from a YAML preset and ``key=value`` overrides.

    The ``data`` section starts from ``data_base`` (a saved run's, as kd.evaluate
    rebuilds a checkpoint's split) or, for a config with a ``teacher`` field (a
    student's), from the teacher's (:func:`teacher_data_section`, the same split,
    so that no test URL was seen by the teacher); the preset's and the overrides'
    ``data`` keys replace single fields of it.
    """
    tree: dict = {}
    if preset is not None:
        path = Path(preset)
        if not path.is_file():
            configs = Path(__file__).resolve().parents[2] / "configs"
            candidate = configs / f"{preset}.yaml"
            if not candidate.is_file():
                known = sorted(p.stem for p in configs.glob("*.yaml"))
                raise FileNotFoundError(f"no config file {preset!r}; presets in configs/: {known}")
            path = candidate
        tree = read_yaml(path.read_text(), str(path)) or {}
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r} is not key=value (e.g. train.lr=3e-5)")
        set_dotted(tree, key.strip(), read_yaml(value, f"--set {item}"))
    if data_base is None and "teacher" in {f.name for f in dataclasses.fields(cls)}:
        data_base = teacher_data_section(tree.get("teacher", cls().teacher))
    if data_base:
        own = tree.get("data", {})
        if not isinstance(own, dict):
            raise ValueError(f"data must be a mapping, got {type(own).__name__}")
        tree["data"] = {**data_base, **own}
    return _build(cls, tree, "")


class _PlainYamlDumper(yaml.SafeDumper):
    """Writes a value seen twice out again rather than as an alias, which :func:`read_yaml` refuses."""

    def ignore_aliases(self, data) -> bool:
        return True


def save_config(cfg, path: Path) -> None:
    path.write_text(yaml.dump(dataclasses.asdict(cfg), Dumper=_PlainYamlDumper, sort_keys=False))
