"""params.yaml validation: defaults load, and each kind of bad input gives one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params
from tests.conftest import ROOT


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_params(path, overrides)
    return str(info.value)


def test_project_params_are_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # every section of the schema is spelled out in params.yaml, so users see every knob
    assert set(raw) == set(Params.model_fields) - {"validate_"} | {"validate"}
    assert params.common.seed == 0 and params.source.location == "sklearn-digits"


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(_write(tmp_path, "")) == Params()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("common:\n  sed: 1\n", "unknown key 'common.sed' (allowed here: device, image_size, log_level, num_workers, "
                                 "seed, shard_size_mb)"),
        ("comon:\n  seed: 1\n", "unknown key 'comon'"),
        ("common:\n  seed: ten\n", "common.seed = 'ten': Input should be a valid integer"),
        ("common:\n  image_size: 4\n", "common.image_size = 4: Input should be greater than or equal to 8"),
        ("common:\n  device: gpu\n", "common.device = 'gpu': String should match pattern"),
        ("common:\n  log_level: LOUD\n", "common.log_level = 'LOUD': Input should be 'DEBUG', 'INFO', 'WARNING' "
                                          "or 'ERROR'"),
        ("ingest:\n  val_fraction: 1.5\n", "ingest.val_fraction = 1.5: Input should be less than 1"),
        ("ingest:\n  val_fraction: 0.5\n  test_fraction: 0.45\n", "val_fraction + test_fraction = 0.95: must be < 0.9"),
        ("common: 3\n", "common = 3: Input should be a valid dictionary or instance of CommonParams"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("common:\n  seed: [1\n", "not valid YAML"),
        ("select:\n  weights:\n    resnet18: {uri: r18.pth, sha256: f37072fd}\n",
         "select.weights.resnet18.sha256 = 'f37072fd': String should match pattern '^[0-9a-fA-F]{64}$'"),
        ("orchestrate:\n  threads: 0\n", "orchestrate.threads = 0: Input should be greater than or equal to 1"),
        ("orchestrate:\n  threads: all\n", "orchestrate.threads = 'all': Input should be a valid integer"),
        ("orchestrate:\n  server_startup_s: 0\n", "orchestrate.server_startup_s = 0: Input should be greater than 0"),
    ],
)
def test_bad_params_give_one_clear_line(tmp_path, text, expected):
    path = _write(tmp_path, text)
    message = _error(path)
    assert expected in message
    assert message.startswith(str(path))
    assert len(message.splitlines()) == 1


def test_the_cores_of_a_run_are_automatic_or_a_count_and_a_change_reruns_no_stage(tmp_path):
    assert load_params(ROOT / "params.yaml").orchestrate.threads is None  # the machine's cores, shared by its jobs
    assert load_params(_write(tmp_path, "orchestrate:\n  threads: 3\n")).orchestrate.threads == 3
    assert load_params(ROOT / "params.yaml", ["orchestrate.server_startup_s=300"]).orchestrate.server_startup_s == 300
    # how fast a stage computes, not what: no stage subscribes to orchestrate, so a change re-runs nothing
    from pipeline.project import declared_paths, dvc_stages

    assert not [stage for stage in dvc_stages(ROOT) if any(
        entry.split(".")[0] == "orchestrate" for entry in declared_paths(ROOT, stage, "params"))]


def test_a_key_that_moved_is_refused_naming_its_new_place(tmp_path):
    path = _write(tmp_path, "ingest:\n  source: /data/cats\n  shard_size_mb: 8\n  retries: 2\n")
    assert _error(path).splitlines() == [
        f"{path}: 'ingest.source' moved to 'source.location': set it there",
        f"{path}: 'ingest.shard_size_mb' moved to 'common.shard_size_mb': set it there",
        f"{path}: 'ingest.retries' moved to 'source.s3_retries': set it there"]
    assert "'ingest.s3_profile' moved to 'source.s3_profile'" in _error(_write(tmp_path, ""), ["ingest.s3_profile=x"])
    assert "'finetune.batch_size' moved to 'train.batch_size'" in _error(_write(tmp_path,
                                                                                 "finetune:\n  batch_size: 8\n"))


def test_every_problem_is_reported(tmp_path):
    message = _error(_write(tmp_path, "common:\n  seed: -1\n  image_size: big\n"))
    assert len(message.splitlines()) == 2
    assert "common.seed = -1" in message and "common.image_size = 'big'" in message


def test_missing_file_is_named(tmp_path):
    assert _error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"


def test_overrides_apply_and_are_validated(tmp_path):
    path = _write(tmp_path, "common:\n  seed: 1\n")
    params = load_params(path, ["common.seed=7", "source.digits_size=32"])
    assert params.common.seed == 7 and params.source.digits_size == 32
    assert "common.seed = 'x'" in _error(path, ["common.seed=x"])
    assert "unknown key 'ingest.nope'" in _error(path, ["ingest.nope=1"])
    assert "expected key.path=value" in _error(path, ["common.seed"])
    assert "is a value, not a section" in _error(path, ["common.seed.deeper=1"])


def test_the_gpu_profile_applies_over_params_and_a_run_form_can_ask_for_it():
    from flows.parameters import RetrainParameters

    root = Path(__file__).resolve().parents[1]
    cpu, gpu = load_params(root / "params.yaml"), load_params(root / "params.yaml", profile="gpu")
    assert (cpu.common.image_size, gpu.common.image_size) == (64, 224)
    assert len(gpu.curve.budgets) > len(cpu.curve.budgets) and gpu.shift.per_cell is None
    assert load_params(root / "params.yaml", ["common.image_size=96"], profile="gpu").common.image_size == 96
    with pytest.raises(ConfigError, match="profile 'tpu'.*profiles here: gpu"):
        load_params(root / "params.yaml", profile="tpu")
    overrides = RetrainParameters(profile="gpu", seed=3).overrides(root / "params.yaml")
    assert overrides["common.image_size"] == 224 and overrides["common.seed"] == 3
    assert RetrainParameters(profile="gpu", image_size=128).overrides(root / "params.yaml")["common.image_size"] == 128
