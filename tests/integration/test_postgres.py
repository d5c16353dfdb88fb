"""Dagster as it runs in production, against a real PostgreSQL: deploy/dagster.yaml's instance
(storage in Postgres, the queued run coordinator, run monitoring), the webserver and the daemon
started and stopped by `python -m minillm_cli.prod` (what scripts/prod.sh runs), runs submitted
through the webserver's GraphQL endpoint as the UI submits them.

One cluster (tests/pg_cluster.py), one webserver and one daemon for the module; the tests run in
file order and build on each other (the smoke run's artifacts feed the two training runs). Every
wait polls a condition (run status, ticks, process groups); nothing sleeps a fixed time.

Skipped when the PostgreSQL server binaries are missing, except in CI (`CI` set), where that
fails. Artifacts and history go to pytest's tmp folders; see tests/ui_launcher.py's isolation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from minillm_assets.jobs import DEVICE_POOL_TAG
from minillm_cli.prod import graphql
from tests.pg_cluster import PgCluster, free_port, pg_cluster, require_postgres
from tests.pg_location import PROBE_SCHEDULE
from tests.ui_launcher import isolated_env

pytestmark = [pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300
IN_PROGRESS = ("STARTING", "STARTED")
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")

REPOS = """query { repositoriesOrError { ... on RepositoryConnection { nodes { name
  location { name } schedules { name scheduleState { status ticks(limit: 10) { status } } } } } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId status } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { runId status jobName
  startTime endTime tags { key value } } } }"""
RUN_EVENTS = """query($id: ID!) { logsForRun(runId: $id, limit: 10000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepStartEvent { stepKey timestamp }
    ... on ExecutionStepSuccessEvent { stepKey timestamp } } } } }"""
RUNS = """query { runsOrError(limit: 50) { ... on Runs { results { runId status jobName } } } }"""
MATERIALIZATIONS = """query($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
  ... on Asset { assetMaterializations(limit: 5) { runId } } } }"""
QUEUE_CONFIG = """query { instance { runQueueConfig { maxConcurrentRuns
  tagConcurrencyLimitsYaml isOpConcurrencyAware } } }"""


class Prod:
    """The webserver and the daemon of one Dagster home, driven through minillm_cli.prod."""

    def __init__(self, tmp: Path, cluster: PgCluster):
        self.tmp = tmp
        self.env = {
            **isolated_env(tmp),
            **cluster.env(),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        self.home = Path(self.env["DAGSTER_HOME"])
        (self.home / "dagster.yaml").unlink()  # isolated_env's local instance; prod copies ours
        self.workspace = tmp / "workspace.yaml"
        self.workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "python_module": {
                                "module_name": "tests.pg_location",
                                "attribute": "defs",
                                "working_directory": str(REPO),
                            }
                        }
                    ]
                }
            )
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._location: tuple[str, str] | None = None

    def cli(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        home: Path | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "minillm_cli.prod",
                *args,
                "--home",
                str(home or self.home),
                "-w",
                str(self.workspace),
                "--port",
                str(self.port),
            ],
            cwd=REPO,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        proc = self.cli("start")
        assert proc.returncode == 0, f"start failed:\n{proc.stdout}\n{proc.stderr}"

    def stop(self) -> None:
        proc = self.cli("stop", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(self.cli("status").stdout) == {"webserver": None, "daemon": None}

    def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = graphql(self.url, query, variables)
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def location(self) -> tuple[str, str]:
        if self._location is None:
            node = self.gql(REPOS)["repositoriesOrError"]["nodes"][0]
            self._location = (node["location"]["name"], node["name"])
        return self._location

    def launch(self, job: str, assets: list[str] | None = None) -> str:
        """Submit a run as the UI does: a job, or (`assets`) an ad-hoc materialization."""
        loc, repo = self.location()
        selector = {"repositoryLocationName": loc, "repositoryName": repo, "jobName": job}
        if assets:
            selector["assetSelection"] = [{"path": [a]} for a in assets]
        out = self.gql(LAUNCH, p={"selector": selector, "runConfigData": {}})["launchRun"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]

    def run(self, run_id: str) -> dict[str, Any]:
        out = self.gql(RUN, id=run_id)["runOrError"]
        assert out["__typename"] == "Run", out
        return out

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (run := self.run(run_id))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, (
                f"run {run_id} still {run['status']}; daemon log:"
                f"\n{(self.home / 'logs' / 'daemon.log').read_text(errors='replace')[-3000:]}"
            )
            time.sleep(0.5)
        return run


@pytest.fixture(scope="module")
def cluster():
    with pg_cluster(require_postgres()) as c:
        yield c


@pytest.fixture(scope="module")
def prod(cluster, tmp_path_factory):
    p = Prod(tmp_path_factory.mktemp("prod"), cluster)
    p.start()
    try:
        yield p
    finally:
        p.cli("stop", timeout=120)


@pytest.fixture(scope="module")
def smoke_run(prod) -> dict[str, Any]:
    run_id = prod.launch("retrain")
    return prod.wait(run_id)


def test_smoke_graph_goes_through_the_queue_and_the_daemon(prod, smoke_run):
    assert smoke_run["status"] == "SUCCESS", smoke_run
    assert {"key": DEVICE_POOL_TAG, "value": "default"} in smoke_run["tags"]
    events = [
        e["__typename"] for e in prod.gql(RUN_EVENTS, id=smoke_run["runId"])["logsForRun"]["events"]
    ]
    # queued by the webserver's run coordinator, then launched by the daemon's queue loop
    assert "RunEnqueuedEvent" in events, " ".join(sorted(set(events)))
    assert (
        events.index("RunEnqueuedEvent")
        < events.index("RunStartingEvent")
        < events.index("RunStartEvent")
    )
    assert (prod.tmp / "root" / "out" / "dpo" / "model.json").exists()


def test_history_survives_a_restart(prod, smoke_run):
    pids = json.loads(prod.cli("status").stdout)
    assert all(pids.values()), pids
    prod.stop()
    prod.start()
    assert json.loads(prod.cli("status").stdout) != pids  # new processes
    runs = {r["runId"]: r for r in prod.gql(RUNS)["runsOrError"]["results"]}
    assert runs[smoke_run["runId"]]["status"] == "SUCCESS"
    for asset in ("pretrain_mix", "tokenizer", "pretrain_checkpoint", "dpo_eval"):
        mats = prod.gql(MATERIALIZATIONS, path=[asset])["assetOrError"]["assetMaterializations"]
        assert smoke_run["runId"] in {m["runId"] for m in mats}, asset


def test_second_training_run_waits_in_the_queue(prod, smoke_run):
    assert smoke_run["status"] == "SUCCESS"
    # dpo_stage: the shortest training of the smoke profile (6 steps) and its eval
    first, second = prod.launch("dpo_stage"), prod.launch("dpo_stage")
    seen_waiting = None
    deadline = time.monotonic() + 2 * RUN_TIMEOUT_S
    while True:
        a, b = prod.run(first), prod.run(second)
        status = (a["status"], b["status"])
        assert not (status[0] in IN_PROGRESS and status[1] in IN_PROGRESS), (
            "two training runs in progress on one device pool"
        )
        if status[0] in IN_PROGRESS and status[1] == "QUEUED":
            seen_waiting = b
        if status[0] == "QUEUED" and status[1] in IN_PROGRESS:
            seen_waiting = a  # the queue may dequeue either first
        if all(s in TERMINAL for s in status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.25)
    assert status == ("SUCCESS", "SUCCESS"), status
    assert seen_waiting is not None, "never saw one run queued while the other ran"
    # what the UI shows as the reason: the run's tag and the instance's limit on that tag
    assert {"key": DEVICE_POOL_TAG, "value": "default"} in seen_waiting["tags"]
    queue = prod.gql(QUEUE_CONFIG)["instance"]["runQueueConfig"]
    limits = yaml.safe_load(queue["tagConcurrencyLimitsYaml"])
    assert {
        "key": DEVICE_POOL_TAG,
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in limits, limits
    assert queue["isOpConcurrencyAware"]
    # one after the other: the later run started once the earlier had ended
    runs = sorted((a, b), key=lambda r: r["startTime"])
    assert runs[1]["startTime"] >= runs[0]["endTime"], runs


def _step_span(prod: Prod, run_id: str, step: str) -> tuple[int, int]:
    events = prod.gql(RUN_EVENTS, id=run_id)["logsForRun"]["events"]
    start = [
        int(e["timestamp"])
        for e in events
        if e["__typename"] == "ExecutionStepStartEvent" and e["stepKey"] == step
    ]
    end = [
        int(e["timestamp"])
        for e in events
        if e["__typename"] == "ExecutionStepSuccessEvent" and e["stepKey"] == step
    ]
    assert start and end, f"{step} did not run in {run_id}"
    return start[0], end[-1]


def test_ad_hoc_training_materialization_waits_for_the_pool(prod, smoke_run):
    """An asset materialized from the UI runs Dagster's implicit asset job, which carries no run
    tags; the training asset's pool keeps its step off the device while another holds it."""
    assert smoke_run["status"] == "SUCCESS"
    tagged = prod.launch("dpo_stage")
    ad_hoc = prod.launch("__ASSET_JOB", assets=["dpo_checkpoint"])
    runs = {r: prod.wait(r) for r in (tagged, ad_hoc)}
    assert [r["status"] for r in runs.values()] == ["SUCCESS", "SUCCESS"], runs
    assert DEVICE_POOL_TAG not in {t["key"] for t in runs[ad_hoc]["tags"]}
    spans = sorted(_step_span(prod, r, "dpo_checkpoint") for r in runs)
    assert spans[1][0] >= spans[0][1], f"two training steps at once: {spans}"


