"""The Great Expectations 1.x gate over the per-image table: suite, checkpoint, Data Docs, results.

A file-backed GX context is created fresh under the report folder on every run (so the suite always
matches params.yaml), with a pandas data source whose dataframe asset is the image table, one
ExpectationSuite, one ValidationDefinition and one Checkpoint whose action builds the Data Docs HTML
into ``<report dir>/data_docs/``. Every expectation carries its check name in ``meta`` and its GX
``severity`` from ``params.validate.severity``; only critical failures fail the gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import ProgressBarsConfig

from pipeline.common.logs import get_logger
from pipeline.config import ValidateParams, ValidateSeverities
from pipeline.validation.checks import EVALUATION_SPLITS

__all__ = ["CheckResult", "CHECK_NAMES", "build_expectations", "run_suite", "DOCS_DIR"]
log = get_logger(__name__)
DOCS_DIR = "data_docs"
MAX_OFFENDING = 20
CHECK_NAMES = tuple(ValidateSeverities.model_fields)  # one severity per check, in report order
# Class-level checks report the offending classes, split-level ones the splits, leak checks the partner file too.
_CLASS_CHECKS = {"min_images_per_class", "class_imbalance"}
_SPLIT_CHECKS = {"min_images_per_split"}
_PARTNER_COLUMNS = {"no_leak_sha256": "leak_sha256_with", "no_leak_phash": "leak_phash_with",
                    "no_label_conflict": "label_conflict_with"}


@dataclass
class CheckResult:
    """The outcome of one check (one or more GX expectations)."""

    name: str
    severity: str
    threshold: str = ""
    passed: bool = True
    observed: list[Any] = field(default_factory=list)
    unexpected_count: int = 0
    offending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for metrics.json."""
        observed = self.observed[0] if len(self.observed) == 1 else self.observed
        return {"severity": self.severity, "threshold": self.threshold, "passed": self.passed, "observed": observed,
                "unexpected_count": self.unexpected_count, "offending": self.offending}


def build_expectations(cfg: ValidateParams, classes: list[str]) -> dict[str, list[gxe.Expectation]]:
    """The expectations of each check, built from the validate params.

    Args:
        cfg: ``params.validate``.
        classes: the expected class names.
    Returns:
        Check name -> its expectations (tagged with ``meta.check`` and the check's severity).
    """
    bounds = {"min_value": cfg.min_side, "max_value": cfg.max_side}
    decode_share = 1.0 - (cfg.max_quarantine_fraction if cfg.corrupt_policy == "quarantine" else 0.0)
    checks = {
        "decodes": [gxe.ExpectColumnValuesToBeInSet(column="decode_ok", value_set=[True], mostly=decode_share)],
        "labels_match_classes": [gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=classes),
                                 gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes)],
        "min_images_per_class": [gxe.ExpectColumnValuesToBeBetween(column="class_n_train",
                                                                   min_value=cfg.min_images_per_class)],
        "min_images_per_split": [
            gxe.ExpectColumnDistinctValuesToContainSet(column="split_label", value_set=list(EVALUATION_SPLITS)),
            gxe.ExpectColumnValuesToBeBetween(column="split_n_images", min_value=cfg.min_images_per_split)],
        "class_imbalance": [gxe.ExpectColumnValuesToBeBetween(column="class_ratio_to_largest",
                                                              min_value=1.0 / cfg.max_class_imbalance)],
        # one class passes every per-class check, yet no classifier can be trained on it
        "min_classes": [gxe.ExpectColumnUniqueValueCountToBeBetween(column="class_label", min_value=cfg.min_classes)],
        "row_count": [gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows)],
        "width_in_bounds": [gxe.ExpectColumnValuesToBeBetween(column="width", **bounds)],
        "height_in_bounds": [gxe.ExpectColumnValuesToBeBetween(column="height", **bounds)],
        "mode_convertible": [gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=cfg.accepted_modes)],
        "needs_no_conversion": [gxe.ExpectColumnValuesToBeNull(column="conversion")],
        "no_duplicates_in_split": [gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "sha256"])],
        "no_label_conflict": [gxe.ExpectColumnValuesToBeNull(column="label_conflict_with")],
        "no_leak_sha256": [gxe.ExpectColumnValuesToBeNull(column="leak_sha256_with")],
        "no_leak_phash": [gxe.ExpectColumnValuesToBeNull(column="leak_phash_with")],
    }
    for name, expectations in checks.items():
        for expectation in expectations:
            expectation.meta = {"check": name}
            expectation.severity = getattr(cfg.severity, name)
    return checks


