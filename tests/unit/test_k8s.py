"""The Kubernetes path, without a cluster: the manifests in deploy/k8s are what the renderer (the
asset's own pod-spec code) produces, they are valid Kubernetes objects (every key checked against
the API models of the `kubernetes` client), dagster-k8s's PipesK8sClient builds its pod from the
asset's spec, and the multi-node Job agrees with itself (nodes, GPUs, rendezvous address)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "k8s"


def _optional(name: str):
    """Import an optional package; in CI (CI=true, as .ci/run sets) a missing one is a failure."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"{name} is not installed (pip install 'minillm[k8s]')")


def _render():
    spec = importlib.util.spec_from_file_location("minillm_deploy_render", DEPLOY / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _validate(kubernetes, model: str, value: Any, where: str = "") -> None:
    """Every key of `value` is a field of the Kubernetes API model (camelCase, as kubectl reads
    it), recursively, and required fields are present: a misspelt key would be dropped silently
    by the API server's lenient decoding, so the test refuses it here."""
    if model.startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, v in enumerate(value):
            _validate(kubernetes, model[5:-1], v, f"{where}[{i}]")
        return
    if model.startswith(("dict(", "dict[")):  # "dict(str, str)" or "dict[str, str]" by version
        assert isinstance(value, dict), f"{where}: expected a mapping"
        inner = model[5:-1].split(", ", 1)[1]
        for k, v in value.items():
            _validate(kubernetes, inner, v, f"{where}.{k}")
        return
    prims = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if model in prims:
        assert isinstance(value, prims[model]), f"{where}: {value!r} is not {model}"
        return
    if model == "object":
        return
    cls = getattr(kubernetes.client, model)
    assert isinstance(value, dict), f"{where}: {model} must be a mapping"
    by_json = {v: k for k, v in cls.attribute_map.items()}
    unknown = set(value) - set(by_json)
    assert not unknown, f"{where}: not fields of {model}: {sorted(unknown)}"
    for key, v in value.items():
        _validate(kubernetes, cls.openapi_types[by_json[key]], v, f"{where}.{key}")


def _construct(kubernetes, model: str, doc: dict) -> Any:
    """Build the client's model objects from `doc`; their constructors refuse a missing required
    field (a container without a name, a pod spec without containers)."""
    import json

    class Response:  # the shape ApiClient.deserialize reads
        data = json.dumps(doc)

    return kubernetes.client.ApiClient().deserialize(Response(), model)


KINDS = {
    ("v1", "Pod"): "V1Pod",
    ("v1", "Service"): "V1Service",
    ("batch/v1", "Job"): "V1Job",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if d]


def test_manifests_are_current_renderings():
    render = _render()
    for name, text in render.documents().items():
        assert (DEPLOY / name).read_text(encoding="utf-8") == text, (
            f"deploy/k8s/{name} is stale: run python deploy/k8s/render.py"
        )


@pytest.mark.parametrize("name", ["training-pod.yaml", "multinode-job.yaml", "rbac.yaml"])
def test_manifests_are_valid_kubernetes_objects(name):
    kubernetes = _optional("kubernetes")
    for doc in _docs(name):
        model = KINDS[(doc["apiVersion"], doc["kind"])]
        _validate(kubernetes, model, doc, f"{name}:{doc['kind']}")
        assert type(_construct(kubernetes, model, doc)).__name__ == model


def test_training_pod_runs_torchrun_on_its_gpus():
    pod = _docs("training-pod.yaml")[0]
    spec = pod["spec"]
    c = spec["containers"][0]
    cmd = c["command"]
    nproc = cmd[cmd.index("--nproc_per_node") + 1]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == nproc == "8"  # one GPU per rank
    assert spec["restartPolicy"] == "Never"
    assert cmd[:4] == ["python", "-m", "minillm_core.train", "launch"]
    assert cmd[cmd.index("-m", 4) + 1] == "minillm_assets.pipes"  # rank 0 opens Pipes
    assert cmd[cmd.index("--max_restarts") + 1] == "0"
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/dev/shm", "/project"}
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    # the files the pod writes are where the Dagster run (same claim, same path) reads them
    # (the ranks read their configs, out_dir included, from a file the run writes on the claim)
    config = cmd[cmd.index("-m", 4) + 2]
    assert config.startswith("/project/out/") and config.endswith(".json")
    assert _render()._configs(1)[0].out_dir.startswith("/project/")
    assert cmd[cmd.index("--failure_file") + 1].startswith("/project/out/")


def test_pipes_k8s_client_builds_its_pod_from_the_asset_spec():
    _optional("kubernetes")
    pipes = _optional("dagster_k8s.pipes")
    from minillm_assets.k8s import K8sPodConfig, k8s_pod_spec
    from minillm_core.train.ddp import DistributedConfig

    dist = DistributedConfig(launcher="k8s", nproc_per_node=4)
    spec = k8s_pod_spec(
        K8sPodConfig(image="img:1", volume_claim="claim", node_selector={"gpu": "h100"}),
        dist,
        gpu=True,
        mount_path="/project",
    )
    pod = pipes.build_pod_body(
        pod_name="p",
        image="img:1",
        command=["python", "-m", "x"],
        env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"},
        base_pod_meta={"labels": {"minillm/stage": "pretrain"}},
        base_pod_spec=spec,
    )
    c = pod.spec.containers[0]
    assert c.image == "img:1" and c.command == ["python", "-m", "x"]
    assert c.resources.limits["nvidia.com/gpu"] == "4"
    env = {e.name: e.value for e in c.env}
    assert env["DAGSTER_PIPES_CONTEXT"] == "ctx" and env["MINILLM_ROOT"] == "/project"
    assert pod.spec.node_selector == {"gpu": "h100"} and pod.spec.restart_policy == "Never"
    assert pod.metadata.labels["minillm/stage"] == "pretrain"


def test_cpu_pod_asks_for_no_gpu():
    from minillm_assets.k8s import K8sPodConfig, k8s_pod_spec
    from minillm_core.train.ddp import DistributedConfig

    spec = k8s_pod_spec(
        K8sPodConfig(image="i"), DistributedConfig(nproc_per_node=2), gpu=False, mount_path="/p"
    )
    assert "nvidia.com/gpu" not in str(spec) and len(spec["volumes"]) == 1  # no claim: shm only


def test_multinode_job_agrees_with_itself():
    service, job = _docs("multinode-job.yaml")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    nnodes = int(cmd[cmd.index("--nnodes") + 1])
    nproc = cmd[cmd.index("--nproc_per_node") + 1]
    assert (
        spec["completionMode"] == "Indexed"
        and spec["completions"] == spec["parallelism"] == nnodes == 2
    )
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == nproc
    host, port = cmd[cmd.index("--rdzv_endpoint") + 1].split(":")
    name = job["metadata"]["name"]
    # pod 0 of the Indexed Job answers at <job>-0.<service> through the headless Service
    assert (
        host == f"{name}-0.{service['metadata']['name']}"
        and pod["subdomain"] == service["metadata"]["name"]
    )
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {
        "job-name": name
    }
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert cmd[cmd.index("-m", 3) + 1] == "minillm_cli.train"  # no Dagster needed in the pods
    assert cmd[cmd.index("--dist_backend") + 1] == "nccl"
    assert re.fullmatch(r"\d+\.\d+", cmd[cmd.index("--dist_timeout_s") + 1])


def test_k8s_launcher_refuses_several_nodes_and_a_missing_image():
    from minillm_assets.k8s import K8sPodConfig, run_k8s
    from minillm_core.config import ConfigError
    from minillm_core.train.ddp import DistributedConfig

    two = DistributedConfig(launcher="k8s", nnodes=2, rdzv_endpoint="h:1")
    with pytest.raises(ConfigError, match="one pod"):
        run_k8s(None, "a", "pretrain", None, None, two, K8sPodConfig(image="i"), Path("/"))
    with pytest.raises(ConfigError, match="image"):
        run_k8s(
            None,
            "a",
            "pretrain",
            None,
            None,
            DistributedConfig(launcher="k8s"),
            K8sPodConfig(),
            Path("/"),
        )
