"""deploy/: Dockerfile, docker-compose and Kubernetes manifests, checked without a cluster.

No Docker engine or Kubernetes API runs here, so these tests pin what can be known
statically: every file parses, every command is one the real CLI accepts, names,
ports, topics, groups and env var names agree across files and with the code, and
the compose file validates against the Compose Specification schema (vendored by
check-jsonschema), Kubernetes objects against the API's JSON schemas (shipped by
kubernetes-validate), and KEDA objects against schemas written from KEDA's docs.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from functools import cache
from importlib import resources
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

from iterrefine.cli import build_parser
from iterrefine.config import Config, load_config
from iterrefine.consumers import PIPELINE, build_stages
from iterrefine.graph.context import PipelineContext
from iterrefine.item.model import Provenance
from iterrefine.kafka.topics import TopicNames
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import StageRunner

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
STAGES = PIPELINE.names  # the deployment runs every stage of the graph
METRICS_PORT = 9100
#: The oldest Kubernetes the manifests claim to support, and the newest schemas shipped.
K8S_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
#: Each stage runs as a StatefulSet (stable pod names for static group membership) with
#: the headless Service its serviceName names.
CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Service",
              "PodDisruptionBudget"}
#: A group.instance.id as Kafka accepts it (the legal characters and length of a topic name).
KAFKA_INSTANCE_ID = re.compile(r"[a-zA-Z0-9._-]{1,249}")


# ---------------------------------------------------------------- loading helpers


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _compose()["services"]
    return services


def _compose_default(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _parse_cli(argv: list[str]) -> argparse.Namespace:
    """The real parser; an unknown flag or bad value fails the test instead of exiting."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"the iterrefine CLI rejects {argv}") from None


def _compose_config_path(service: dict[str, Any]) -> Path:
    for volume in service["volumes"]:
        source, target, *_ = _compose_default(volume).split(":")
        if target == "/etc/iterrefine/iterrefine.toml":
            return DEPLOY / source
    raise AssertionError("no config mount at /etc/iterrefine/iterrefine.toml")


@cache
def _compose_config() -> Config:
    return load_config(_compose_config_path(_services()["score"]))


@cache
def _k8s_objects() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """(file, object) for every manifest in deploy/k8s except kustomization.yaml."""
    return tuple((path, doc) for path in sorted(K8S.glob("*.yaml"))
                 if path.name != "kustomization.yaml" for doc in _yaml_docs(path))


def _k8s_with_file(kind: str, name: str) -> tuple[Path, dict[str, Any]]:
    for path, obj in _k8s_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return path, obj
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def _k8s(kind: str, name: str) -> dict[str, Any]:
    return _k8s_with_file(kind, name)[1]


def _workload(stage: str) -> dict[str, Any]:
    """The stage's worker StatefulSet."""
    return _k8s("StatefulSet", f"iterrefine-{stage}")


def _kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """``$(VAR)`` in a container's args as the kubelet expands it: defined names only, ``$$``
    escapes a ``$``, anything else stays as written."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, arg)


@cache
def _k8s_config() -> Config:
    data = _k8s("ConfigMap", "iterrefine-config")["data"]["iterrefine.toml"]
    return load_config(None, tomllib.loads(data))


def _secret_keys() -> set[str]:
    return set(_k8s("Secret", "iterrefine-secrets")["stringData"])


def _container(stage: str) -> dict[str, Any]:
    containers = _workload(stage)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _llm_timeouts(config: Config) -> list[float]:
    return [role.timeout_s for role in config.llm.values()]


def _stage_wiring(config: Config) -> dict[str, tuple[str, str]]:
    """stage -> (consumer group, full input topic), as the runtime computes them."""
    metrics = Metrics()
    ctx = PipelineContext(config.pipeline, None,  # type: ignore[arg-type]  # never called
                          metrics, Provenance(prompt_version="-", models={}, simulated=False))
    names = TopicNames(config.kafka.topic_prefix)
    wiring = {}
    for stage in build_stages(ctx):
        runner = StageRunner(stage, config=config, bootstrap_servers="unused:9092",
                             metrics=metrics)
        wiring[stage.name] = (runner.group_id, names[stage.input_topic])
    return wiring


# ---------------------------------------------------------------- Dockerfile


@cache
def _dockerfile() -> tuple[dockerfile.Command, ...]:
    """The Dockerfile as BuildKit's own parser reads it."""
    commands: tuple[dockerfile.Command, ...] = dockerfile.parse_file(str(DOCKERFILE))
    return commands


