"""The one schema for params.yaml: every knob of every stage, validated once.

Each stage reads ``params.common`` plus its own section (``params.<stage>``), and ``dvc.yaml``
subscribes each stage to just those, so tweaking one stage never re-runs another. Two sections are shared
by design: ``source`` (where the images come from and how they are read: ingest, shift's new batch, and
``tlops predict`` read sources alike) and ``train`` (the training loop that finetune and baseline both run,
so that the comparison stays fair). The few single keys a stage reads from another stage's section are
named, with the reason, in dvc.yaml (tests/test_project_dvc_graph.py holds them to that).
A bad value stops with one line per problem naming the key path, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

__all__ = ["Params", "ConfigError", "load_params", "profile_overrides", "parse_overrides", "apply_overrides",
           "param_keys"]


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
    # the storage format of every dataset the pipeline writes (ingest's, and shift's current set). Here, not in
    # ingest or shift: both writers share one format, and a change re-shards data/dataset, which every stage reads,
    # so it re-runs them all anyway
    shard_size_mb: float = Field(32.0, gt=0, le=4096, description="target size of one tar shard")


EventName = Literal["run.failed", "drift.detected", "model.promoted", "model.refused", "verdict.negative"]
CorruptionName = Literal["gaussian_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "jpeg", "rotation"]


class ShiftParams(Section):
    """The domain-shift 'current' set (stage shift): corruptions of the test split, or a new batch."""

    source: str | None = Field(None, min_length=1,
                               description="null: corrupt the test split; else a new batch (any source location, "
                                           "read with the source section's settings)")
    corruptions: list[CorruptionName] = Field(
        ["gaussian_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "jpeg", "rotation"], min_length=1)
    severities: list[int] = Field([1, 2, 3, 4, 5], min_length=1, description="ImageNet-C style levels 1-5")
    assignment: Literal["grid", "random"] = Field(
        "grid", description="grid: every image at every corruption x severity; random: one seeded pair per image")
    include_clean: bool = Field(True, description="also keep each image uncorrupted (corruption 'none', severity 0)")
    per_cell: int | None = Field(40, ge=1, description="test images per corruption x severity cell (the same "
                                                       "seeded images in every cell); null = all. A batch is "
                                                       "taken whole")

    @model_validator(mode="after")
    def _severities_in_range(self) -> "ShiftParams":
        bad = [s for s in self.severities if not 1 <= s <= 5]
        if bad or len(set(self.severities)) != len(self.severities):
            raise ValueError(f"severities {self.severities}: each must be 1-5 and listed once")
        return self


class SourceParams(Section):
    """Where the images come from and how they are read (pipeline/data/sources/): ingest reads ``location``;
    shift's new batch (``shift.source``) and ``tlops predict``'s batch are read with the same settings."""

    location: str = Field("sklearn-digits", min_length=1,
                          description="sklearn-digits | a folder | a .csv/.parquet manifest | s3://bucket/prefix "
                                      "| torchvision:<Dataset>")
    digits_size: int = Field(64, ge=8, le=512, description="side the 8x8 sklearn digits are upscaled to")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint; null: env AWS_ENDPOINT_URL or AWS")
    s3_profile: str | None = Field(None, description="named AWS profile (credentials never go in params)")
    s3_retries: int = Field(5, ge=0, le=20, description="S3 retries with backoff on throttling and 5xx")
    read_workers: int = Field(8, ge=1, le=256, description="parallel reads: S3 downloads and file reads")
    allowed_roots: list[str] = Field([], description="folders besides the source folder (or the manifest's folder) "
                                                     "that symlinks and manifest paths may point into")
    max_file_mb: float = Field(256, gt=0, description="largest file or S3 object read, in MiB; larger ones are "
                                                      "refused")
    max_unreadable_fraction: float = Field(0.0, ge=0, lt=1, description="share of the source's files that may fail "
                                                                         "to read before the stage fails, naming them")
    allow_download: bool = Field(False, description="let torchvision:<Dataset> sources download from the internet")
    download_root: str = Field("~/.cache/tlops/torchvision", description="where torchvision datasets are kept")


class IngestParams(Section):
    """How the ingested images are split and budgeted (stage ingest; where they come from is ``source``)."""

    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    min_images_per_class: int = Field(2, ge=1, description="fewer images in a class is an error naming it")
    budget_per_class: int | None = Field(None, ge=1, description="label budget: k train images per class")
    budget_fraction: float | None = Field(None, gt=0, le=1, description="label budget: a fraction of train")

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> "IngestParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}: "
                             "must be < 0.9 so that train keeps at least 10% of the images")
        if self.budget_per_class is not None and self.budget_fraction is not None:
            raise ValueError("set at most one of budget_per_class and budget_fraction")
        return self


Severity = Literal["critical", "warning"]


class ValidateSeverities(Section):
    """Severity of each check of the validation gate: critical fails the stage, warning is reported."""

    decodes: Severity = "critical"
    labels_match_classes: Severity = "critical"
    min_images_per_class: Severity = "critical"
    min_images_per_split: Severity = "critical"
    class_imbalance: Severity = "critical"
    min_classes: Severity = "critical"
    row_count: Severity = "critical"
    width_in_bounds: Severity = "critical"
    height_in_bounds: Severity = "critical"
    mode_convertible: Severity = "critical"
    needs_no_conversion: Severity = "warning"
    no_duplicates_in_split: Severity = "critical"
    no_label_conflict: Severity = "critical"
    no_leak_sha256: Severity = "critical"
    no_leak_phash: Severity = "warning"


class ValidateParams(Section):
    """Thresholds of the validation gate (stage validate; the checks: pipeline/validation/)."""

    corrupt_policy: Literal["fail", "quarantine"] = Field(
        "fail", description="fail: any undecodable image fails the gate; quarantine: exclude and list them")
    max_quarantine_fraction: float = Field(0.01, ge=0, lt=1,
                                           description="quarantine fails anyway above this fraction of bad images")
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb guard: width*height above is an error")
    stats_max_side: int = Field(512, ge=32, le=8192, description="side images are reduced to for the pixel stats")
    workers: int = Field(0, ge=0, le=256, description="profile processes; 0 = one per thread of the run's share "
                                                     "(orchestrate.threads), 1 = in-process")
    chunk_size: int = Field(64, ge=1, le=100_000, description="images per worker task")
    min_rows: int = Field(20, ge=0, description="fewest images in the dataset")
    max_rows: int = Field(10_000_000, ge=1, description="most images in the dataset")
    min_images_per_class: int = Field(5, ge=1, description="fewest train images of any class")
    min_images_per_split: int = Field(5, ge=1, description="fewest images in val and in test (early stopping, the "
                                                           "verdict and the export check rest on them)")
    min_classes: int = Field(2, ge=2, description="fewest classes with images (a classifier needs two)")
    max_class_imbalance: float = Field(10.0, ge=1, description="largest class / smallest class, at most")
    min_side: int = Field(8, ge=1, description="smallest width or height, pixels")
    max_side: int = Field(8192, ge=1, description="largest width or height, pixels")
    accepted_modes: list[str] = Field(
        ["RGB", "L", "LA", "1", "P", "PA", "RGBA", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L"], min_length=1,
        description="PIL modes the models can take after conversion to RGB")
    phash_max_distance: int = Field(2, ge=0, le=32, description="Hamming bits at which two images count as one")
    expected_classes: list[str] | None = Field(None, description="class names; null = the dataset's classes.json")
    severity: ValidateSeverities = ValidateSeverities()

    @field_validator("max_rows", "max_side")
    @classmethod
    def _upper_bound_above_lower(cls, value: int, info: ValidationInfo) -> int:
        low = info.field_name.replace("max_", "min_")
        if low in info.data and info.data[low] > value:  # the error names max_*, given value and the min_*
            raise ValueError(f"must be >= {low} = {info.data[low]}")
        return value


class SelectWeights(Section):
    """Where a user-supplied candidate's weights are (pipeline/models/weights.py)."""

    uri: str = Field(..., min_length=1, description="local file, hub:<file in torch hub checkpoints>, "
                                                    "s3://bucket/key, or https:// URL (needs allow_download)")
    sha256: str = Field(..., pattern=r"^[0-9a-fA-F]{64}$",
                        description="the file's full sha256 (64 hex digits); a prefix is refused")


