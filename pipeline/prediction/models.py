"""Which model ``tlops predict`` applies: the registry's champion by default, a registry version (by its run
name or run tag), or a model folder (``model.pt`` + ``card.json``, e.g. an export bundle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.models.loaded import CARD
from pipeline.registry import Registry
from pipeline.common.run_names import run_of

__all__ = ["ModelRef", "resolve_model"]


@dataclass(frozen=True)
class ModelRef:
    """A model directory on local disk and what to call it in the predictions (``model_version``)."""

    directory: Path
    version: str


def resolve_model(spec: str | None, registry: Registry, scratch: Path) -> ModelRef:
    """The model named by ``spec``.

    Args:
        spec: None or ``champion``; a run name or ``run-<run name>`` tag registered as a version; or a folder.
        registry: the model registry (``promote.registry``).
        scratch: where an S3 registry's files are downloaded.
    Raises:
        FileNotFoundError: no champion yet, no such version, or a folder without ``card.json``.
    """
    if spec is None or spec == "champion":
        champion = registry.champion()
        if champion is None:
            raise FileNotFoundError(f"{registry.location}: no champion yet (run retrain first; a run whose candidate "
                                    "was not blessed crowns none: `tlops registry list` says why. Pass --model "
                                    "with a model folder or a run tag, or `tlops registry promote VERSION --force "
                                    "--reason ...`)")
        return ModelRef(registry.model_dir(champion["version"], scratch), f"champion {champion['version']}")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / CARD).is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no {CARD}; pass one written by a training "
                                    "stage, the export stage or the registry)")
        return ModelRef(folder, str(folder))
    version = run_of(spec, "--model: not a folder, nor a run name or tag")
    if version not in registry.versions():
        raise FileNotFoundError(f"{registry.location}: no version {version!r} (registered: "
                                f"{', '.join(registry.versions()[-5:]) or 'none'})")
    return ModelRef(registry.model_dir(version, scratch), version)