def run_suite(table: pd.DataFrame, cfg: ValidateParams, classes: list[str], context_dir: Path) -> list[CheckResult]:
    """Validate the image table with a GX checkpoint and build the Data Docs.

    Args:
        table: the profile with check columns (one row per image, a RangeIndex).
        cfg: ``params.validate``.
        classes: the expected class names.
        context_dir: an empty folder that receives the GX project (``gx/``) and ``data_docs/``.
    Returns:
        One result per check, in :data:`CHECK_NAMES` order.
    """
    if not isinstance(table.index, pd.RangeIndex):  # offending rows are looked up by position
        table = table.reset_index(drop=True)
    context = _new_context(context_dir)
    batch = (context.data_sources.add_pandas("profile").add_dataframe_asset("images")
             .add_batch_definition_whole_dataframe("all images"))
    suite = context.suites.add(gx.ExpectationSuite(name="image_gate"))
    built = build_expectations(cfg, classes)
    for expectations in built.values():
        for expectation in expectations:
            suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite,
                                                                            name="image_gate"))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="image_gate", validation_definitions=[definition], actions=[UpdateDataDocsAction(name="data_docs")],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_OFFENDING}))
    outcome = checkpoint.run(batch_parameters={"dataframe": table})
    log.info("GX checkpoint %s: %d expectations, success %s (any severity)", checkpoint.name,
             len(suite.expectations), outcome.success)
    results = {name: CheckResult(name, getattr(cfg.severity, name), "; ".join(map(_threshold, built[name])))
               for name in CHECK_NAMES}
    for validation in outcome.run_results.values():
        for result in validation.results:
            _merge(results[result.expectation_config.meta["check"]], result, table)
    return list(results.values())


def _threshold(expectation: gxe.Expectation) -> str:
    """The threshold the report shows: what an expectation requires, in a few words built from its arguments."""
    kw = expectation.configuration.kwargs
    subject = kw.get("column", "rows")
    kind = expectation.expectation_type
    if kind == "expect_column_unique_value_count_to_be_between":
        subject = f"distinct values of {subject}"
    if kind.endswith("_to_be_between"):
        low = f"{_num(kw['min_value'])} <= " if kw.get("min_value") is not None else ""
        high = f" <= {_num(kw['max_value'])}" if kw.get("max_value") is not None else ""
        rule = f"{low}{subject}{high}"
    elif kind == "expect_column_distinct_values_to_contain_set":
        rule = f"{subject} has each of {_values(kw['value_set'])}"
    elif kind.endswith("_to_be_in_set"):
        rule = f"{subject} in {_values(kw['value_set'])}"
    elif kind.endswith("_to_be_null"):
        rule = f"{subject} is null"
    elif kind == "expect_compound_columns_to_be_unique":
        rule = f"({', '.join(kw['column_list'])}) unique"
    else:  # an expectation added later without a phrase here still shows what it checks
        rule = f"{kind} {kw}"
    mostly = kw.get("mostly", 1.0)
    return rule if mostly >= 1 else f"{rule} for at least {100 * mostly:g}% of rows"


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def _values(values: list[Any], shown: int = 12) -> str:
    """A value set as {a, b, ...}, cut after ``shown`` values (thousands of classes stay one line)."""
    more = f", ... ({len(values)} in all)" if len(values) > shown else ""
    return "{" + ", ".join(map(str, values[:shown])) + more + "}"


def _new_context(context_dir: Path) -> Any:
    """A file-backed GX context in ``context_dir``: no analytics, no progress bars, docs in data_docs/."""
    context = gx.get_context(mode="file", project_root_dir=str(context_dir))
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.save()
    # base_directory is relative to <context_dir>/gx: put the HTML beside it, not deep in uncommitted/.
    context.add_data_docs_site("validate", {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": f"../{DOCS_DIR}/"},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    context.delete_data_docs_site("local_site")
    return context


def _merge(check: CheckResult, result: Any, table: pd.DataFrame) -> None:
    """Fold one expectation result into its check's result."""
    details = result.result or {}
    check.passed = check.passed and bool(result.success)
    if details.get("observed_value") is not None:
        check.observed.append(details["observed_value"])
    elif "partial_missing_list" in details:
        check.observed.append(f"missing classes {details['partial_missing_list']}")
    elif "element_count" in details:  # nulls are not checked: count only the values that were
        checked = details["element_count"] - int(details.get("missing_count") or 0)
        check.observed.append(f"{details.get('unexpected_count', 0)} of {checked} values unexpected")
    check.unexpected_count += int(details.get("unexpected_count") or 0)
    offending = [_missing(check.name, value) for value in details.get("partial_missing_list", [])]
    offending += _describe_rows(check.name, details.get("partial_unexpected_index_list") or [], table)
    check.offending = list(dict.fromkeys(check.offending + offending))[:MAX_OFFENDING]
    if not result.success and result.exception_info and result.exception_info.get("raised_exception"):
        check.observed.append(f"error: {result.exception_info.get('exception_message')}")


def _missing(check: str, value: Any) -> str:
    """An expected class or split without images; a split names the ingest param that sizes it."""
    if check in _SPLIT_CHECKS:
        return f"split {value!r}: no images (ingest.{value}_fraction)"
    return f"class {value!r}: no images"


def _describe_rows(check: str, indices: list[Any], table: pd.DataFrame) -> list[str]:
    """Name the offending rows: their files (with the partner file for leaks), their classes or their splits."""
    rows = table.loc[[i for i in indices if i in table.index]]
    if check in _CLASS_CHECKS:
        return [f"class {label!r}" for label in dict.fromkeys(rows["label"])]
    if check in _SPLIT_CHECKS:
        return [f"split {row.split_label!r}: {row.split_n_images} image(s) (ingest.{row.split_label}_fraction)"
                for row in rows.itertuples()]
    partner = _PARTNER_COLUMNS.get(check)
    names = []
    for _, row in rows.iterrows():
        detail = f" ~ {row[partner]}" if partner else (f" ({row['error']})" if check == "decodes" else "")
        names.append(f"{row['source_path']}{detail}")
    return names
