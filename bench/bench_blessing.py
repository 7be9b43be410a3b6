"""The promotion blessing against the old rule, on three datasets, four candidates each.

Datasets: the default data (scikit-learn digits, all of them, as an image folder), photographs where
ImageNet features help (seven of scikit-image's photos, grayscale crops, 100 a class) and a two-class
imbalanced grayscale folder (chelsea vs brick crops, 240 / 80). Recipe: a pretrained EfficientNet-Lite0
at 32 px whose head is trained on the train split's embeddings (tests/support/heads.py; full-batch Adam,
300 steps, seeded init). For each dataset the seed-0 model is judged first (the promote stage on an empty
registry; forced to champion with `promote_version(force=True)` when refused), then each candidate is
judged against it by the promote stage on a copy of that registry: the same recipe with seeds 1 and 2,
and a deliberately worse recipe (10 steps). Printed per candidate: the new decision with each check, and
the old rule's (candidate's test accuracy >= the champion's + 0.005 on the candidate's test split; any
first model crowned).

    python -m bench.bench_blessing
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.report import BenchReport


def _digits(root: Path) -> Path:
    from pipeline.data.sources.digits import DigitsSource

    for j, record in enumerate(DigitsSource(32).records()):
        (root / record.label).mkdir(parents=True, exist_ok=True)
        (root / record.label / f"{j:04d}.png").write_bytes(record.data)
    return root


def _photos(root: Path, classes: dict[str, int]) -> Path:
    from tests.support.photos import photo_crops

    rng = np.random.default_rng(0)
    for photo, count in classes.items():
        (root / photo).mkdir(parents=True, exist_ok=True)
        for j, data in enumerate(photo_crops(photo, count, rng, 32)):
            (root / photo / f"{j:03d}.png").write_bytes(data)
    return root


def _old_rule(candidate: Path, champion: Path, dataset: Path) -> tuple[bool, float, float]:
    """The rule before the blessing: test accuracy on the candidate's own test split, beaten by 0.005."""
    from pipeline.models import LoadedModel
    from pipeline.promotion.evalset import DataRecord, EvaluationSet, predicted_classes

    test = DataRecord.of_dataset(dataset).test
    images = EvaluationSet([(dataset, test["id"].astype(str).tolist())], test["label"].astype(str).to_numpy(object),
                           test["sha256"].to_numpy(object))
    ours = float((predicted_classes(LoadedModel.load(candidate), images) == images.labels).mean())
    theirs = float((predicted_classes(LoadedModel.load(champion), images) == images.labels).mean())
    return ours >= theirs + 0.005, round(ours, 4), round(theirs, 4)


def main() -> None:
    from pipeline.common.io import write_json
    import torch

    from pipeline.config import validate_params
    from pipeline.promotion.operations import promote_version
    from pipeline.registry import open_registry
    from pipeline.stages import ingest, promote
    from tests.support.gate import passed_gate
    from tests.support.heads import SIZE, train_head

    report = BenchReport("blessing")
    disagreements, judged = 0, 0
    with tempfile.TemporaryDirectory(prefix="tlops-bench-blessing-") as tmp:
        work = Path(tmp)
        folders = {"digits (default data)": _digits(work / "digits"),
                   "photos, 7 classes": _photos(work / "photos", {p: 100 for p in
                                                                   ("chelsea", "coffee", "astronaut", "rocket",
                                                                    "brick", "grass", "gravel")}),
                   "two classes, imbalanced 240/80": _photos(work / "two", {"chelsea": 240, "brick": 80})}
        for name, folder in folders.items():
            run = work / name.split()[0].strip(",")
            params = validate_params({"common": {"image_size": SIZE}, "source": {"location": str(folder)},
                                      "promote": {"registry": str(run / "registry")}})
            dataset = run / "dataset"
            ingest.run(params, ingest.Args(dataset=dataset, metrics=run / "i.json", report_dir=run / "ri"))
            evaluation = write_json(run / "evaluation.json", {"verdict": "positive", "recommended_model": "finetuned"})
            models = {"seed 0": train_head(dataset, run / "m-seed0", seed=0),
                      "seed 1": train_head(dataset, run / "m-seed1", seed=1),
                      "seed 2": train_head(dataset, run / "m-seed2", seed=2),
                      "worse recipe (10 steps)": train_head(dataset, run / "m-worse", seed=3, steps=10)}

            def judge(label: str, registry: Path, version: str, *, params=params, dataset=dataset, models=models,
                      evaluation=evaluation, run=run) -> dict:  # this iteration's values, bound
                promote.run_identity = lambda root: {"run_name": version, "run_tag": None}  # a version per call
                cfg = params.model_copy(update={"promote": params.promote.model_copy(
                    update={"registry": str(registry)})})
                return promote.run(cfg, promote.Args(dataset=dataset, model=models[label], baseline=models[label],
                                                     evaluation=evaluation, decision=run / f"{version}.json",
                                                     validation=passed_gate(run)))

            first = judge("seed 0", run / "registry", "20260101-000000-seed0")
            report.emit(dataset=name, candidate="seed 0 (first run)", decision=first["decision"],
                        old_rule="promoted", checks=_checks(first))
            judged += 1
            disagreements += first["promoted"] is not True
            if not first["promoted"]:  # the candidates are judged against the seed-0 model all the same
                promote_version(open_registry(str(run / "registry"), run), "20260101-000000-seed0", params,
                                torch.device("cpu"), force=True, reason="bench: the seed-0 model as champion")
            for label in ("seed 1", "seed 2", "worse recipe (10 steps)"):
                registry = run / f"registry-{label.split()[0]}-{label.split()[1]}"
                shutil.copytree(run / "registry", registry)
                decided = judge(label, registry, f"20260102-000000-{label.split()[0]}{label.split()[1]}")
                old, ours, theirs = _old_rule(models[label], models["seed 0"], dataset)
                judged += 1
                disagreements += old != decided["promoted"]
                report.emit(dataset=name, candidate=label, decision=decided["decision"],
                            old_rule=f"{'promoted' if old else 'kept champion'} ({ours} vs {theirs})",
                            evaluation_images=decided["blessing"]["evaluation_set"]["images"], checks=_checks(decided))
    report.emit(summary=f"old and new rule disagree on {disagreements} of {judged} decisions")
    report.save()


def _checks(decision: dict) -> list[str]:
    return [f"{c['check']}: {'pass' if c['passed'] else 'FAIL'} ({c['detail']})"
            for c in decision["blessing"]["checks"]]


if __name__ == "__main__":
    main()
