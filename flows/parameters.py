"""Typed flow parameters: what the Prefect dashboard shows as a form, with defaults.

Every field left empty keeps the value in params.yaml; a value given overrides it for that run only
(it is written to the run's params.yaml, committed on the run's branch, and shown in the run summary).
A form sets training and evaluation hyperparameters only: every other key, and any source params.yaml
does not admit, is refused before the run starts (pipeline/runs/confine.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import profile_overrides
from pipeline.runs.confine import confine_form_overrides

__all__ = ["RetrainParameters", "DriftCheckParameters"]


class RetrainParameters(BaseModel):
    """Knobs of one retraining run (empty = as in params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, description="image source: sklearn-digits, a folder, a CSV/Parquet "
                                                 "manifest, s3://bucket/prefix, torchvision:<Dataset>")
    candidates: list[str] | None = Field(None, description="pretrained models to choose from, e.g. "
                                                           "[efficientnet_lite0, efficientnet_lite1]")
    strategy: Literal["auto", "linear_probe", "partial", "full", "gradual", "lp_ft"] | None = Field(
        None, description="layer-freezing strategy")
    epochs: int | None = Field(None, ge=1, le=1000, description="fine-tuning epochs")
    image_size: int | None = Field(None, ge=8, le=1024, description="network input side, pixels")
    device: str | None = Field(None, pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, cuda, mps")
    seed: int | None = Field(None, ge=0)
    profile: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                                description="a params profile applied first, e.g. gpu (params.gpu.yaml)")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description='other hyperparameters, e.g. {"freeze.lr": 0.001}; gates, limits '
                                              'and locations stay in params.yaml (docs/orchestrate.md lists the '
                                              'keys a form may set)')

    def overrides(self, params_path: Path | None = None) -> dict[str, Any]:
        """The params.yaml keys this run overrides, as ``{"section.key": value}``: the profile's, then the form's.

        Args:
            params_path: the project's params.yaml (the profile file lies beside it); needed with a profile.
        """
        keys = {"source": "source.location", "candidates": "select.candidates", "strategy": "freeze.strategy",
                "epochs": "freeze.epochs", "image_size": "common.image_size", "device": "common.device",
                "seed": "common.seed"}
        chosen = {keys[name]: value for name, value in self.model_dump(exclude={"extra", "profile"}).items()
                  if value is not None}
        params_path = Path(params_path or "params.yaml")
        form = {**chosen, **self.extra}
        confine_form_overrides(form, params_path.parent, _committed(params_path))
        profile = profile_overrides(params_path, self.profile) if self.profile else {}
        return {**profile, **form}


class DriftCheckParameters(BaseModel):
    """Knobs of one drift check."""

    model_config = ConfigDict(extra="forbid")

    batch_source: str | None = Field(None, description="a batch to check (any source location); empty = the "
                                                       "served batches no check has read (serve.sample_store), "
                                                       "else the domain-shift set made from the test split")
    retrain_on_drift: bool = Field(True, description="start the retrain deployment params.yaml names "
                                                     "(orchestrate.drift_retrain_deployment) when drift is detected")
    retrain: RetrainParameters = Field(default_factory=RetrainParameters,
                                       description="parameters of the retrain run started on drift")

    def overrides(self, params_path: Path) -> dict[str, Any]:
        """The params the check's worktree overrides: the batch as ``shift.source``, confined like any form value.

        The retrain parameters are confined here too, so a form value the retrain run would refuse stops the
        check before it starts, not after it detected drift.
        """
        form = {"shift.source": self.batch_source} if self.batch_source else {}
        confine_form_overrides(form, params_path.parent, _committed(params_path))
        self.retrain.overrides(params_path)
        return form


def _committed(params_path: Path) -> dict[str, Any]:
    """params.yaml as it is (its source and allowed roots bound what a form may point at)."""
    return yaml.safe_load(params_path.read_text()) or {} if params_path.is_file() else {}