class SelectParams(Section):
    """Candidates, budgets and scoring for model selection (stage select; pipeline/selection/)."""

    candidates: list[str] = Field(["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], min_length=1,
                                  description="catalog names, timm:<arch>, or <name>.random_init (a control)")
    weights: dict[str, SelectWeights] = Field({}, description="candidate name -> user-supplied weights")
    allow_download: bool = Field(False, description="fetch missing weights from their https:// URL")
    hub_dir: str | None = Field(None, description="torch hub folder; null = torch.hub.get_dir()")
    sample_per_class: int = Field(40, ge=2, le=100_000, description="stratified train sample scored per class")
    max_params_m: float | None = Field(None, gt=0, description="budget: millions of parameters, at most")
    max_gflops: float | None = Field(None, gt=0, description="budget: GFLOPs per image at common.image_size")
    max_latency_ms: float | None = Field(None, gt=0, description="budget: measured ms per image on the device")
    latency_runs: int = Field(10, ge=1, le=1000, description="timed batch-of-one passes (median reported)")
    knn_k: int = Field(5, ge=1, le=1000, description="neighbours of the kNN score")
    cv_folds: int = Field(5, ge=2, le=50, description="stratified folds of the kNN and linear-probe scores")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap rounds of the accuracy CIs")
    logme_subsamples: int = Field(50, ge=0, le=10_000, description="half-size subsamples of the LogME CI")
    rank_by: Literal["linear_probe", "knn", "logme"] = Field("linear_probe", description="score that ranks")
    tie_tolerance: float = Field(0.01, ge=0, description="pick the cheapest within this of the best score")
    batch_size: int = Field(64, ge=1, le=4096, description="images per forward pass when computing features")


class FreezeParams(Section):
    """Freezing strategy, phase lengths and per-block learning rates (stage freeze; the rule:
    pipeline/freezing/plan.py)."""

    strategy: Literal["auto", "linear_probe", "partial", "full", "gradual", "lp_ft"] = Field(
        "auto", description="auto picks strategy and depth from data size, classes and selection scores")
    depth: int | None = Field(None, ge=0, description="blocks kept frozen (partial; floor of gradual/lp_ft); "
                                                      "None: 0 for gradual/lp_ft, the auto rule's choice for auto")
    epochs: int = Field(10, ge=1, le=1000,
                        description="epochs of the fine-tune phase, at most (full/partial/gradual/lp_ft)")
    probe_cs: list[float] = Field([1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0, 10.0], min_length=1,
                                  description="inverse L2 strengths the linear probe is solved at; val picks one")
    lr: float = Field(3e-4, gt=0, le=10, description="head lr while fine-tuning; lower blocks get lr * decay^depth")
    layer_decay: float = Field(0.7, gt=0, le=1, description="layer-wise lr decay per block below the head")
    gradual_every: int = Field(2, ge=1, description="gradual: epochs between two unfreezing steps")
    gradual_step: int = Field(1, ge=1, description="gradual: blocks unfrozen per step")
    bn_policy: Literal["auto", "frozen", "train", "eval_all"] = Field(
        "auto", description="BatchNorm statistics: auto = eval_all below 500 images per class, else frozen")


class TrainParams(Section):
    """The training loop (pipeline/training/loop.py) that finetune, baseline and the curve's scratch runs all run:
    one section, so that a change here re-runs both sides of the comparison alike (a fair one)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.01, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov)")
    batch_size: int = Field(64, ge=1, le=65536, description="global batch size (split across DDP ranks); a small "
                                                            "train set gets at most a quarter of its images (>= 8)")
    min_epoch_steps: int = Field(20, ge=1, le=100000, description="a small train set is repeated within an epoch "
                                                                  "so that one epoch is at least this many steps")
    eval_batch_size: int = Field(256, ge=1, le=65536)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup at the start of each phase, then cosine")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max gradient L2 norm; 0 = off")
    augment: Literal["auto", "none", "light", "standard"] = Field(
        "auto", description="auto = light below 96 px (no flips, small shifts), standard above")
    amp: bool = Field(True, description="CUDA: autocast bf16 where supported, else fp16 + grad scaler")
    cpu_bf16: bool = Field(False, description="CPU: bf16 autocast")
    channels_last: bool = Field(True, description="CPU and CUDA: the channels_last memory format (faster convolutions)")
    compile: bool = Field(False, description="torch.compile the trained module")


class FinetuneParams(Section):
    """The fine-tune's own knobs (stage finetune; its loop is ``train``): stopping, head-only caching, processes."""

    patience: int = Field(3, ge=0, description="early stopping: epochs without a better val accuracy; 0 = off")
    feature_cache: bool = Field(True, description="cache the frozen backbone's outputs when only the head trains")
    cache_views: int = Field(0, ge=0, le=64, description="augmented views cached for head-only phases; "
                                                      "0 = they train on clean (unaugmented) features")
    nproc_per_node: int = Field(1, ge=1, le=64, description="> 1: the stage runs under torchrun with this many "
                                                         "processes (DDP; one per GPU, gloo on the CPU)")


class BaselineParams(Section):
    """From-scratch training (stage baseline, and the scratch side of the label-efficiency curve): trained to
    convergence under one stopping rule; optimizer, augmentation and loop are the fine-tune's (``train``)."""

    lr: float = Field(3e-3, gt=0, le=10, description="learning rate of every block "
                                                     "(scratch needs more than a fine-tune)")
    patience: int = Field(5, ge=1, description="epochs without a better val accuracy that stop a scratch run")
    max_epochs: int = Field(60, ge=1, le=100000, description="the cap; a run that hits it still improving is "
                                                             "reported as not converged")


class CurveParams(Section):
    """The label-efficiency curve's draws (the baseline stage trains their scratch side beside the baseline; evaluate
    learns the transfer side on the draws it recorded)."""

    budgets: list[int] = Field([2, 10], description="label budgets of the curve: k train images per class "
                                                   "(above the run's label budget: not drawn); all labels are "
                                                   "compared by the fine-tuned and baseline models")
    seeds: list[int] = Field([0, 1, 2], min_length=3, description="seeds per budget (>= 3 for an interval)")
    image_size: int | None = Field(None, ge=8, le=1024, description="input side of the curve runs; None = common")
    val_per_class: int | None = Field(10, ge=1, description="val images per class that stop each scratch run "
                                                            "and choose each probe's penalty; None = all")

    @model_validator(mode="after")
    def _budgets_and_seeds_distinct(self) -> "CurveParams":
        bad = [b for b in self.budgets if b < 1]
        if bad or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets {self.budgets}: each >= 1 and listed once")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds}: listed twice; the interval needs distinct seeds")
        return self