def _final_stage() -> list[dockerfile.Command]:
    commands = list(_dockerfile())
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def _dockerfile_uid() -> int:
    (user,) = [c.value[0] for c in _final_stage() if c.cmd == "USER"]
    return int(user.split(":")[0])


@pytest.mark.unit
def test_dockerfile_is_multistage_slim_and_runs_iterrefine_as_non_root() -> None:
    """Wheels are built in one slim stage; the other runs `iterrefine` as a numeric non-root uid."""
    args = dict(c.value[0].split("=", 1) for c in _dockerfile()
                if c.cmd == "ARG" and "=" in c.value[0])  # not a stage's re-declaration
    images = [c.value[0].replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"])
              for c in _dockerfile() if c.cmd == "FROM"]
    assert images == ["python:3.11-slim", "python:3.11-slim"]
    final = {c.cmd: c for c in _final_stage()}
    assert final["ENTRYPOINT"].json and final["ENTRYPOINT"].value == ("iterrefine",)
    assert final["EXPOSE"].value == (str(METRICS_PORT),)
    assert _dockerfile_uid() >= 1000
    healthcheck = final["HEALTHCHECK"]
    assert healthcheck.json and healthcheck.value[0] == "CMD"
    assert f"127.0.0.1:{METRICS_PORT}/healthz" in healthcheck.value[-1]


@pytest.mark.unit
def test_dockerfile_copies_only_what_the_dockerignore_lets_through() -> None:
    """Every COPY source exists and is allow-listed by deploy/Dockerfile.dockerignore."""
    allowed = {line.strip("!/") for line in
               (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = [src for c in _dockerfile() if c.cmd == "COPY" for src in c.value[:-1]]
    assert sources, "the build stage copies the project"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, source
    # pyproject's readme must be in the context or the wheel build fails.
    assert "README.md" in sources and "pyproject.toml" in sources


# ---------------------------------------------------------------- docker-compose


@pytest.mark.unit
def test_every_deploy_yaml_parses() -> None:
    """Every YAML file under deploy/ parses, multi-document files included."""
    paths = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert COMPOSE_FILE in paths and len(paths) >= 10
    for path in paths:
        assert _yaml_docs(path), f"{path} is empty"


@pytest.mark.unit
def test_compose_file_validates_against_the_compose_spec() -> None:
    """docker-compose.yml fits the Compose Specification schema (vendored by check-jsonschema)."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'.'.join(map(str, error.path))}: {error.message}"
              for error in validator.iter_errors(_compose())]
    assert not errors, errors


@pytest.mark.unit
def test_compose_has_broker_workers_observability_and_profiles() -> None:
    """Compose runs KRaft Kafka, one worker per stage, Prometheus, Grafana, and opt-in extras."""
    services = _services()
    assert set(STAGES) <= set(services)
    assert {"kafka", "kafka-topics", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    profiles = {name: s.get("profiles", []) for name, s in services.items()}
    assert profiles["vllm-strong"] == profiles["vllm-backbone"] == ["vllm"]
    assert profiles["sim-llm"] == ["sim"]
    assert profiles["ingest"] == profiles["cli"] == ["tools"]
    assert not any(profiles[s] for s in (*STAGES, "kafka", "prometheus", "grafana"))


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_compose_worker_command_is_a_real_cli_command(stage: str) -> None:
    """Each stage service runs `iterrefine worker STAGE` with flags the real parser accepts,
    as a static group member of its own (a restart keeps its partitions)."""
    service = _services()[stage]
    assert service["command"] == [
        "worker", stage, "--bootstrap", "kafka:9092", "--group-instance-id", f"{stage}-0",
        "--metrics-port", str(METRICS_PORT), "--metrics-host", "0.0.0.0",
        "--config", "/etc/iterrefine/iterrefine.toml",
    ]
    args = _parse_cli(service["command"])
    assert args.group_instance_id == f"{stage}-0"
    config = load_config(ROOT / "deploy" / "config" / "iterrefine.toml")
    # A restart (image start + imports) must fit in the session, or the id buys nothing.
    assert config.runtime.session_timeout_ms >= 30_000
    assert args.command == "worker" and args.stages == [stage]
    assert args.metrics_port == METRICS_PORT
    assert args.metrics_host == "0.0.0.0"  # the default is loopback, unreachable in a container
    assert args.bootstrap in _services()["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert args.config in [_compose_default(v).split(":")[1] for v in service["volumes"]]


@pytest.mark.unit
def test_every_compose_command_of_the_image_parses() -> None:
    """ingest and sim-llm commands parse with the real CLI; the cli service only prints help."""
    image = _services()["score"]["image"]
    runs_image = {n: s for n, s in _services().items() if s.get("image") == image}
    assert set(runs_image) == {*STAGES, "ingest", "cli", "sim-llm"}
    for name, service in runs_image.items():
        if name == "cli":
            assert service["command"] == ["--help"]
            continue
        _parse_cli(service["command"])
    ingest = _parse_cli(_services()["ingest"]["command"])
    source = PurePosixPath(ingest.source)
    mounts = {}  # container path -> host path
    for volume in _services()["ingest"]["volumes"]:
        host, container, *_ = _compose_default(volume).split(":")
        mounts[container] = host
    assert (DEPLOY / mounts[str(source.parent)] / source.name).is_file()


@pytest.mark.unit
def test_compose_image_tags_follow_the_project_version() -> None:
    """Compose and Kubernetes run the image tagged with the installed project's version."""
    tag = version("iterrefine")
    assert _compose_default(_services()["score"]["image"]) == f"iterrefine:{tag}"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "iterrefine", "newTag": tag}]
    for stage in STAGES:
        assert _container(stage)["image"] == f"iterrefine:{tag}"


