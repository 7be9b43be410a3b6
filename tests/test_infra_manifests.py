"""infra/: the compose stack, the worker image, the Kubernetes manifests, the work-pool template and the
Helm values, checked with real validators and against the project's own settings (params.yaml,
dvc.yaml, requirements.lock). Nothing here needs a Docker daemon or a cluster: compose files go through
`docker compose config` (or Debian's docker-compose 1.29), manifests through kubernetes-validate's
bundled schemas (offline), the work-pool template through Prefect's own template code. The one test
that builds the image skips without a daemon.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

from pipeline.config import load_params
from pipeline.project import declared_options

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if not p.name.startswith("values-"))
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest supported, newest bundled
NAMESPACE = "tlops"


def _code_constant(module: str, name: str) -> str:
    """A module-level string constant of the project's code, read without importing it (torch is slow)."""
    for node in ast.parse((ROOT / module).read_text()).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for n, v in zip(names, values):
                    if isinstance(n, ast.Name) and n.id == name:
                        return ast.literal_eval(v)
    raise AssertionError(f"{module} has no constant {name}")


def _field_default(module: str, cls: str, field: str):
    """The default of a settings field (``name: T = Field(default, ...)`` or ``name: T = default``) of a class in
    the project's code, read without importing it."""
    for node in ast.parse((ROOT / module).read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == field:
                    value = item.value
                    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Field":
                        value = value.args[0] if value.args else next(k.value for k in value.keywords
                                                                      if k.arg == "default")
                    return ast.literal_eval(value)
            raise AssertionError(f"{module}: {cls} has no field {field}")
    raise AssertionError(f"{module} has no class {cls}")


def _serve_auth_env(params) -> str:
    """The variable `tlops serve` reads its basic auth from: params serve.auth_env, which must be the code's
    default (ServeParams.auth_env), the name infra/ gives it."""
    default = _field_default("pipeline/config.py", "ServeParams", "auth_env")
    assert params.serve.auth_env == default, f"params.yaml serve.auth_env {params.serve.auth_env!r} != {default!r}"
    return default


def _serve_command(params) -> list[str]:
    """`tlops serve` on every address of its container (the server demands the auth variable there), on serve.port."""
    return ["tlops", "serve", "--host", "0.0.0.0", "--port", str(params.serve.port)]


# the environment variables the code reads, by the names the code gives them
NPROC_ENV = _code_constant("pipeline/training/ddp.py", "NPROC_ENV")
WEBHOOK_ENV = _code_constant("pipeline/runs/notify.py", "WEBHOOK_ENV")
FAILURE_WEBHOOK_ENV = _code_constant("pipeline/runs/notify.py", "FAILURE_WEBHOOK_ENV")
APPRISE_ENV = _code_constant("pipeline/runs/notify.py", "APPRISE_ENV")
URL_ENV = _code_constant("pipeline/runs/publish.py", "URL_ENV")


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def _locked(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return re.split(r"[\s;#]", line.split("==", 1)[1], maxsplit=1)[0]  # the version, not markers/comments
    raise AssertionError(f"{name} is not pinned in requirements.lock")


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture
def offline(monkeypatch):
    """Any network connection attempted inside the test fails it (schemas must come from the package)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _k8s_validate(doc: dict, where: str) -> None:
    """Strict schema validation (unknown fields are errors) against every version in K8S_VERSIONS."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {doc['kind']} invalid for Kubernetes {version} at "
                        f"{'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: {e.message}")


# ---------------------------------------------------------------- Kubernetes manifests

@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path, offline):
    docs = _docs(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        _k8s_validate(doc, path.name)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {doc['kind']} outside {NAMESPACE}"


def test_validator_rejects_a_broken_manifest(offline):
    broken = copy.deepcopy(_docs(K8S / "evidently-ui.yaml")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def _by_kind(kind: str) -> list[dict]:
    return [doc for path in MANIFESTS for doc in _docs(path) if doc["kind"] == kind]


def test_manifests_agree_with_the_project(params):
    [pvc] = _by_kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "tlops-project" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "tlops-s3" in {s["metadata"]["name"] for s in _by_kind("Secret")}
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in _by_kind("Deployment")}
    services = {s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in _by_kind("Service")}
    evidently = deployments["tlops-evidently-ui"]["containers"][0]
    assert evidently["image"] == params.orchestrate.worker_image
    assert evidently["args"] == _evidently_command(params)
    assert services["tlops-evidently-ui"] == params.drift.ui_port
    reports = deployments["tlops-reports"]
    assert reports["containers"][0]["volumeMounts"][0] == {"name": "project", "mountPath": "/project",
                                                         "readOnly": True}
    assert services["tlops-reports"] == 8080
    [conf] = [c for c in _by_kind("ConfigMap") if c["metadata"]["name"] == "tlops-reports-nginx"]
    assert _nginx_directives(conf["data"]["default.conf"]) == _nginx_directives((COMPOSE / "nginx.conf").read_text())
    for spec in deployments.values():
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["tlops-project"]


def test_serve_manifest_agrees_with_the_project(params):
    """infra/k8s/serve.yaml: `tlops serve` from the tlops image on the project PVC (read-only), probes on the
    server's open endpoints, its auth from the Secret tlops-serve-auth, S3 from tlops-s3, a Service on serve.port."""
    port = params.serve.port
    [deployment] = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == "tlops-serve"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == params.orchestrate.worker_image
    assert "command" not in container  # the image's entrypoint (tini, then tlops-entrypoint) runs the args
    assert container["args"] == _serve_command(params)
    assert container["workingDir"] == "/project"
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    # liveness: the process answers; readiness: a checked model is loaded (503 before)
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    env = {e["name"]: e for e in container["env"]}
    # not optional: without it the server refuses to listen on the pod's address
    assert env[_serve_auth_env(params)] == {"name": _serve_auth_env(params), "valueFrom": {
        "secretKeyRef": {"name": "tlops-serve-auth", "key": "auth-string"}}}
    assert not any("value" in e for e in env.values()), "no secret written into the manifest"
    assert {"secretRef": {"name": "tlops-s3"}} in container["envFrom"]  # an s3:// registry or sample store
    # it writes nothing to the project: the PVC is read-only, in the pod's volume and in the mount
    assert container["volumeMounts"] == [{"name": "project", "mountPath": "/project", "readOnly": True}]
    assert pod["volumes"] == [{"name": "project",
                               "persistentVolumeClaim": {"claimName": "tlops-project", "readOnly": True}}]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests["cpu"] and requests["memory"] and limits["memory"]
    evidently = next(d for d in _by_kind("Deployment") if d["metadata"]["name"] == "tlops-evidently-ui")
    assert pod["securityContext"] == evidently["spec"]["template"]["spec"]["securityContext"]  # uid 1000, as the image
    [service] = [s for s in _by_kind("Service") if s["metadata"]["name"] == "tlops-serve"]
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    [secret] = [s for s in _by_kind("Secret") if s["metadata"]["name"] == "tlops-serve-auth"]
    assert list(secret["stringData"]) == ["auth-string"] and ":" in secret["stringData"]["auth-string"]


def test_services_reach_their_pods():
    """Each Service selects the pods of its Deployment (and nothing else's) and targets a port they name."""
    deployments = {d["metadata"]["name"]: d for d in _by_kind("Deployment")}
    services = _by_kind("Service")
    assert {s["metadata"]["name"] for s in services} == set(deployments)
    for service in services:
        name = service["metadata"]["name"]
        selector, spec = service["spec"]["selector"], deployments[name]["spec"]
        assert selector == spec["selector"]["matchLabels"], name
        assert selector.items() <= spec["template"]["metadata"]["labels"].items(), name
        others = [n for n, d in deployments.items() if n != name
                  and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert others == [], f"{name} also selects {others}"
        named = {p["name"] for c in spec["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= named, name


def _nginx_directives(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _evidently_command(params) -> list[str]:
    """`evidently ui` over the drift stage's Workspace (dvc.yaml's --workspace) in the /project checkout."""
    workspace = declared_options(ROOT, "drift")["workspace"]
    return ["evidently", "ui", "--workspace", f"/project/{workspace}", "--host", "0.0.0.0",
            "--port", str(params.drift.ui_port)]


# ---------------------------------------------------------------- work-pool base job template

TEMPLATE = K8S / "work-pool-template.json"
# prefect_kubernetes.worker._get_base_job_manifest: what the worker requires of every job manifest
PREFECT_REQUIRED = {"apiVersion": "batch/v1", "kind": "Job",
                    "spec": {"template": {"spec": {"parallelism": 1, "completions": 1, "restartPolicy": "Never",
                                                   "containers": [{"name": "prefect-job"}]}}}}


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _prefect_default() -> dict:
    """The default base job template of a kubernetes work pool, as the installed Prefect server has it."""
    views = files("prefect.server.api.collections_data").joinpath("views/aggregate-worker-metadata.json")
    return json.loads(views.read_text())["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]


def _contains(ours, required, path="") -> list[str]:
    """Paths where ``ours`` lacks or changes what ``required`` has (lists compared item by item)."""
    if isinstance(required, dict):
        if not isinstance(ours, dict):
            return [path or "/"]
        return [p for key, value in required.items()
                for p in (_contains(ours[key], value, f"{path}/{key}") if key in ours else [f"{path}/{key}"])]
    if isinstance(required, list):
        if not isinstance(ours, list) or len(ours) < len(required):
            return [path]
        return [p for i, value in enumerate(required) for p in _contains(ours[i], value, f"{path}/{i}")]
    return [] if ours == required else [path]


def _render(template: dict, **values) -> dict:
    """The job manifest a kubernetes worker submits for one flow run: Prefect's own rendering of the
    template with the variables' defaults and ``values``, then the worker's finishing steps that shape
    the manifest (prefect_kubernetes KubernetesWorkerJobConfiguration.prepare_for_flow_run)."""
    defaults = {name: spec["default"] for name, spec in template["variables"]["properties"].items()
                if spec.get("default") is not None}
    run = {"name": "tlops-retrain", "labels": {"prefect.io/flow-run-id": "0"},
           "command": "prefect flow-run execute", "env": {"PREFECT_API_URL": "http://prefect-server:4200/api"}}
    config = apply_values(copy.deepcopy(template["job_configuration"]), {**defaults, **run, **values})
    manifest = config["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    worker_env = [{"name": k, "value": v} for k, v in config["env"].items()]
    names = {e["name"] for e in worker_env}
    container["env"] = worker_env + [e for e in container.get("env", []) if e["name"] not in names]
    container["args"] = shlex.split(container["args"])
    manifest["metadata"]["labels"] = config["labels"]
    return manifest


def test_template_extends_prefects_default_kubernetes_template(params):
    ours, default = _template(), _prefect_default()
    WorkPoolCreate(name=params.orchestrate.work_pool, type="kubernetes", base_job_template=ours)  # server-side check
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    kept = {key: value for key, value in default["job_configuration"].items() if key != "job_manifest"}
    assert _contains(ours["job_configuration"], kept) == []
    manifest = ours["job_configuration"]["job_manifest"]
    assert _contains(manifest, PREFECT_REQUIRED) == []
    unchanged = copy.deepcopy(default["job_configuration"]["job_manifest"])
    del unchanged["spec"]["template"]["spec"]["containers"][0]["env"]  # ours: a list the worker prepends to
    assert _contains(manifest, unchanged) == []


def test_template_variables_schema(params):
    variables = _template()["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    validator = jsonschema.Draft7Validator(variables)
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    assert list(validator.iter_errors(defaults)) == []
    assert defaults["gpus"] == "1"
    assert defaults["image"] == params.orchestrate.worker_image
    assert defaults["namespace"] == NAMESPACE
    assert validator.is_valid({"gpus": "4"})
    for bad in ("0", "two", 2):  # an int would become an env value Kubernetes rejects
        assert not validator.is_valid({"gpus": bad}), bad


@pytest.mark.parametrize("gpus", [None, "4"])
def test_rendered_job_is_valid_kubernetes(gpus, params, offline):
    template = _template()
    manifest = _render(template, **({"gpus": gpus} if gpus else {}))
    want = gpus or "1"
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == params.orchestrate.worker_image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == want
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[NPROC_ENV] == want and env["PREFECT_API_URL"]
    assert {"secretRef": {"name": "tlops-s3"}} in container["envFrom"]
    assert container["workingDir"] == "/project"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"project": "tlops-project"} and mounts["project"] == "/project"
    assert manifest["metadata"]["namespace"] == NAMESPACE
    # Prefect's worker demands parallelism/completions in the pod spec (PREFECT_REQUIRED); they are not
    # pod fields, and the API server drops them, so they are left out of the strict schema check
    for quirk in ("parallelism", "completions"):
        assert pod.pop(quirk) == 1
    _k8s_validate(manifest, f"{TEMPLATE.name} rendered with gpus={want}")


def test_docker_work_pool_template(params):
    """infra/docker/work-pool-template.json (flows/engine.py creates a docker pool with it): prefect-docker's
    default plus the compose stack's image, project volume and network."""
    ours = json.loads((DOCKER / "work-pool-template.json").read_text())
    views = files("prefect.server.api.collections_data").joinpath("views/aggregate-worker-metadata.json")
    default = json.loads(views.read_text())["prefect-docker"]["docker"]["default_base_job_configuration"]
    WorkPoolCreate(name=params.orchestrate.work_pool, type="docker", base_job_template=ours)
    assert ours["job_configuration"] == default["job_configuration"]
    assert set(default["variables"]["properties"]) == set(ours["variables"]["properties"])
    variables = ours["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    assert list(jsonschema.Draft7Validator(variables).iter_errors(defaults)) == []
    project = ENV_EXAMPLE.read_text().split("COMPOSE_PROJECT_NAME=", 1)[1].split()[0]
    assert defaults["image"] == params.orchestrate.worker_image
    assert defaults["volumes"] == [f"{project}_project:/project"] and defaults["networks"] == [f"{project}_default"]
    env = defaults["env"]
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # never a value: a Secret block reference
        assert re.fullmatch(r"\{\{ prefect\.blocks\.secret\.[a-z0-9-]+ \}\}", env[secret])
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env[URL_ENV] == "http://localhost:8080"


# ---------------------------------------------------------------- Helm values

CHARTS_ENV = "TLOPS_PREFECT_HELM_CHARTS"


def _leaf_paths(tree, prefix=()) -> set[tuple]:
    if isinstance(tree, dict) and tree:
        return {p for key, value in tree.items() for p in _leaf_paths(value, (*prefix, key))}
    return {prefix}


def _all_paths(tree, prefix=()) -> set[tuple]:
    paths = {prefix}
    if isinstance(tree, dict):
        for key, value in tree.items():
            paths |= _all_paths(value, (*prefix, key))
    return paths


def _merged(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


@pytest.mark.parametrize("chart", ["prefect-server", "prefect-worker"])
def test_helm_values_use_only_the_charts_keys(chart):
    ours = yaml.safe_load((K8S / f"values-{chart}.yaml").read_text())
    charts = os.environ.get(CHARTS_ENV)
    if not charts:
        pytest.skip(f"set {CHARTS_ENV} to the charts/ folder of a PrefectHQ/prefect-helm checkout to check our "
                    f"values against the chart's values.yaml and values.schema.json (not stored in this repo)")
    folder = Path(charts) / chart
    theirs = yaml.safe_load((folder / "values.yaml").read_text())
    unknown = sorted(".".join(p) for p in _leaf_paths(ours) if p not in _all_paths(theirs))
    assert unknown == [], f"keys that {chart}'s values.yaml does not have: {unknown}"
    schema = folder / "values.schema.json"
    if schema.is_file():  # Helm validates the merged values against it at install time
        errors = jsonschema.Draft7Validator(json.loads(schema.read_text())).iter_errors(_merged(theirs, ours))
        assert [e.message for e in errors] == []


def test_helm_values_agree_with_the_project(params):
    server = yaml.safe_load((K8S / "values-prefect-server.yaml").read_text())
    worker = yaml.safe_load((K8S / "values-prefect-worker.yaml").read_text())
    prefect = _locked("prefect")
    assert server["global"]["prefect"]["image"]["prefectTag"] == f"{prefect}-python3.11"
    assert worker["worker"]["image"]["prefectTag"] == f"{prefect}-python3.11-kubernetes"
    assert server["service"]["port"] == 4200 and server["postgresql"]["enabled"] is True
    assert "password" not in server["postgresql"]["auth"]  # given at install time, never stored
    config = worker["worker"]["config"]
    assert config["workPool"] == params.orchestrate.work_pool and config["type"] == "kubernetes"
    assert config["jobNamespace"] == NAMESPACE
    api = worker["worker"]["selfHostedServerApiConfig"]["apiUrl"]
    assert worker["worker"]["apiConfig"] == "selfHostedServer"
    assert api == f"http://{server['fullnameOverride']}.{NAMESPACE}.svc.cluster.local:4200/api"


# ---------------------------------------------------------------- compose

ENV_EXAMPLE = COMPOSE / ".env.example"
COMPOSE_FILES = {"cpu": ["compose.yaml"], "gpu": ["compose.yaml", "compose.gpu.yaml"]}
# what compose refuses to start without (`${NAME:?...}`), all of it for the operator to write into .env
REQUIRED = set(re.findall(r"\$\{(\w+):\?", (COMPOSE / "compose.yaml").read_text()))
PIPELINE_USER = "tlops-pipeline"
# minio-init's buckets: data source, DVC remote, model registry, reports, and the images `tlops serve` samples
# (serve.sample_store: the server's project volume is read-only, so its samples go to S3)
BUCKETS = {"tlops-data", "tlops-dvc", "tlops-registry", "tlops-reports", "tlops-samples"}


def _example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                if line and not line.startswith("#"))


def _operator_env(path: Path, **over: str) -> Path:
    """.env.example with the secrets filled in as an operator does (`cp .env.example .env`, then edit)."""
    values = {k: v or (f"tlops:{secrets.token_hex(12)}" if k.endswith("_AUTH") else secrets.token_hex(12))
              if k in REQUIRED else v for k, v in _example().items()}
    path.write_text("".join(f"{k}={v}\n" for k, v in {**values, **over}.items()))
    return path


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _compose(env_file: Path, names: list[str], *args: str, home: Path) -> subprocess.CompletedProcess:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed "
                    "(.ci/run installs Debian's docker-compose)")
    command = [*cli, "--env-file", str(env_file)]
    for name in names:
        command += ["-f", str(COMPOSE / name)]
    # a clean environment: only the env file decides the values (no AWS_* etc. from the caller)
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict[str, dict]:
    """`compose config` of the stack, plain and with the GPU override, with .env.example's values and the
    secrets an operator writes."""
    home = tmp_path_factory.mktemp("compose-home")
    env_file = _operator_env(home / ".env")
    check = _compose(env_file, COMPOSE_FILES["cpu"], "config", "-q", home=home)
    assert check.returncode == 0, check.stderr
    out = {}
    for variant, names in COMPOSE_FILES.items():
        done = _compose(env_file, names, "config", home=home)
        assert done.returncode == 0, done.stderr
        out[variant] = yaml.safe_load(done.stdout)["services"]
    return out


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _published(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        ports.add(int(port["published"]) if isinstance(port, dict) else int(str(port).split(":")[-2]))
    return ports


def _mounts(service: dict) -> dict[str, str]:
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume["source"] + (":ro" if volume.get("read_only") else "")
        else:
            source, target, *mode = str(volume).split(":")
            out[target] = source + (":ro" if mode and mode[0] == "ro" else "")
    return out


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_compose_stack_agrees_with_the_project(resolved, params):
    services = resolved["cpu"]
    orchestrate = params.orchestrate
    assert set(services) == {"postgres", "prefect-server", "minio", "minio-init", "worker", "evidently-ui", "reports",
                             "serve"}
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{_locked('prefect')}-python3.11"
    assert services["postgres"]["image"] == "postgres:16"
    url = _env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.fullmatch(r"postgresql\+asyncpg://prefect:[^@]+@postgres:5432/prefect", url), url
    assert _published(services["prefect-server"]) == {4200}
    assert _published(services["minio"]) == {9000, 9001}
    assert _published(services["evidently-ui"]) == {params.drift.ui_port}
    assert _published(services["reports"]) == {8080}
    worker, evidently = services["worker"], services["evidently-ui"]
    assert worker["image"] == evidently["image"] == orchestrate.worker_image
    assert worker["build"]["dockerfile"] == "infra/docker/Dockerfile"
    assert Path(worker["build"]["context"]).resolve() == ROOT
    assert _command(worker) == ["prefect", "worker", "start", "--pool", orchestrate.work_pool, "--type", "process"]
    env = _env(worker)
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", WEBHOOK_ENV, FAILURE_WEBHOOK_ENV, APPRISE_ENV} <= set(env)
    assert env[URL_ENV] == "http://localhost:8080"
    # the worker is the least-privileged pipeline user that minio-init creates, never MinIO's root
    minio = _env(services["minio"])
    assert env["AWS_ACCESS_KEY_ID"] == PIPELINE_USER != minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] != minio["MINIO_ROOT_PASSWORD"]
    assert env["AWS_SECRET_ACCESS_KEY"] == _env(services["minio-init"])["TLOPS_PIPELINE_S3_SECRET"]
    # closed by default: the server demands the auth string that the worker sends
    auth = _env(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    assert ":" in auth and env["PREFECT_API_AUTH_STRING"] == auth
    assert _command(evidently) == _evidently_command(params)
    assert _mounts(worker)["/project"] == _mounts(evidently)["/project"] == "project"
    assert _mounts(services["reports"])["/project"] == "project:ro"
    root = re.search(r"^\s*root\s+(\S+);", (COMPOSE / "nginx.conf").read_text(), re.M).group(1)
    assert root == f"/project/{orchestrate.runs_dir}"
    assert "autoindex off;" in (COMPOSE / "nginx.conf").read_text()  # tests/test_flows_access.py runs it
    buckets = set(re.findall(r"tlops/(tlops-[a-z]+)", " ".join(_command(services["minio-init"]))))
    assert buckets == BUCKETS
    assert env["TLOPS_DVC_REMOTE"].startswith("s3://tlops-dvc/")


def _depends_on(service: dict) -> dict[str, str]:
    """{service: condition} of a resolved service's depends_on (a list in the short form: started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def test_compose_serve_service(resolved, params):
    """The serve service: `tlops serve` from the tlops image on the project volume (read-only), the S3 identity of
    the worker, the auth variable the server reads, its port, a healthcheck on /ready, after the worker."""
    services = resolved["cpu"]
    serve, worker = services["serve"], services["worker"]
    port = params.serve.port
    assert serve["image"] == worker["image"] == params.orchestrate.worker_image
    assert serve["build"] == worker["build"]
    assert "entrypoint" not in serve  # the image's: tini, then tlops-entrypoint (cd /project)
    assert _command(serve) == _serve_command(params)
    assert _published(serve) == {port}
    assert [int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
            for p in serve["ports"]] == [port]
    assert _mounts(serve) == {"/project": "project:ro"} and _mounts(worker)["/project"] == "project"
    env = _env(serve)
    auth = env[_serve_auth_env(params)]
    assert re.fullmatch(r"[^:\s]+:\S+", auth), "user:password from .env"
    assert auth != _env(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    s3 = {k: v for k, v in _env(worker).items() if k.startswith("AWS_")}
    assert {k: v for k, v in env.items() if k.startswith("AWS_")} == s3 and s3["AWS_ACCESS_KEY_ID"] == PIPELINE_USER
    assert _depends_on(serve) == {"worker": "service_started"}  # the worker's entrypoint seeds the volume
    test = serve["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and f"'http://localhost:{port}/ready'" in test[3]
    raw = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]["serve"]
    assert raw["environment"][_serve_auth_env(params)].startswith(f"${{{_serve_auth_env(params)}:?set ")


def test_compose_serve_healthcheck_follows_ready(resolved, params):
    """The serve healthcheck's own command, run against a stand-in server: healthy on 200 from /ready, unhealthy
    on 503 (no model yet) and when nothing listens."""
    import http.server
    import threading

    code = resolved["cpu"]["serve"]["healthcheck"]["test"][3]
    answers = {"/ready": 200}

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(answers.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = code.replace(f"localhost:{params.serve.port}", f"127.0.0.1:{server.server_port}")
    assert local != code

    def check() -> int:
        return subprocess.run(["python3", "-c", local], capture_output=True, timeout=30).returncode

    try:
        assert check() == 0
        answers["/ready"] = 503
        assert check() != 0
    finally:
        server.shutdown()
        server.server_close()
    assert check() != 0


def test_compose_gpu_override(resolved):
    worker = resolved["gpu"]["worker"]
    assert worker["build"]["dockerfile"] == "infra/docker/Dockerfile.cuda"
    assert _env(worker)[NPROC_ENV] == "auto"  # one process per GPU (pipeline/training/ddp.py)
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_compose_holds_no_secrets(tmp_path):
    raw = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ROOT_USER|AUTH", key):
                assert str(value).startswith("${"), f"{name}.{key} is not from the env file"
            elif key == "AWS_ACCESS_KEY_ID":  # a user name, not a secret: the pipeline's own user
                assert value == PIPELINE_USER, f"{name}.{key} = {value!r}"
    url = raw["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert ":${POSTGRES_PASSWORD}@" in url
    ignored = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE / ".env")], cwd=ROOT)
    assert ignored.returncode == 0, "infra/compose/.env (the real secrets) must be ignored by git"
    example, required = _example(), REQUIRED
    assert required <= set(example)
    secret = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "TLOPS_PIPELINE_S3_SECRET", "TLOPS_REPORTS_S3_SECRET",
              "POSTGRES_PASSWORD", "TLOPS_PREFECT_AUTH", "TLOPS_SERVE_AUTH"}
    assert secret <= required
    # no default password to forget changing: the example leaves each secret empty, which compose refuses
    assert {k: example[k] for k in secret if example[k]} == {}
    empty = _compose(ENV_EXAMPLE, COMPOSE_FILES["cpu"], "config", "-q", home=tmp_path)
    assert empty.returncode != 0 and any(name in empty.stdout + empty.stderr for name in secret)
    # without them in the env file, compose stops and names what is missing
    (tmp_path / "env").write_text("".join(f"{k}={v}\n" for k, v in example.items() if k not in required))
    result = _compose(tmp_path / "env", COMPOSE_FILES["cpu"], "config", "-q", home=tmp_path)
    assert result.returncode != 0 and any(name in result.stdout + result.stderr for name in required)


def _bindings(service: dict) -> list[tuple[str, int]]:
    """(host address, published port) of each port a resolved service publishes ("" when on every address)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # docker compose v2's long form
            out.append((port.get("host_ip", ""), int(port["published"])))
        else:  # docker-compose 1.29: "IP:PUBLISHED:TARGET/proto" or "PUBLISHED:TARGET/proto"
            *ip, published, _ = str(port).split(":")
            out.append((ip[0] if ip else "", int(published)))
    return out


def test_compose_publishes_on_loopback_unless_the_operator_opts_out(resolved, tmp_path):
    raw = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("${TLOPS_BIND:-127.0.0.1}:"), f"{name} publishes {port!r} on every address"
    bound = {name: _bindings(service) for name, service in resolved["cpu"].items() if service.get("ports")}
    assert set(bound) == {"prefect-server", "minio", "evidently-ui", "reports", "serve"}
    assert {ip for ports in bound.values() for ip, _ in ports} == {"127.0.0.1"}
    assert {ip for s in resolved["gpu"].values() for ip, _ in _bindings(s)} == {"127.0.0.1"}
    opened = _compose(_operator_env(tmp_path / "env", TLOPS_BIND="0.0.0.0"), COMPOSE_FILES["cpu"], "config",
                      home=tmp_path)
    assert opened.returncode == 0, opened.stderr
    services = yaml.safe_load(opened.stdout)["services"]
    assert {ip for s in services.values() for ip, _ in _bindings(s)} == {"0.0.0.0"}


def test_no_default_minio_credentials_anywhere():
    texts = {p: p.read_text(errors="replace") for p in [*INFRA.rglob("*"), ROOT / "docs" / "infra.md"] if p.is_file()}
    assert [str(p) for p, text in texts.items() if "minioadmin" in text.lower()] == []


def test_minio_users_and_policies(resolved):
    init = resolved["cpu"]["minio-init"]
    script = " ".join(_command(init))
    env = _env(init)
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(env)  # only the one-shot init holds root
    assert not any(k.startswith("MINIO_ROOT") or v == env["MINIO_ROOT_PASSWORD"]
                   for name, service in resolved["cpu"].items() if name not in ("minio", "minio-init")
                   for k, v in _env(service).items())
    assert _mounts(init)["/policies"] == str(COMPOSE / "minio") + ":ro"
    for user, policy in ((PIPELINE_USER, "pipeline-policy.json"), ("tlops-reports", "reports-policy.json")):
        assert f"mc admin user add tlops {user} " in script
        assert f"/policies/{policy}" in script
    buckets = BUCKETS
    pipeline = json.loads((COMPOSE / "minio" / "pipeline-policy.json").read_text())["Statement"]
    resources = {r for statement in pipeline for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{b}" for b in buckets} | {f"arn:aws:s3:::{b}/*" for b in buckets}
    assert all(statement["Effect"] == "Allow" and not any("*" in a or a.startswith("s3:PutBucket") or
                                                          a.startswith("s3:DeleteBucket") for a in statement["Action"])
               for statement in pipeline)  # objects only: no wildcard action, no bucket administration
    writes = {r for st in pipeline if "s3:PutObject" in st["Action"] for r in st["Resource"]}
    assert "arn:aws:s3:::tlops-data/*" not in writes  # the images are read, never written
    assert "arn:aws:s3:::tlops-samples/*" in writes  # where the server keeps its sampled images
    [reports] = json.loads((COMPOSE / "minio" / "reports-policy.json").read_text())["Statement"]
    assert reports == {"Sid": reports["Sid"], "Effect": "Allow", "Action": ["s3:GetObject"],
                       "Resource": ["arn:aws:s3:::tlops-reports/*"]}


# ---------------------------------------------------------------- worker image

def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_installs_the_lock_then_the_project(name, params):
    steps = _instructions(DOCKER / name)
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD", "LABEL", "EXPOSE"}
    assert {op for op, _ in steps} <= known
    froms = [arg for op, arg in steps if op == "FROM"]
    base = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in steps if op == "ARG" and "=" in a}
    image = re.sub(r"\$\{(\w+)\}", lambda m: base[m.group(1)], froms[0])
    if name.endswith("cuda"):
        assert image.startswith("nvidia/cuda:") and "-runtime-" in image, image
    else:
        assert image.startswith("python:3.11-slim"), image
    def index(op: str, needle: str) -> int:
        found = [i for i, (o, arg) in enumerate(steps) if o == op and needle in arg]
        assert found, f"{name}: no {op} with {needle!r}"
        return found[0]
    order = [index("COPY", "requirements.lock"), index("RUN", "pip install -r"), index("COPY", ". ."),
             index("RUN", "pip install --no-deps -e .")]
    assert order == sorted(order), "the lock first (its own cached layer), then the project"
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert re.search(r"apt-get install .*\bgit\b", runs)
    if name.endswith("cuda"):
        assert "python3.11 -m venv" in runs
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["tini", "--", "tlops-entrypoint"]
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd == ["prefect", "worker", "start", "--pool", params.orchestrate.work_pool, "--type", "process"]
    ignore = (DOCKER / f"{name}.dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "infra/compose/.env"} <= set(ignore)


def test_entrypoint_seeds_an_empty_project_volume(tmp_path):
    if not shutil.which("flock"):
        pytest.skip("flock (util-linux) is not installed")
    subprocess.run(["sh", "-n", str(DOCKER / "entrypoint.sh")], check=True)
    seed, project = tmp_path / "seed", tmp_path / "project"
    (project / "lost+found").mkdir(parents=True)  # what a freshly formatted volume holds
    (project / "lost+found" / "#12").write_text("")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    for rel in listed:  # the project as the image holds it (Dockerfile.dockerignore leaves out what git ignores)
        if (ROOT / rel).is_file():
            (seed / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, seed / rel)
    env = {"PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "TLOPS_PROJECT": str(project), "TLOPS_SEED": str(seed), "DVC_NO_ANALYTICS": "1",
           "TLOPS_DVC_REMOTE": "s3://tlops-dvc/store", "AWS_ENDPOINT_URL": "http://minio:9000",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    for _ in range(2):  # the second start finds the checkout and leaves it as it is
        out = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "pwd"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(project)

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=project, capture_output=True, text=True).stdout.strip()

    assert git("rev-list", "--count", "HEAD") == "1" and git("status", "--porcelain") == ""
    assert git("ls-files", "lost+found", ".tlops-init.lock") == ""
    assert (project / "dvc.yaml").is_file() and (project / ".dvc" / "config").is_file()
    local = (project / ".dvc" / "config.local").read_text()
    assert "remote = store" in local and "url = s3://tlops-dvc/store" in local
    assert "endpointurl = http://minio:9000" in local


@pytest.mark.timeout(3600)
def test_image_builds():
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon here (`docker info` fails): the image build is not tested")
    build = subprocess.run(["docker", "build", "-f", str(DOCKER / "Dockerfile"), "-t", "tlops-worker:test", str(ROOT)],
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(["docker", "run", "--rm", "tlops-worker:test", "tlops", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