class EvaluateParams(Section):
    """Transfer vs scratch: the verdict, label efficiency, robustness, interpretation (stage evaluate)."""

    confidence: float = Field(0.95, gt=0.5, lt=1, description="coverage of every interval")
    alpha: float = Field(0.05, gt=0, lt=1, description="level of the paired tests (full labels, shift set)")
    min_gain: float = Field(0.0, ge=0, le=1, description="smallest accuracy lead of transfer that counts as positive")
    ece_bins: int = Field(15, ge=2, le=100, description="bins of the expected calibration error")
    fgsm_epsilons: list[float] = Field([0.0, 0.004, 0.008, 0.016, 0.031], min_length=1,
                                       description="FGSM sizes in pixel units ([0, 1] scale; 0.004 ~ 1/255)")
    attack_images: int = Field(100, ge=1, description="test images attacked with FGSM")
    interpret_classes: int = Field(4, ge=1, description="classes shown as 'ideal' inputs and adversarial pairs")
    ideal_steps: int = Field(60, ge=1, le=10000, description="gradient-ascent steps per ideal input")
    tv_weight: float = Field(0.5, ge=0, description="total-variation penalty of the ideal inputs (smoothness)")
    adversarial_step: float = Field(0.002, gt=0, le=1, description="pixel step of the adversarial nudges")
    adversarial_max_steps: int = Field(100, ge=1, description="nudges before giving up on flipping a label")

    @model_validator(mode="after")
    def _epsilons_in_pixel_range(self) -> "EvaluateParams":
        if any(not 0 <= e <= 1 for e in self.fgsm_epsilons):
            raise ValueError(f"fgsm_epsilons {self.fgsm_epsilons}: each must be in [0, 1] (pixel units)")
        return self