def test_schedule_tick_is_recorded_by_the_daemon(prod):
    # the probe ticks at each minute boundary, evaluated by the daemon's scheduler loop
    deadline = time.monotonic() + 150
    while True:
        schedules = {
            s["name"]: s
            for n in prod.gql(REPOS)["repositoriesOrError"]["nodes"]
            for s in n["schedules"]
        }
        state = schedules[PROBE_SCHEDULE]["scheduleState"]
        if state["ticks"]:
            break
        assert time.monotonic() < deadline, f"no tick recorded; state {state}"
        time.sleep(1)
    assert state["status"] == "RUNNING"
    assert {t["status"] for t in state["ticks"]} <= {"SKIPPED", "SUCCESS", "STARTED"}, state


def _one_line_error(proc: subprocess.CompletedProcess, cluster: PgCluster, port: int) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err, err
    assert f"{cluster.host}:{port}" in err and f"database '{cluster.db_name}'" in err, err
    return err


def test_bad_password_is_one_clear_line(prod, cluster):
    proc = prod.cli("check", env={**prod.env, "DAGSTER_PG_PASSWORD": "wrong"}, timeout=60)
    err = _one_line_error(proc, cluster, cluster.port)
    assert "password authentication failed" in err, err


def test_stopped_database_is_one_clear_line(prod, cluster):
    stopped = free_port()  # a server that is not running: nothing listens on this port
    proc = prod.cli("check", env={**prod.env, "DAGSTER_PG_PORT": str(stopped)}, timeout=60)
    err = _one_line_error(proc, cluster, stopped)
    assert "Connection refused" in err, err
    # `start` stops at the same line before it starts any process
    other = prod.tmp / "other_home"
    proc = prod.cli(
        "start", env={**prod.env, "DAGSTER_PG_PORT": str(stopped)}, home=other, timeout=60
    )
    _one_line_error(proc, cluster, stopped)
    assert not (other / "run").exists()
