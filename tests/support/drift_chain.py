"""A small real chain for drift tests: ingest an image folder, make the current set, profile it, save a
pretrained model (its head untrained, which drift does not mind), and run `tlops drift` on it."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli import main
from pipeline.config import validate_params
from pipeline.data.shards import read_classes
from pipeline.models import LoadedModel
from pipeline.stages import ingest, shift
from pipeline.validation.dataset import profile_dataset
from tests.support.gate import passed_gate

__all__ = ["MODEL", "SIZE", "build_chain", "run_drift"]
MODEL = "efficientnet_lite0"
SIZE = 32


def build_chain(work: Path, images: Path, batch: Path | None = None) -> dict[str, Path]:
    """Ingest ``images`` (30% val, 30% test); the current set is heavy noise on the test split plus clean
    copies, or ``batch`` when given. Returns the paths: dataset, current, model, profile."""
    params = validate_params({"common": {"image_size": SIZE},
                              "source": {"location": str(images)},
                              "ingest": {"val_fraction": 0.3, "test_fraction": 0.3},
                              "shift": {"corruptions": ["gaussian_noise"], "severities": [5],
                                        "source": str(batch) if batch else None}})
    p = {name: work / name for name in ("dataset", "current", "model")}
    ingest.run(params, ingest.Args(dataset=p["dataset"], metrics=work / "i.json", report_dir=work / "ri"))
    shift.run(params, shift.Args(dataset=p["dataset"], current=p["current"], metrics=work / "s.json",
                                 report_dir=work / "rs"))
    p["profile"] = work / "profile.parquet"
    profile_dataset(p["dataset"], params.validate_).to_parquet(p["profile"])
    classes = read_classes(p["dataset"])
    LoadedModel.pretrained(MODEL, len(classes), SIZE, classes=classes).save(p["model"], {})
    return p


def run_drift(chain: dict[str, Path], out: Path, *overrides: str, outliers: int = 4) -> int:
    """`tlops drift` on the chain, outputs under ``out`` (the Workspace beside it); returns the exit code."""
    argv = ["drift", "--dataset", str(chain["dataset"]), "--image-profile", str(chain["profile"]),
            "--current", str(chain["current"]), "--model", str(chain["model"]), "--drift", str(out / "drift.json"),
            "--report-dir", str(out / "reports"), "--workspace", str(out.parent / "workspace"),
            "--validation", str(passed_gate(out)), "--set", "drift.permutations=200",
            "--set", f"common.image_size={SIZE}", "--set", f"drift.top_outliers={outliers}"]
    for item in overrides:
        argv += ["--set", item]
    return main(argv)