class DriftParams(Section):
    """Drift detection and reports (stage drift; pipeline/drift/)."""

    reference_split: Literal["train", "val", "test", "train+val"] = Field(
        "val", description="reference images. train alone reads as drift on any fresh data (the model is "
                           "overconfident on its own training images); train+val adds train to each test "
                           "only where a train-vs-val check finds no such difference")
    min_reference: int = Field(50, ge=2, description="fewer reference images than this: the report warns that "
                                                    "the decision can only catch large shifts")
    alpha: float = Field(0.05, gt=0, lt=1, description="false-positive rate of the whole drift decision")
    permutations: int = Field(1000, ge=50, le=100000, description="permutations of the MMD test")
    pca_dims: int | None = Field(32, ge=1, description="PCA components of the embeddings before the MMD (null: none)")
    max_samples: int = Field(1000, ge=10, description="rows per side in the MMD (seeded subsample; cost ~ rows^2)")
    inference_batch_size: int = Field(64, ge=1, le=4096, description="images per forward pass")
    min_effect: float = Field(0.2, ge=0, description="smallest |median shift / reference spread| called 'moved'")
    top_outliers: int = Field(18, ge=0, le=200, description="thumbnails of the most unlike current images")
    per_group: bool = Field(True, description="also test each corruption x severity (or origin) group on its own")
    ui_host: str = Field("127.0.0.1", description="where `tlops drift-ui` serves the Evidently Workspace")
    ui_port: int = Field(8000, ge=1, le=65535)


