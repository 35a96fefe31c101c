"""Config loading: presets and overrides start from each recipe's own defaults."""
import dataclasses

import pytest

from kd.train.config import RunConfig, load_config
from kd.train.generative import QLoRARunConfig
from kd.train.student import StudentRunConfig

RECIPE_CONFIGS = [RunConfig, StudentRunConfig, QLoRARunConfig]


def nested_sections(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(getattr(cls(), f.name))]


@pytest.mark.parametrize("cls", RECIPE_CONFIGS, ids=lambda c: c.__name__)
def test_a_partial_section_keeps_the_recipes_other_defaults(cls, tmp_path, monkeypatch):
    # Away from any runs/teacher-minilm/best: a student's data section starts from its teacher's.
    monkeypatch.chdir(tmp_path)
    default = cls()
    for section in nested_sections(cls):
        # Override one field of the section with a value of its own type that differs from the default.
        field = next(f for f in dataclasses.fields(getattr(default, section)) if f.type in ("int", int))
        value = getattr(getattr(default, section), field.name) + 1
        cfg = load_config(cls, None, [f"{section}.{field.name}={value}"])
        assert getattr(cfg, section) == dataclasses.replace(getattr(default, section), **{field.name: value}), section


def test_recipe_training_defaults_survive_an_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qlora = load_config(QLoRARunConfig, None, ["train.epochs=2"]).train
    assert (qlora.epochs, qlora.lr, qlora.batch_size, qlora.eval_batch_size) == (2, 2e-4, 16, 64)
    student = load_config(StudentRunConfig, None, ["train.epochs=2"]).train
    assert (student.epochs, student.lr) == (2, 1e-4)