def _stop_budget_s(config: Config) -> float:
    """What a SIGTERMed worker may take: the drain, then (a commit refused because the group
    moved on) up to max(10 s, 2 session timeouts) to rejoin and commit again, then 20 s."""
    rejoin_s = max(10.0, 2 * config.runtime.session_timeout_ms / 1000)
    return config.runtime.drain_timeout_s + rejoin_s + 20


@pytest.mark.unit
def test_compose_configs_load_and_grace_outlasts_the_drain() -> None:
    """The mounted configs load; SIGTERM grace > drain deadline ≥ the longest LLM timeout,
    plus the wait to rejoin and commit again when the group refused a commit."""
    config = _compose_config()
    assert config.kafka.bootstrap_servers == "kafka:9092"
    sim = load_config(DEPLOY / "config" / "iterrefine.sim.toml")
    for cfg in (config, sim):
        assert cfg.runtime.drain_timeout_s >= max(_llm_timeouts(cfg))
    for stage in STAGES:
        grace = _services()[stage]["stop_grace_period"]
        assert grace.endswith("s")
        assert int(grace[:-1]) >= _stop_budget_s(config)
        assert _services()[stage].get("stop_signal", "SIGTERM") == "SIGTERM"


@pytest.mark.unit
def test_compose_topic_init_creates_exactly_the_pipeline_topics() -> None:
    """The kafka-topics one-shot creates the graph's topics with the configured partitions."""
    config = _compose_config()
    script = _services()["kafka-topics"]["command"][0]
    loop = re.search(r"for topic in ([^;]+);", script)
    assert loop is not None
    assert loop.group(1).split() == TopicNames(config.kafka.topic_prefix).full(PIPELINE.topics())
    assert f"--partitions {config.kafka.partitions}" in script
    assert f"--replication-factor {config.kafka.replication_factor}" in script
    assert "--if-not-exists" in script
    for stage in STAGES:
        depends = _services()[stage]["depends_on"]
        assert depends["kafka-topics"]["condition"] == "service_completed_successfully"
        assert depends["kafka"]["condition"] == "service_healthy"


