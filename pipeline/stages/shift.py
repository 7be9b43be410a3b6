"""Stage `shift`: make the domain-shift "current" set, the stand-in for new data from another domain.

By default every test image is corrupted ImageNet-C style (gaussian noise, blur, contrast, brightness,
pixelate, JPEG, rotation at severities 1-5, seeded per image), recording corruption, severity and
origin_id per row. With ``shift.source`` set, a real new batch from any source location is taken as the
current set instead (corruption "none", severity 0). The work is in pipeline/shift/.
Inputs: ``--dataset`` (the ingested dataset).
Outputs: ``--current`` (a dataset directory, all rows split "test"), ``--metrics`` (counts per
corruption and severity), ``--report-dir`` (shift_report.json, corruptions.png).
Params: ``common`` (seed, shard size), ``shift``, and for a batch ``source`` (how a source is read: S3 endpoint
and profile, read workers, retries, confinement) and the gate's per-image rules of ``validate`` (an image that
breaks one, e.g. an empty .jpg, is one refused row of shift_report.json, and the batch goes on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.io import atomic_dir, write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.build import write_dataset
from pipeline.data.shards import SHARDS_DIR, read_classes
from pipeline.shift.current import GATE_REFUSAL, corrupt_test_split, pack_batch, plot_current
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the shift stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "the ingested dataset (its test split is corrupted)"})
    current: Path = field(metadata={"help": "the 'current' dataset directory to write"})
    metrics: Path = field(metadata={"help": "metrics JSON: images per corruption and severity"})
    report_dir: Path = field(metadata={"help": "folder for shift_report.json and corruptions.png"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict:
    """Write the current set: corrupted test images, or a new batch from a source.

    Args:
        params: validated params (reads ``common``, ``shift``, ``source`` and ``validate``'s per-image rules).
        args: input and output paths.
    Returns:
        Summary: images, source, counts per corruption.
    """
    dataset = use_validated(args.dataset, args.validation)
    cfg, seed = params.shift, params.common.seed
    classes = read_classes(dataset)
    shard_bytes = int(params.common.shard_size_mb * 2**20)
    skipped: list = []
    with atomic_dir(args.current) as tmp:
        if cfg.source:
            manifest, skipped, description = pack_batch(cfg.source, params.source, params.validate_, tmp, shard_bytes,
                                                        classes)
        else:
            manifest = corrupt_test_split(dataset, tmp / SHARDS_DIR, cfg, seed, shard_bytes)
            description = f"test split of {dataset} under {len(cfg.corruptions)} corruptions"
        write_dataset(tmp, manifest, classes)
    counts = manifest.groupby(["corruption", "severity"]).size()
    refused = [s for s in skipped if s.kind == GATE_REFUSAL]
    metrics = {"images": len(manifest), "source": description, "refused": len(refused),
               "per_corruption": {c: {str(s): int(n) for s, n in counts[c].items()} for c in counts.index.levels[0]}}
    write_json(args.metrics, metrics)
    write_json(args.report_dir / "shift_report.json", {**metrics, "params": cfg.model_dump(),
                                                        "skipped": [s.__dict__ for s in skipped]})
    plot_current(args.current, manifest, args.report_dir / "corruptions.png")
    log.info("current set: %d images (%s)", len(manifest), description)
    return {"images": len(manifest), "source": description, "current": str(args.current)}