class ExportParams(Section):
    """Serving exports of the run's candidate (stage export; pipeline/models/export.py)."""

    formats: list[Literal["torchscript", "onnx"]] = Field(["torchscript", "onnx"], min_length=1,
                                                          description="files written beside model.pt")
    atol: float = Field(1e-3, gt=0, le=1, description="largest |logit difference| from PyTorch an export may show "
                                                      "on the checked test images (float32 kernels differ ~1e-5)")
    check_images: int = Field(256, ge=2, description="test images each export is run on and compared")

    @field_validator("formats")
    @classmethod
    def _distinct(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError(f"each format once: {formats}")
        return formats


class PromoteParams(Section):
    """The promotion blessing and the model registry (stage promote; pipeline/promotion/, pipeline/registry.py)."""

    registry: str = Field("registry", min_length=1,
                          description="a folder (relative paths resolve against the main checkout, shared by "
                                      "all runs) or s3://bucket/prefix")
    margin: float = Field(0.005, ge=0, le=1,
                          description="accuracy the candidate must gain over the champion, on the same evaluation "
                                      "images, to replace it")
    superiority: bool = Field(True, description="the gain must also be significant by the paired test (exact "
                                                "McNemar p < alpha); false: the margin on the mean is enough")
    non_inferiority: float = Field(0.02, ge=0, le=1,
                                   description="largest accuracy loss against the champion the paired interval "
                                               "may leave open")
    max_class_drop: float = Field(0.1, ge=0, le=1,
                                  description="largest fall of one class's recall against the champion")
    min_eval_per_class: int = Field(10, ge=1, description="evaluation images each class needs, else the decision "
                                                          "is 'insufficient evidence' (nothing promoted)")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance of the paired tests (references, gain); "
                                                         "intervals at 1 - alpha")
    pixel_reference: bool = Field(True, description="the candidate must also beat a logistic regression on raw "
                                                    "pixels (the majority class it must always beat)")
    allow_task_change: bool = Field(False, description="let a model trained on other classes than the champion's "
                                                       "replace it (a change of task); refused otherwise")