@pytest.mark.unit
def test_compose_workers_wait_for_the_llm_servers_of_the_active_profile() -> None:
    """Workers wait for healthy vllm/sim servers, and skip them when their profile is off."""
    for stage in STAGES:
        depends = _services()[stage]["depends_on"]
        for server in ("vllm-strong", "vllm-backbone", "sim-llm"):
            assert depends[server] == {"condition": "service_healthy", "required": False}
            assert _services()[server]["profiles"] and _services()[server]["healthcheck"]


@pytest.mark.unit
def test_compose_interpolates_only_defaulted_variables() -> None:
    """Outside comments, every `$` is `$$` (for the container) or a `${VAR:-default}`."""
    for line in COMPOSE_FILE.read_text().splitlines():
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        bare = re.sub(r"\$\$|\$\{[A-Z_]+:-[^}]+\}", "", code)
        assert "$" not in bare, line


def test_compose_llm_endpoints_match_the_vllm_profile() -> None:
    """The compose config's LLM roles point at the vllm services, which serve those models."""
    config = _compose_config()
    for role in ("strong", "backbone"):
        entry = config.llm[role]
        url = urlsplit(entry.base_url)
        service = _services()[url.hostname or ""]
        command = service["command"]
        assert command[0] == entry.model
        assert f"--port={url.port}" in command
        assert "vllm serve" in service["entrypoint"][2]
    gpus = [set(d["device_ids"])
            for name in ("vllm-strong", "vllm-backbone")
            for d in _services()[name]["deploy"]["resources"]["reservations"]["devices"]]
    assert all(gpus) and not gpus[0] & gpus[1], "the two servers must not share a GPU"
    strong_tp = next(a for a in _services()["vllm-strong"]["command"] if "tensor-parallel" in a)
    assert int(strong_tp.split("=")[1]) == len(gpus[0])


@pytest.mark.unit
def test_compose_secrets_come_from_ignored_files_never_inline() -> None:
    """API keys reach containers via git-ignored env files with templates, never inline values."""
    config = _compose_config()
    key_names = {r.api_key_env for r in config.llm.values() if r.api_key_env}
    assert key_names == {"LLM_API_KEY"}
    secrets_dir = DEPLOY / "secrets"
    ignore = (secrets_dir / ".gitignore").read_text().split()
    assert ignore[ignore.index("*"):] == ["*", "!.gitignore", "!*.example"]
    for name in STAGES:
        files = [Path(e["path"]).name for e in _services()[name]["env_file"]]
        assert files == ["llm.env"]
        template = (secrets_dir / "llm.env.example").read_text()
        defined = {line.split("=")[0] for line in template.splitlines()
                   if "=" in line and not line.startswith("#")}
        assert key_names <= defined
    for file_secret in _compose()["secrets"].values():
        example = DEPLOY / (file_secret["file"] + ".example")
        assert example.is_file(), example
    secret_like = re.compile(r"KEY|PASSWORD|TOKEN|SECRET", re.IGNORECASE)
    for name, service in _services().items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if secret_like.search(key):
                assert key.endswith("__FILE") or value in (None, "admin"), (name, key)


