"""The dashboard form sets hyperparameters and nothing else (pipeline/runs/confine.py).

Parametrized over the params schema: every key off the allow-list is refused with its one line, and every
key on it reaches the run's params.yaml. Sources from the form stay inside what params.yaml admits.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from flows.parameters import DriftCheckParameters, RetrainParameters
from pipeline.config import load_params, param_keys
from pipeline.runs.confine import FORM_KEYS, confine_form_overrides
from pipeline.runs.workspace import RunWorkspace
from tests.conftest import copy_project

# a valid value for each allowed key, other than the committed one where the schema allows another
SAMPLES = {
    "common.seed": 7, "common.image_size": 48, "common.device": "cpu",
    "source.location": "incoming/cats-vs-dogs", "ingest.budget_per_class": 7, "ingest.budget_fraction": None,
    "shift.source": "incoming/week-49", "shift.corruptions": ["jpeg"], "shift.severities": [2, 4],
    "shift.assignment": "random", "shift.include_clean": False, "shift.per_cell": 12,
    "select.candidates": ["efficientnet_lite0"], "select.rank_by": "knn", "select.sample_per_class": 20,
    "select.knn_k": 3, "select.cv_folds": 3, "select.tie_tolerance": 0.02, "select.max_params_m": 5.0,
    "select.max_gflops": 1.5, "select.max_latency_ms": 40.0, "select.batch_size": 32,
    "freeze.strategy": "lp_ft", "freeze.depth": 2, "freeze.epochs": 4, "freeze.lr": 0.001,
    "freeze.probe_cs": [0.1, 1.0], "freeze.layer_decay": 0.8, "freeze.gradual_every": 3, "freeze.gradual_step": 2,
    "freeze.bn_policy": "frozen",
    "train.optimizer": "sgd", "train.weight_decay": 0.05, "train.momentum": 0.8, "train.batch_size": 32,
    "train.min_epoch_steps": 10, "train.eval_batch_size": 128, "train.warmup_epochs": 0.5,
    "train.label_smoothing": 0.0, "train.grad_clip": 2.0, "train.augment": "light", "train.amp": False,
    "train.cpu_bf16": True, "train.channels_last": False, "train.compile": True,
    "finetune.patience": 5, "finetune.feature_cache": False, "finetune.cache_views": 2,
    "baseline.lr": 0.001, "baseline.patience": 3, "baseline.max_epochs": 30,
    "curve.budgets": [4, 8], "curve.seeds": [3, 4, 5], "curve.image_size": 32,
    "curve.val_per_class": 5, "evaluate.ece_bins": 10, "evaluate.fgsm_epsilons": [0.0, 0.01],
    "evaluate.attack_images": 50, "evaluate.interpret_classes": 2, "evaluate.ideal_steps": 30,
    "evaluate.tv_weight": 0.2, "evaluate.adversarial_step": 0.004, "evaluate.adversarial_max_steps": 50,
}
REFUSED = sorted(set(param_keys()) - FORM_KEYS)


@pytest.fixture(scope="module")
def form_project(tmp_path_factory) -> Path:
    """A project whose params.yaml admits incoming/ for form sources and one bucket for s3:// ones."""
    work = tmp_path_factory.mktemp("form")
    project = copy_project(work / "project")
    for folder in ("incoming/cats-vs-dogs", "incoming/week-49", "images/cats", "runs/old-run/data"):
        (project / folder).mkdir(parents=True)
    (work / "secret").mkdir()
    (project / "incoming" / "escape").symlink_to(work / "secret")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["source"]["location"] = "images"
    params["orchestrate"].update(form_source_roots=["incoming", str(work / "shared-batches")],
                                 form_s3_buckets=["team-images"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qam", "form roots"], cwd=project,
                   check=True)
    return project


def test_the_allow_list_names_schema_keys_only_and_every_one_has_a_sample():
    assert set(param_keys()) >= FORM_KEYS and set(SAMPLES) == FORM_KEYS
    # the gates, limits and locations stay off the list, whatever is added to it later
    for gate in ("promote.", "validate.", "orchestrate.", "export.", "drift.", "source.max_", "evaluate.alpha",
                 "evaluate.min_gain", "evaluate.confidence", "select.weights", "finetune.nproc_per_node"):
        assert not [key for key in FORM_KEYS if key.startswith(gate)], gate
    # of how a source is read (endpoints, profiles, roots, downloads), only where it is
    assert [key for key in FORM_KEYS if key.startswith("source.")] == ["source.location"]


@pytest.mark.parametrize("key", REFUSED)
def test_every_key_off_the_allow_list_is_refused_with_one_line(form_project, key):
    value = load_params(form_project / "params.yaml").model_dump(by_alias=True)
    for part in key.split("."):
        value = value[part]
    with pytest.raises(ValueError) as refused:
        RetrainParameters(extra={key: value}).overrides(form_project / "params.yaml")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: refused from the dashboard") and "set it in params.yaml" in message


def test_sections_and_unknown_keys_are_refused(form_project):
    params = form_project / "params.yaml"
    with pytest.raises(ValueError, match=r"^finetune: refused .* one by one, e\.g\. 'finetune\."):
        RetrainParameters(extra={"finetune": {"patience": 1}}).overrides(params)
    with pytest.raises(ValueError, match="^promote: refused from the dashboard"):
        RetrainParameters(extra={"promote": {"margin": 0}}).overrides(params)
    with pytest.raises(ValueError, match="^finetune.lr_typo: refused"):
        RetrainParameters(extra={"finetune.lr_typo": 0.1}).overrides(params)
    # the auditor's examples: weaken the promotion, the gate, the limits
    for key, value in {"promote.allow_task_change": True, "promote.margin": 0, "validate.severity.decodes": "warning",
                       "validate.max_pixels": 1e12, "source.max_unreadable_fraction": 0.99,
                       "orchestrate.stage_timeout_s": 1e12, "orchestrate.command_timeout_s": 1e12}.items():
        with pytest.raises(ValueError, match=f"^{key}: refused"):
            RetrainParameters(source="sklearn-digits", extra={key: value}).overrides(params)


@pytest.fixture(scope="module")
def run_params(form_project) -> dict:
    """The params.yaml of a run whose form set every allowed key."""
    overrides = RetrainParameters(extra=SAMPLES).overrides(form_project / "params.yaml")
    workspace = RunWorkspace.create(form_project, "every-form-key", overrides=overrides)
    return yaml.safe_load((workspace.path / "params.yaml").read_text())


@pytest.mark.parametrize("key", sorted(FORM_KEYS))
def test_each_allowed_key_reaches_the_runs_params(form_project, run_params, key):
    committed = yaml.safe_load((form_project / "params.yaml").read_text())
    section, name = key.split(".")
    assert run_params[section][name] == SAMPLES[key]
    if key != "ingest.budget_fraction":  # exclusive with budget_per_class: stays null
        assert committed[section].get(name) != SAMPLES[key]


def test_form_sources_stay_inside_what_params_yaml_admits(form_project, tmp_path):
    params = form_project / "params.yaml"

    def refused(form, pattern):
        with pytest.raises(ValueError, match=pattern):
            form.overrides(params)

    # the project itself, its runs and registry are no sources: the auditor's "." and "runs"
    refused(RetrainParameters(source="."), r"source.location = '\.': refused .* outside the folders params.yaml admits")
    refused(RetrainParameters(source="runs"), "outside the folders params.yaml admits")
    refused(RetrainParameters(source="/etc"), r"outside the folders .*orchestrate.form_source_roots")
    refused(RetrainParameters(source="incoming/../../secret"), "outside the folders")
    refused(RetrainParameters(source="incoming/escape"), "outside the folders")  # a link is followed
    refused(DriftCheckParameters(batch_source=str(tmp_path)), "shift.source = .* outside the folders")
    refused(RetrainParameters(source="file:///etc/passwd"), "only sklearn-digits, torchvision:, s3:// or a local")
    refused(RetrainParameters(source="s3://someone-elses/images"), r"bucket 'someone-elses' is not one params.yaml "
                                                                   r"admits \(team-images\)")
    refused(DriftCheckParameters(batch_source="s3://other/batch"), "orchestrate.form_s3_buckets")
    # a drift check whose retrain form would be refused stops before it starts
    refused(DriftCheckParameters(retrain=RetrainParameters(extra={"promote.margin": 0})), "promote.margin: refused")
    assert RetrainParameters(source="images/cats").overrides(params) == {"source.location": "images/cats"}
    assert RetrainParameters(source="incoming/cats-vs-dogs", extra={"freeze.lr": 0.01}).overrides(params) == {
        "source.location": "incoming/cats-vs-dogs", "freeze.lr": 0.01}
    assert RetrainParameters(source="s3://team-images/cats").overrides(params) == {"source.location": "s3://team-images/cats"}
    assert DriftCheckParameters(batch_source="incoming/week-49").overrides(params) == {
        "shift.source": "incoming/week-49"}
    assert RetrainParameters(source="sklearn-digits").overrides(params) == {"source.location": "sklearn-digits"}


def test_a_root_that_holds_the_project_still_admits_no_pipeline_state(form_project):
    params = yaml.safe_load((form_project / "params.yaml").read_text())
    params["orchestrate"]["form_source_roots"] = ["."]  # an operator admitting the whole checkout
    for inside in ("runs/old-run/data", "registry", ".git", ".dvc"):
        with pytest.raises(ValueError, match="the pipeline's own state"):
            confine_form_overrides({"source.location": inside}, form_project, params)
    confine_form_overrides({"source.location": "incoming/week-49"}, form_project, params)


def test_the_drift_form_has_no_retrain_target_field():
    assert "retrain_deployment" not in DriftCheckParameters.model_fields
    with pytest.raises(ValueError, match="retrain_deployment"):
        DriftCheckParameters.model_validate({"retrain_deployment": "elsewhere/evil"})