class ServeParams(Section):
    """`tlops serve`: the HTTP service that answers with the champion (pipeline/serving/; docs/serving.md)."""

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; anything but loopback needs "
                                                             "the auth variable (auth_env) set")
    port: int = Field(8500, ge=1, le=65535)
    runtime: Literal["onnx", "torchscript", "eager"] = Field(
        "onnx", description="onnx: the checked ONNX Runtime export; torchscript: the traced export; eager: model.pt "
                            "in PyTorch")
    workers: int = Field(1, ge=1, le=64, description="server processes (uvicorn workers), each with its own model "
                                                     "and an equal share of the cores")
    max_batch: int = Field(32, ge=1, le=1024, description="images run together in one forward pass")
    max_wait_ms: float = Field(5, ge=0, le=1000, description="how long the first request of a batch waits for "
                                                            "others to join it")
    max_queue: int = Field(256, ge=1, description="requests waiting for the model; beyond, 503 with Retry-After")
    max_request_mb: float = Field(20, gt=0, le=1024, description="largest request body, in MiB (413 beyond)")
    max_images: int = Field(64, ge=1, le=4096, description="images one request may carry (413 beyond)")
    top_k: int = Field(3, ge=1, description="classes and probabilities answered per image (a request may ask for "
                                            "another number)")
    follow_s: float = Field(10, ge=0, description="seconds between two looks at the registry's champion (a move is "
                                                  "loaded, checked, then swapped in); 0: never")
    sample_rate: float = Field(0.0, ge=0, le=1, description="share of the accepted images written to sample_store "
                                                            "for the drift check (0: off; refused images never)")
    sample_store: str | None = Field(None, min_length=1,
                                     description="folder (relative to the main checkout) or s3://bucket/prefix "
                                                 "of the sampled batches; the drift-check flow reads every batch "
                                                 "not yet checked from it")
    sample_batch_images: int = Field(200, ge=1, description="a sampled batch is closed at this many images ...")
    sample_batch_s: float = Field(3600, gt=0, description="... or once its first image is this many seconds old "
                                                          "(and when the service stops)")
    sample_check_max_images: int = Field(5000, ge=1, description="a drift check reads the unchecked batches newest "
                                                                 "first up to this many images (the newest batch "
                                                                 "whole); older ones are marked superseded, unread")
    auth_env: str = Field("TLOPS_SERVE_AUTH", pattern=r"^[A-Z_][A-Z0-9_]*$",
                          description="environment variable holding 'user:password': /predict and /metrics then "
                                      "need HTTP basic auth (/health and /ready stay open for probes)")

    @model_validator(mode="after")
    def _sampling_has_a_store(self) -> "ServeParams":
        if self.sample_rate > 0 and not self.sample_store:
            raise ValueError(f"sample_rate {self.sample_rate}: set sample_store (a folder or s3://bucket/prefix) "
                             "to keep the sampled images in")
        return self