@pytest.mark.unit
def test_compose_observability_mounts_match_prometheus_and_grafana_layout() -> None:
    """Prometheus scrapes each worker's metrics port; Grafana mounts provisioning and dashboards."""
    prom_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom_config["scrape_configs"] if j["job_name"] == "iterrefine")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{stage}:{METRICS_PORT}" for stage in STAGES}
    assert "./prometheus:/etc/prometheus:ro" in _services()["prometheus"]["volumes"]
    grafana = {v.split(":")[1]: v.split(":")[0] for v in _services()["grafana"]["volumes"]}
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "iterrefine.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert urlsplit(datasource["datasources"][0]["url"]).hostname == "prometheus"
    for source in grafana.values():
        if source.startswith("./"):
            assert (DEPLOY / source).is_dir(), source


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.unit
def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    """kustomization.yaml applies every manifest once, never the placeholder Secret."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk - {"secret.example.yaml"}
    assert len(kustomization["resources"]) == len(set(kustomization["resources"]))
    namespace = kustomization["namespace"]
    assert _k8s("Namespace", namespace)
    for _, obj in _k8s_objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace


@pytest.mark.unit
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(k8s_version: str) -> None:
    """Namespace, ConfigMap, Secret, StatefulSets, Services and PDBs pass strict validation."""
    seen = set()
    for path, obj in _k8s_objects():
        if obj["kind"] in CORE_KINDS:
            try:
                kubernetes_validate.validate(obj, k8s_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                raise AssertionError(f"{path.name} {obj['kind']}: {where}: {exc.message}") from None
            seen.add(obj["kind"])
    assert seen == CORE_KINDS


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": _STRING_MAP, "annotations": _STRING_MAP},
}
#: Written from keda.sh/docs (ScaledObject spec and the Apache Kafka scaler), v2.13+.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                   "apiVersion": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "kafka"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {
                                "type": "object", "required": ["name"],
                                "properties": {"name": {"type": "string"},
                                               "kind": {"enum": ["TriggerAuthentication",
                                                                 "ClusterTriggerAuthentication"]}},
                            },
                            "metadata": {
                                "type": "object",
                                "required": ["bootstrapServers", "consumerGroup", "topic",
                                             "lagThreshold"],
                                "additionalProperties": False,
                                # Every value is a string in KEDA's trigger metadata.
                                "properties": {key: {"type": "string"} for key in (
                                    "bootstrapServers", "consumerGroup", "topic",
                                    "lagThreshold", "activationLagThreshold",
                                    "offsetResetPolicy", "allowIdleConsumers",
                                    "scaleToZeroOnInvalidOffset", "excludePersistentLag",
                                    "limitToPartitionsWithLag", "version",
                                    "partitionLimitation", "sasl", "tls", "unsafeSsl")},
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object", "required": ["secretTargetRef"], "additionalProperties": False,
            "properties": {"secretTargetRef": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["parameter", "name", "key"],
                "additionalProperties": False,
                "properties": {"parameter": {"enum": ["username", "password", "ca", "cert",
                                                      "key", "keyPassword", "sasl", "tls"]},
                               "name": {"type": "string"}, "key": {"type": "string"}},
            }}},
        },
    },
}


@pytest.mark.unit
def test_keda_objects_validate_against_schemas_from_the_keda_docs() -> None:
    """Every ScaledObject and TriggerAuthentication fits the schema written from KEDA's docs."""
    schemas = {"ScaledObject": SCALED_OBJECT_SCHEMA,
               "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA}
    counts = dict.fromkeys(schemas, 0)
    for path, obj in _k8s_objects():
        if obj["kind"] in schemas:
            try:
                jsonschema.Draft202012Validator(schemas[obj["kind"]]).validate(obj)
            except jsonschema.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                raise AssertionError(f"{path.name}: {where}: {exc.message}") from None
            counts[obj["kind"]] += 1
    assert counts == {"ScaledObject": len(STAGES), "TriggerAuthentication": 1}
    known = CORE_KINDS | set(schemas)
    assert {obj["kind"] for _, obj in _k8s_objects()} == known


@pytest.mark.unit
def test_k8s_config_loads_and_grace_outlasts_the_drain() -> None:
    """The ConfigMap's TOML loads; terminationGracePeriodSeconds > drain ≥ longest LLM
    timeout, plus the rejoin-and-commit wait (static members' long session timeout)."""
    config = _k8s_config()
    assert config.runtime.drain_timeout_s >= max(_llm_timeouts(config))
    for stage in STAGES:
        pod = _workload(stage)["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= _stop_budget_s(config)


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_k8s_statefulset_runs_the_stage_worker_with_probes_on_the_metrics_port(stage: str) -> None:
    """Args parse with the real CLI; probes, port, annotations and config mount agree."""
    workload = _workload(stage)
    pod = workload["spec"]["template"]
    container = _container(stage)
    assert "command" not in container  # keep the image's ENTRYPOINT ["iterrefine"]
    args = _parse_cli(container["args"])
    assert args.command == "worker" and args.stages == [stage]
    assert args.metrics_port == METRICS_PORT
    assert args.metrics_host == "0.0.0.0"  # the default is loopback, unreachable in a pod
    assert container["ports"] == [
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    selector = workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/component"] == stage
    config_path = PurePosixPath(args.config)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = _k8s("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in configmap["data"]


@pytest.mark.unit
def test_k8s_workers_are_static_members_named_by_their_pod() -> None:
    """Every worker is a StatefulSet whose pods join their group as static members under their
    own pod name (downward API metadata.name, expanded into --group-instance-id): the same
    after a restart, unique per ordinal, so a restarted pod gets its partitions back. Its
    headless Service is applied with it, KEDA scales the StatefulSet, and the session
    timeout outlasts a pod restart."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    workers = {obj["metadata"]["name"] for _, obj in _k8s_objects() if obj["kind"] == "StatefulSet"}
    assert workers == {f"iterrefine-{stage}" for stage in STAGES}
    assert not [obj for _, obj in _k8s_objects() if obj["kind"] == "Deployment"]
    config = _k8s_config()
    # A restart (recreate, image start, imports, join) must fit in the session, or the
    # instance id buys nothing; heartbeats at most a third of it, as Kafka advises.
    assert config.runtime.session_timeout_ms >= 30_000
    assert 3 * config.runtime.heartbeat_interval_ms <= config.runtime.session_timeout_ms
    assert config.kafka.group_instance_id is None  # one ConfigMap for all pods: no shared id
    for stage in STAGES:
        name = f"iterrefine-{stage}"
        path, workload = _k8s_with_file("StatefulSet", name)
        spec = workload["spec"]
        assert path.name in kustomization["resources"], stage
        assert spec["podManagementPolicy"] == "Parallel", stage
        assert spec["updateStrategy"] == {"type": "RollingUpdate"}, stage  # no partition held back

        # The headless Service the StatefulSet names, applied by the kustomization.
        service_path, service = _k8s_with_file("Service", spec["serviceName"])
        assert service_path.name in kustomization["resources"], stage
        assert service["spec"]["clusterIP"] == "None", stage
        assert service["spec"]["selector"] == spec["selector"]["matchLabels"], stage

        # KEDA scales this StatefulSet (it assumes a Deployment when kind is left out).
        scaled = _k8s("ScaledObject", name)["spec"]
        assert scaled["scaleTargetRef"] == {"apiVersion": workload["apiVersion"],
                                            "kind": "StatefulSet", "name": name}, stage

        # Each pod's --group-instance-id is its own name, from the downward API.
        container = _container(stage)
        fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]
                  if "fieldRef" in e.get("valueFrom", {})}
        assert "metadata.name" in fields.values(), stage
        ids = set()
        for ordinal in range(scaled["maxReplicaCount"]):
            pod_name = f"{name}-{ordinal}"  # how a StatefulSet names its pods
            env = {var: pod_name if field == "metadata.name" else f"<{field}>"
                   for var, field in fields.items()}
            args = _parse_cli([_kubelet_expand(arg, env) for arg in container["args"]])
            assert args.group_instance_id == pod_name, (stage, container["args"])
            assert KAFKA_INSTANCE_ID.fullmatch(args.group_instance_id), args.group_instance_id
            ids.add(args.group_instance_id)
        assert len(ids) == scaled["maxReplicaCount"], stage


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_k8s_pods_are_non_root_with_a_read_only_root(stage: str) -> None:
    """Pods run as the image's non-root uid, without privilege escalation or capabilities."""
    pod = _workload(stage)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = _container(stage)["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
    resources = _container(stage)["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]


@pytest.mark.parametrize("stage", STAGES)
def test_k8s_env_provides_every_secret_the_config_names(stage: str) -> None:
    """Each env var named in the config (api_key_env, sasl_password_env) comes from the Secret."""
    config = _k8s_config()
    needed = {r.api_key_env for r in config.llm.values() if r.api_key_env}
    if config.kafka.sasl_password_env:
        needed.add(config.kafka.sasl_password_env)
    assert needed == {"LLM_API_KEY", "KAFKA_SASL_PASSWORD"}
    env = {e["name"]: e for e in _container(stage)["env"]}
    assert needed <= set(env)
    for name, entry in env.items():
        assert "value" not in entry, name  # no literal values: secrets or the pod's own fields
        if "fieldRef" in entry["valueFrom"]:
            assert name not in needed, name
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "iterrefine-secrets"
        assert ref["key"] in _secret_keys()


@pytest.mark.unit
def test_k8s_secret_template_holds_placeholders_only() -> None:
    """The committed Secret is a template with placeholder values; KEDA's refs resolve in it."""
    secret = _k8s("Secret", "iterrefine-secrets")
    assert "data" not in secret
    values = secret["stringData"]
    assert values["llm-api-key"] == values["kafka-sasl-password"] == "REPLACE_ME"
    assert values["kafka-sasl-username"] == _k8s_config().kafka.sasl_username
    auth = _k8s("TriggerAuthentication", "iterrefine-kafka")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in values
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"username", "password"}


@pytest.mark.parametrize("stage", STAGES)
def test_keda_scales_each_stage_on_its_own_consumer_group_lag(stage: str) -> None:
    """Group, topic, threshold, bootstrap and auth of each trigger match the code and config."""
    config = _k8s_config()
    group, topic = _stage_wiring(config)[stage]
    scaled = _k8s("ScaledObject", f"iterrefine-{stage}")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == f"iterrefine-{stage}"
    assert _k8s(spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= config.kafka.partitions
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert (meta["consumerGroup"], meta["topic"]) == (group, topic)
    assert meta["lagThreshold"] == str(config.runtime.max_in_flight)
    assert meta["bootstrapServers"] == config.kafka.bootstrap_servers
    assert meta["offsetResetPolicy"] == "earliest"  # as make_consumer's auto_offset_reset
    sasl = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256",
            "PLAIN": "plaintext", None: None}[config.kafka.sasl_mechanism]
    assert meta.get("sasl") == sasl
    assert (meta.get("tls") == "enable") == config.kafka.security_protocol.endswith("SSL")
    assert _k8s("TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_keda_wiring_is_the_documented_stage_topology() -> None:
    """The runtime's groups and input topics are the ones the manifests were written for."""
    assert _stage_wiring(_k8s_config()) == {
        "score": ("iterrefine.score", "iterrefine.items.raw"),
        "route": ("iterrefine.route", "iterrefine.items.scored"),
        "refine": ("iterrefine.refine", "iterrefine.items.refine"),
        "review": ("iterrefine.review", "iterrefine.items.review"),
        "align": ("iterrefine.align", "iterrefine.items.align"),
    }


@pytest.mark.unit
@pytest.mark.parametrize("stage", STAGES)
def test_pdb_covers_the_stage_pods(stage: str) -> None:
    """Each stage has a PodDisruptionBudget selecting exactly its StatefulSet's pods."""
    pdb = _k8s("PodDisruptionBudget", f"iterrefine-{stage}")
    assert pdb["spec"]["selector"] == _workload(stage)["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.unit
def test_readme_operations_section_names_only_existing_deploy_files() -> None:
    """Every deploy/ path the README's Operations section mentions exists (secrets aside)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Operations"):]
    paths = {p.rstrip(".,:)`") for p in re.findall(r"deploy/[\w./*-]+", section)}
    assert "deploy/docker-compose.yml" in paths and "deploy/k8s" in {p.rstrip("/") for p in paths}
    ignored = {"llm.env", "hf.env", "grafana_admin_password"}  # copied from *.example
    for path in paths:
        if "*" not in path and PurePosixPath(path).name not in ignored:
            assert (ROOT / path).exists(), path
