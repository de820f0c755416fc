"""The evaluation protocol as the configs compose it: every family is scored on the same test images."""

from pathlib import Path

import pytest
import yaml

from genbench.bench.config import EvalConfig
from genbench.bench.run import config_files, profiles
from genbench.data import dataset_names
from genbench.models import registry

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _merge(base: dict, override: dict) -> dict:
    """jsonargparse's composition of --config files: later files override earlier ones key by key."""
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolved_evaluation(model: str, data: str, profile: str) -> EvalConfig:
    cfg: dict = {}
    for f in config_files(CONFIGS, model, data, profile):
        cfg = _merge(cfg, yaml.safe_load(f.read_text()) or {})
    return EvalConfig(**cfg.get("evaluation", {}))


@pytest.mark.parametrize("profile", profiles(CONFIGS))
def test_every_family_scores_the_same_likelihood_subset(profile):
    registry.import_all()
    models = [m for m in registry.model_names() if (CONFIGS / "profile" / profile / f"{m}.yaml").is_file()]
    assert {"ddpm", "vae", "realnvp", "gan"} <= set(models)
    for data in dataset_names():
        subsets = {m: resolved_evaluation(m, data, profile).likelihood_subset for m in models}
        assert len(set(subsets.values())) == 1, f"{data}/{profile}: families resolve different subsets {subsets}"
    # the one place: the shared file sets it, and no model's own profile file does
    shared = yaml.safe_load((CONFIGS / "profile" / profile / "evaluation.yaml").read_text())["evaluation"]
    assert "likelihood_subset" in shared
    for m in models:
        own = yaml.safe_load((CONFIGS / "profile" / profile / f"{m}.yaml").read_text()) or {}
        assert "likelihood_subset" not in (own.get("evaluation") or {}), f"profile/{profile}/{m}.yaml sets its own"


def test_the_shared_file_is_composed_last():
    files = config_files(CONFIGS, "realnvp", "mnist", "quick")
    assert files[-1] == CONFIGS / "profile" / "quick" / "evaluation.yaml"
    assert resolved_evaluation("realnvp", "mnist", "quick").likelihood_subset == 1000
    assert resolved_evaluation("ddpm", "cifar10", "paper").likelihood_subset is None  # the whole test split