class OrchestrateParams(Section):
    """Prefect deployments: schedules, run workspaces and the limits and cores each run keeps to (flows/)."""

    retrain_cron: str = Field("0 3 * * 1", min_length=9, description="retrain-scheduled: weekly, Monday 03:00")
    drift_cron: str = Field("0 6 * * *", min_length=9, description="drift-check: daily at 06:00")
    timezone: str = Field("UTC", min_length=1)
    runs_dir: str = Field("runs", min_length=1, description="folder (in the main checkout) of run worktrees")
    stage_timeout_s: float = Field(7200, gt=0, description="seconds one stage (`dvc repro <stage>`) may run")
    stage_timeouts: dict[str, float] = Field({}, description="per-stage limits over stage_timeout_s, e.g. "
                                                             "{finetune: 14400}")
    command_timeout_s: float = Field(1800, gt=0, description="seconds a git or DVC bookkeeping command (commit, "
                                                             "push, pull, checkout) may run")
    push_retries: int = Field(3, ge=0, le=20, description="`dvc push` attempts after the first, with backoff (it "
                                                         "uploads only what the remote lacks)")
    push_backoff_s: float = Field(2.0, ge=0, description="seconds before the first push retry; doubles each time")
    push_backoff_max_s: float = Field(60, ge=0, description="longest wait between two push attempts; the waits "
                                                           "together stay within command_timeout_s")
    retry_backoff_s: float = Field(5.0, ge=0, le=3600, description="seconds before a flow retries a stage (or a "
                                                                   "push, an upload) killed or failed on a "
                                                                   "transient error; doubles each time")
    keep_runs: int = Field(5, ge=1, description="run worktrees kept, finished and failed, newest first; older ones "
                                                "are removed after each run (their tags and DVC versions stay)")
    # how fast a stage computes (its numbers only through rounding, as another machine would): here, where no stage
    # subscribes, so a change re-runs nothing (pipeline/common/threads.py)
    threads: int | None = Field(None, ge=1, le=4096, description="threads of each stage process of a run; null = "
                                                                 "the cores this process may use, shared equally "
                                                                 "by the jobs in progress on the machine")
    server_startup_s: float = Field(120, gt=0, le=3600, description="seconds `make run` waits for Prefect's "
                                                                    "temporary server to start before it fails")
    flow_timeout_s: float = Field(86400, gt=0, description="seconds a whole retrain or drift-check run may take, "
                                                           "the wait for the slot included; then the stage running "
                                                           "is stopped with every process it started")
    slot_timeout_s: float = Field(43200, gt=0, description="seconds a retrain run waits for the concurrency_limit "
                                                           "slot before it fails")
    work_pool: str = Field("tlops", min_length=1, description="the Prefect work pool the deployments run on")
    work_pool_type: Literal["process", "docker", "kubernetes"] = Field(
        "process", description="process: a worker on this machine; docker/kubernetes: a job per run from "
                               "worker_image")
    worker_image: str = Field("tlops-worker:latest", min_length=1,
                              description="image of docker/kubernetes flow runs (infra/docker/Dockerfile)")
    concurrency_limit: str = Field("tlops-retrain", min_length=1,
                                   description="Prefect global concurrency limit (one slot) every retrain run holds "
                                               "while it trains: a scheduled and an on-demand run never overlap")
    reports_store: str | None = Field(None, description="s3://bucket/prefix: each run's reports are uploaded "
                                                        "there and linked in the dashboard by presigned URLs")
    report_link_days: float = Field(7, gt=0, le=7, description="days a presigned report link stays valid (SigV4 "
                                                               "allows at most 7)")
    reports_url: str | None = Field(None, description="http(s) base URL of a web server that serves runs_dir "
                                                      "(infra/compose's reports service); links use it")
    report_link_profile: str | None = Field(None, min_length=1, description="AWS profile of a read-only identity "
                                                  "that signs the report links of reports_store (never the "
                                                  "pipeline's own credentials); unset: plain s3:// locations")
    form_source_roots: list[str] = Field([], description="local folders (relative to the main checkout, or "
                                                         "absolute) whose subfolders a run started from the "
                                                         "dashboard may name as its source or drift batch")
    form_s3_buckets: list[str] = Field([], description="buckets a dashboard run's s3:// source or drift batch may "
                                                       "name (besides the buckets of params.yaml's own sources)")
    drift_retrain_deployment: str = Field("retrain/retrain-on-demand", pattern=r"^[^/\s]+/[^/\s]+$",
                                          description="the deployment (flow/deployment) a drift check starts "
                                                      "when it detects drift")
    events: list[EventName] = Field(["run.failed", "drift.detected", "model.promoted", "model.refused",
                                     "verdict.negative"],
                                    description="the events sent to TLOPS_EVENTS_WEBHOOK and TLOPS_APPRISE_URLS "
                                                "(every one is a Prefect event tlops.<event> too)")


