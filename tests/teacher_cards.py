"""Checks every shipped teacher must pass against its checkpoint and card (tests/test_*teacher_card.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

import glmha
from glmha.archs import RestorationModel

from conftest import load_example


def card_fixtures(example: str, card: Path, checkpoint: Path):
    """Module-scoped fixtures `script` (the training example), `card` (parsed JSON) and `teacher` (loaded
    with glmha.load); assign them to those names in the test module."""

    @pytest.fixture(scope="module")
    def script() -> ModuleType:
        return load_example(example)

    @pytest.fixture(scope="module", name="card")
    def card_fixture() -> dict:
        return json.loads(card.read_text(encoding="utf-8"))

    @pytest.fixture(scope="module")
    def teacher() -> RestorationModel:
        return glmha.load(checkpoint)

    return script, card_fixture, teacher


def check_official_container(checkpoint: Path, key: str, max_mib: int) -> None:
    """The file is small and holds `{key: state_dict}`, the container the family's authors publish."""
    assert checkpoint.stat().st_size < max_mib * 2**20
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert list(raw) == [key]


def check_card_describes(card: dict, teacher: RestorationModel, script: ModuleType, checkpoint: Path,
                         family: str) -> None:
    """Architecture, hyperparameters (card, model and training script agree), size and file bytes."""
    assert card["architecture"] == family == teacher.family
    assert card["hyperparameters"] == teacher.config.to_dict()
    assert teacher.config == type(teacher.config).from_dict(card["hyperparameters"])
    assert teacher.config.to_dict() == {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in script.TEACHER_CONFIG.items()}
    assert card["parameters"] == sum(p.numel() for p in teacher.parameters())
    assert card["checkpoint"]["bytes"] == checkpoint.stat().st_size


def run_training_script(script: ModuleType, argv: list[str]) -> int:
    """`script.main(argv)`, then restore the thread count and determinism flag the script changes."""
    threads = torch.get_num_threads()
    try:
        return script.main(argv)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
