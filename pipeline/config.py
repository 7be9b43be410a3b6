"""The one schema for params.yaml: every knob of every stage, validated once.

Each stage reads ``params.common`` plus its own section (``params.<stage>``), and ``dvc.yaml``
subscribes each stage to just those two, so tweaking one stage never re-runs another.
A bad value stops with one line per problem naming the key path, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["Params", "ConfigError", "load_params", "parse_overrides", "apply_overrides"]


class ConfigError(ValueError):
    """params.yaml (or an override) is invalid; the message is one line per problem."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class CommonParams(Section):
    """Knobs shared by all stages."""

    seed: int = Field(0, ge=0, description="global seed for splits, sampling and training")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                        description="auto picks cuda > mps > cpu")
    image_size: int = Field(64, ge=8, le=1024, description="side of the square network input, pixels")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader / decode worker processes")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class IngestParams(Section):
    """Where images come from and how they are stored and split (pipeline/ingest.py)."""

    source: str = Field("sklearn-digits", min_length=1,
                        description="sklearn-digits | a folder | a .csv/.parquet manifest | s3://bucket/prefix "
                                    "| torchvision:<Dataset>")
    digits_size: int = Field(64, ge=8, le=512, description="side the 8x8 digits are upscaled to")
    shard_size_mb: float = Field(32.0, gt=0, le=4096, description="target size of one tar shard")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> "IngestParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}: "
                             "must be < 0.9 so that train keeps at least 10% of the images")
        return self


class ValidateParams(Section):
    """Thresholds of the validation gate (pipeline/validate.py)."""


class SelectParams(Section):
    """Candidates, budgets and scoring for model selection (pipeline/select.py)."""


class FreezeParams(Section):
    """Freezing strategy (pipeline/freeze.py)."""


class FinetuneParams(Section):
    """Optimiser, schedule and training loop (pipeline/finetune.py)."""


class BaselineParams(Section):
    """From-scratch baseline (pipeline/baseline.py)."""


class EvaluateParams(Section):
    """Evaluation against the baseline (pipeline/evaluate.py)."""


class DriftParams(Section):
    """Drift detection and reports (pipeline/drift.py)."""


class PromoteParams(Section):
    """Promotion gate and model registry (pipeline/promote.py)."""


class Params(Section):
    """The whole of params.yaml."""

    common: CommonParams = CommonParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    select: SelectParams = SelectParams()
    freeze: FreezeParams = FreezeParams()
    finetune: FinetuneParams = FinetuneParams()
    baseline: BaselineParams = BaselineParams()
    evaluate: EvaluateParams = EvaluateParams()
    drift: DriftParams = DriftParams()
    promote: PromoteParams = PromoteParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def section(self, stage: str) -> Section:
        """Return the section of one stage by its params.yaml name."""
        return getattr(self, "validate_" if stage == "validate" else stage)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate params.

    Args:
        path: the params.yaml file.
        overrides: ``key.path=value`` strings (values parsed as YAML), applied before validation.
    Returns:
        The validated params.
    Raises:
        ConfigError: one line per problem, naming file, key path, bad value and what is allowed.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of stage sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, parse_overrides(overrides or []))
    return validate_params(raw, source=str(path))


def validate_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping; see :func:`load_params` for the error format."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("\n".join(_describe(source, e) for e in err.errors())) from None


def parse_overrides(items: list[str]) -> list[tuple[list[str], Any]]:
    """Parse ``a.b=value`` strings into (key path, YAML-parsed value) pairs."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set finetune.epochs=3")
        try:
            parsed.append((key.split("."), yaml.safe_load(value)))
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value {value!r} is not valid YAML") from None
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each override set (intermediate mappings created)."""
    import copy

    out = copy.deepcopy(raw)
    for keys, value in overrides:
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[:depth + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def _describe(source: str, error: dict[str, Any]) -> str:
    """One line for one pydantic error: where, what was given, what is allowed."""
    loc = ".".join(str(p) for p in error["loc"])
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"{source}: unknown key '{loc}' (allowed here: {', '.join(allowed)})"
    if kind == "missing":
        return f"{source}: missing key '{loc}'"
    msg = error["msg"].removeprefix("Value error, ")
    return f"{source}: {loc or '<top>'} = {given!r}: {msg}"


def _allowed_keys(loc: tuple) -> list[str]:
    """Keys valid at a location of the schema (for 'unknown key' messages)."""
    model: type[BaseModel] = Params
    for part in loc:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return sorted(f.alias or n for n, f in model.model_fields.items())