# Keys that moved to another section: a params.yaml, profile or --set that still names one fails with a line
# saying where it went (it is never read under its old name)
_MOVED = {**{f"ingest.{key}": f"source.{key}" for key in ("digits_size", "s3_endpoint_url", "s3_profile",
                                                          "allowed_roots", "max_file_mb", "max_unreadable_fraction",
                                                          "allow_download", "download_root")},
          "ingest.source": "source.location", "ingest.retries": "source.s3_retries",
          "ingest.download_workers": "source.read_workers", "ingest.shard_size_mb": "common.shard_size_mb",
          **{f"finetune.{key}": f"train.{key}" for key in TrainParams.model_fields},
          "evaluate.budgets": "curve.budgets", "evaluate.seeds": "curve.seeds",
          "evaluate.curve_image_size": "curve.image_size", "evaluate.curve_val_per_class": "curve.val_per_class"}


class Params(Section):
    """The whole of params.yaml."""

    common: CommonParams = CommonParams()
    source: SourceParams = SourceParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    shift: ShiftParams = ShiftParams()
    select: SelectParams = SelectParams()
    freeze: FreezeParams = FreezeParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    baseline: BaselineParams = BaselineParams()
    curve: CurveParams = CurveParams()
    evaluate: EvaluateParams = EvaluateParams()
    drift: DriftParams = DriftParams()
    export: ExportParams = ExportParams()
    promote: PromoteParams = PromoteParams()
    serve: ServeParams = ServeParams()
    orchestrate: OrchestrateParams = OrchestrateParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def section(self, stage: str) -> Section:
        """Return the section of one stage by its params.yaml name."""
        return getattr(self, "validate_" if stage == "validate" else stage)


def param_keys(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Every settable key of the schema as ``section.key`` (nested sections flattened; a mapping is one key)."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        keys.extend(param_keys(field.annotation, key + ".") if nested else [key])
    return keys


def _read_yaml(path: Path) -> dict[str, Any]:
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
    return raw


def profile_overrides(params_path: str | Path, profile: str) -> dict[str, Any]:
    """The overrides of a named profile (``params.<profile>.yaml`` beside params.yaml) as ``{"a.b": value}``.

    Raises:
        ConfigError: no such profile (the message lists the ones there are).
    """
    params_path = Path(params_path)
    path = params_path.with_name(f"{params_path.stem}.{profile}.yaml")
    if not path.is_file():
        found = sorted(p.name.split(".")[1] for p in params_path.parent.glob(f"{params_path.stem}.*.yaml"))
        raise ConfigError(f"profile {profile!r}: {path} not found (profiles here: {', '.join(found) or 'none'})")

    def flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    return flat(_read_yaml(path))


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None,
                profile: str | None = None) -> Params:
    """Read, override and validate params.

    Args:
        path: the params.yaml file.
        overrides: ``key.path=value`` strings (values parsed as YAML), applied before validation (after the profile).
        profile: a named profile applied first (``params.<profile>.yaml`` beside ``path``, e.g. ``gpu``).
    Returns:
        The validated params.
    Raises:
        ConfigError: one line per problem, naming file, key path, bad value and what is allowed.
    """
    path = Path(path)
    raw = _read_yaml(path)
    if profile:
        raw = apply_overrides(raw, [(key.split("."), value) for key, value in profile_overrides(path, profile).items()])
    raw = apply_overrides(raw, parse_overrides(overrides or []))
    return validate_params(raw, source=str(path) + (f" + profile {profile}" if profile else ""))


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
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set freeze.epochs=3")
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
    if kind == "extra_forbidden" and loc in _MOVED:
        return f"{source}: '{loc}' moved to '{_MOVED[loc]}': set it there"
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
