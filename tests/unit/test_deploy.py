"""The production deployment files, without a cluster or a database:

- deploy/dagster.yaml passes Dagster's own instance schema, and its queue limits the run tag that
  the training jobs carry;
- every job and sensor run that materializes a training asset carries that tag;
- every Kubernetes manifest the project ships (deploy/k8s/*.yaml) and the Job the K8sRunLauncher
  would create for a training run validate against the Kubernetes JSON schema (strict: unknown
  keys are errors), offline, with the schemas that `kubernetes-validate` ships;
- deploy/helm/values.yaml uses only keys the official chart documents (the chart itself cannot be
  fetched here; see docs/deploy.md) and agrees with deploy/dagster.yaml and the Dockerfile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from minillm_assets import jobs
from minillm_assets.jobs import DEVICE_POOL_NODE_LABEL, DEVICE_POOL_TAG
from tests.unit.test_k8s import _optional

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes still in common support; schemas are offline
TRAINING_ASSETS = {"pretrain_checkpoint", "sft_checkpoint", "dpo_checkpoint"}


# -- the instance -------------------------------------------------------------------------------
def test_instance_yaml_passes_dagsters_schema(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    db = config["storage"]["postgres"]["postgres_db"]
    # every connection setting comes from the environment, none is written in the file
    assert {
        k: v for k, v in db.items() if k in ("hostname", "port", "db_name", "username", "password")
    } == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "db_name": {"env": "DAGSTER_PG_DB"},
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
    }
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert {
        "key": DEVICE_POOL_TAG,
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert config["run_monitoring"]["enabled"]
    assert config["retention"]["schedule"]["purge_after_days"] > 0


def test_pg_settings_name_the_missing_variable(tmp_path, monkeypatch):
    from minillm_cli import prod
    from minillm_core.errors import ConfigError

    prod.prepare_home(tmp_path)
    for name, value in {**prod.PG_DEFAULTS, "DAGSTER_PG_PORT": "6543"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match=r"DAGSTER_PG_PASSWORD"):
        prod.pg_settings(tmp_path)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "x")
    assert prod.pg_settings(tmp_path)["port"] == "6543"


# -- run tags -----------------------------------------------------------------------------------
def _asset_names(job, repo) -> set[str]:
    return {k.to_user_string() for k in repo.get_job(job.name).asset_layer.executable_asset_keys}


def test_every_run_that_trains_carries_the_device_pool_tag():
    from minillm_assets.definitions import defs

    repo = defs.get_repository_def()
    training_jobs = [j for j in jobs.jobs if _asset_names(j, repo) & TRAINING_ASSETS]
    assert {j.name for j in training_jobs} >= {
        "retrain",
        "pretrain_stage",
        "sft_stage",
        "dpo_stage",
    }
    for job in training_jobs:
        assert repo.get_job(job.name).tags.get(DEVICE_POOL_TAG) == jobs.device_pool(), job.name
    assert DEVICE_POOL_TAG not in repo.get_job("data_and_tokenizer").tags
    # scheduled retraining runs the tagged job; the sensor's run requests carry the tags too
    assert repo.get_schedule_def("weekly_retrain").job_name == "retrain"
    src = (REPO / "minillm_assets" / "sensors.py").read_text()
    assert "**training_run_tags()" in src


def test_k8s_placement_tag_only_on_kubernetes(monkeypatch):
    monkeypatch.delenv("MINILLM_K8S_TRAIN_GPUS", raising=False)
    monkeypatch.setenv("MINILLM_DEVICE_POOL", "a100")
    assert jobs.training_run_tags() == {DEVICE_POOL_TAG: "a100"}
    monkeypatch.setenv("MINILLM_K8S_TRAIN_GPUS", "8")
    k8s = json.loads(jobs.training_run_tags()["dagster-k8s/config"])
    assert k8s["pod_spec_config"]["node_selector"] == {DEVICE_POOL_NODE_LABEL: "a100"}
    assert k8s["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "8"}


# -- Kubernetes manifests -----------------------------------------------------------------------
def _validate(doc: dict[str, Any], where: str) -> None:
    kv = _optional("kubernetes_validate")
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{where}: {doc.get('kind')}: {exc.message} at {list(exc.path)}")


NOT_MANIFESTS = {"run-config.yaml"}  # Dagster run config for the k8s launch, not a k8s object


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name not in NOT_MANIFESTS),
    ids=lambda p: p.name,
)
def test_shipped_manifests_match_the_kubernetes_schema(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        _validate(doc, path.name)


def _values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def test_training_run_job_lands_on_gpu_nodes(monkeypatch):
    """The Job the K8sRunLauncher creates for a training run, built by dagster-k8s itself from
    the chart's run settings and the run's tags: valid, on the pool's GPU nodes."""
    _optional("dagster_k8s")
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    values = _values()
    env = {
        e["name"]: e["value"] for e in values["dagster-user-deployments"]["deployments"][0]["env"]
    }
    for name in ("MINILLM_DEVICE_POOL", "MINILLM_K8S_TRAIN_GPUS"):
        monkeypatch.setenv(name, env[name])
    run_cfg = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    chart = UserDefinedDagsterK8sConfig.from_dict({"container_config": run_cfg["containerConfig"]})
    user = get_user_defined_k8s_config(jobs.training_run_tags())
    # as the launcher combines its own runK8sConfig with the run's tag
    merged = (
        K8sContainerContext(run_k8s_config=chart)
        .merge(K8sContainerContext(run_k8s_config=user))
        .run_k8s_config
    )
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/minillm:latest",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret=values["global"]["postgresqlSecretName"],
        service_account_name=values["global"]["serviceAccountName"],
    )
    manifest = construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_run", "{}"],
        "dagster-run-0123456789abcdef",
        user_defined_k8s_config=merged,
        component="run_worker",
        labels={DEVICE_POOL_NODE_LABEL: env["MINILLM_DEVICE_POOL"]},
    )
    doc = kubernetes_dict(manifest)
    _validate(doc, "K8sRunLauncher training Job")
    pod = doc["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {DEVICE_POOL_NODE_LABEL: env["MINILLM_DEVICE_POOL"]}
    assert (
        pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == env["MINILLM_K8S_TRAIN_GPUS"]
    )
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # the chart's CPU request for every run is kept beside the training run's GPU
    assert (
        pod["containers"][0]["resources"]["requests"]["cpu"]
        == run_cfg["containerConfig"]["resources"]["requests"]["cpu"]
    )


def kubernetes_dict(obj: Any) -> dict[str, Any]:
    """A kubernetes client model as the camelCase dict kubectl would send (None fields dropped)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


# -- Helm values --------------------------------------------------------------------------------
# Key paths of the official chart's values (chart `dagster` 1.13; `*` is a list item) that these
# values use. A key outside this list is a typo or a key the chart would ignore silently.
CHART_KEYS = {
    "global",
    "global.postgresqlSecretName",
    "global.serviceAccountName",
    "serviceAccount",
    "serviceAccount.create",
    "generatePostgresqlPasswordSecret",
    "postgresql",
    "postgresql.enabled",
    "postgresql.postgresqlHost",
    "postgresql.postgresqlUsername",
    "postgresql.postgresqlDatabase",
    "postgresql.postgresqlParams",
    "postgresql.postgresqlParams.connect_timeout",
    "postgresql.postgresqlScheme",
    "postgresql.service",
    "postgresql.service.port",
    "dagsterWebserver",
    "dagsterWebserver.replicaCount",
    "dagster-user-deployments",
    "dagster-user-deployments.enabled",
    "dagster-user-deployments.deployments",
    *(
        f"dagster-user-deployments.deployments.*.{k}"
        for k in (
            "name",
            "image",
            "image.repository",
            "image.tag",
            "image.pullPolicy",
            "dagsterApiGrpcArgs",
            "port",
            "includeConfigInLaunchedRuns",
            "includeConfigInLaunchedRuns.enabled",
            "env",
            "volumes",
            "volumeMounts",
            "resources",
        )
    ),
    "runLauncher",
    "runLauncher.type",
    "runLauncher.config",
    "runLauncher.config.k8sRunLauncher",
    "runLauncher.config.k8sRunLauncher.runK8sConfig",
    "runLauncher.config.k8sRunLauncher.runK8sConfig.containerConfig",
    "dagsterDaemon",
    "dagsterDaemon.enabled",
    "dagsterDaemon.runCoordinator",
    "dagsterDaemon.runCoordinator.enabled",
    "dagsterDaemon.runCoordinator.type",
    "dagsterDaemon.runCoordinator.config",
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator",
    *(
        f"dagsterDaemon.runCoordinator.config.queuedRunCoordinator.{k}"
        for k in (
            "maxConcurrentRuns",
            "tagConcurrencyLimits",
            "blockOpConcurrencyLimitedRuns",
            "blockOpConcurrencyLimitedRuns.enabled",
            "dequeueIntervalSeconds",
        )
    ),
    "dagsterDaemon.runMonitoring",
    *(
        f"dagsterDaemon.runMonitoring.{k}"
        for k in ("enabled", "startTimeoutSeconds", "pollIntervalSeconds", "maxResumeRunAttempts")
    ),
    "retention",
    "retention.enabled",
    "retention.schedule",
    "retention.schedule.purgeAfterDays",
    "retention.sensor",
    "retention.sensor.purgeAfterDays",
    *(f"retention.sensor.purgeAfterDays.{k}" for k in ("failure", "skipped", "success")),
    "telemetry",
    "telemetry.enabled",
}
# Below these keys the values are Kubernetes objects (checked against the Kubernetes schema) or
# free-form lists.
OPAQUE = (
    "env",
    "volumes",
    "volumeMounts",
    "resources",
    "containerConfig",
    "tagConcurrencyLimits",
    "dagsterApiGrpcArgs",
)


def _key_paths(value: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            paths.add(path)
            if k not in OPAQUE:
                paths |= _key_paths(v, path)
    elif isinstance(value, list):
        for item in value:
            paths |= _key_paths(item, f"{prefix}.*")
    return paths


def test_helm_values_use_documented_keys_and_agree_with_the_instance():
    values = _values()
    unknown = sorted(_key_paths(values) - CHART_KEYS)
    assert not unknown, f"keys the chart does not document: {unknown}"
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert (
        queue["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    )
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert (
        values["postgresql"]["postgresqlScheme"]
        == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    # no credential in the values: the password comes from the Secret
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["generatePostgresqlPasswordSecret"] is False
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "minillm_assets", "-a", "defs"]
    # the user code image is the one deploy/k8s/Dockerfile builds, with the Postgres storage
    assert "registry.example.com/minillm" in (DEPLOY / "k8s" / "Dockerfile").read_text()
    assert "postgres" in (DEPLOY / "k8s" / "Dockerfile").read_text()
    # the volumes and env of the user deployment are Kubernetes objects too
    for volume in deployment["volumes"]:
        _validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x"},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "i",
                            "env": deployment["env"],
                            "volumeMounts": deployment["volumeMounts"],
                            "resources": deployment["resources"],
                        }
                    ],
                    "volumes": [volume],
                },
            },
            "user deployment",
        )
    claims = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "rbac.yaml").read_text())
        if d and d["kind"] == "PersistentVolumeClaim"
    }
    assert {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]} <= claims
    accounts = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "rbac.yaml").read_text())
        if d and d["kind"] == "ServiceAccount"
    }
    assert values["global"]["serviceAccountName"] in accounts


# -- scripts/prod.sh ----------------------------------------------------------------------------
