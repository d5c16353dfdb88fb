"""The Dagster web UI, end to end in headless Chromium: start `dagster dev` on a free port,
press *Materialize all* on the global asset lineage page, wait for the run through the GraphQL
endpoint (not the page), open `sft_eval` and check that its loss and perplexity are shown, save
screenshots, stop the server.

Needs the `playwright` Python package and Debian's Chromium at /usr/bin/chromium (Playwright's
own browser downloads are not used). Without them the test is skipped locally and fails in CI
(`CI` set). Everything the run writes (Dagster history, mixes, tokenizer, checkpoints, eval
results) goes to pytest's tmp_path; see tests/ui_launcher.py. Screenshots are saved under
tmp_path and, when `MINILLM_SCREENSHOT_DIR` is set, copied there.

The UI has no test ids; the handles used are buttons and menu items by role and name, the graph's
SVG `foreignObject` nodes holding asset names, and the metadata table's rows and cells.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.ui_launcher import DagsterDev, dagster_dev

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
RUN_TIMEOUT_S = 600  # the smoke graph takes 35-60 s alone; CI machines may be slower and shared
EVAL_ASSET = "sft_eval"
SHOWN_METRICS = ("loss", "perplexity")
ASSETS = (
    "pretrain_mix",
    "sft_mix",
    "dpo_mix",
    "tokenizer",
    "pretrain_tokens",
    "sft_tokens",
    "dpo_tokens",
    "pretrain_checkpoint",
    "sft_checkpoint",
    "dpo_checkpoint",
    "pretrain_eval",
    "sft_eval",
    "dpo_eval",
    "hf_export",
)


def _require_browser() -> None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian: apt-get install chromium)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        skip_or_fail(reason)


# -- GraphQL ---------------------------------------------------------------------------------
RUNS = """query { runsOrError(limit: 20) { __typename
  ... on Runs { results { runId status } } ... on PythonError { message } } }"""

RUN = """query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { runId status stats { __typename
    ... on RunStatsSnapshot { stepsSucceeded stepsFailed materializations } } }
  ... on RunNotFoundError { message } ... on PythonError { message } } }"""

RUN_ERRORS = """query($id: ID!) { logsForRun(runId: $id, limit: 10000) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message level stepKey }
    ... on ExecutionStepFailureEvent { error { message stack cause { message stack } } }
    ... on ExecutionStepUpForRetryEvent { retryError: error { message cause { message } } }
    ... on RunFailureEvent { runError: error { message } } } }
  ... on PythonError { message } } }"""

ASSET_NODES = "query { assetNodes { assetKey { path } isMaterializable } }"

LATEST = """query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { __typename
  ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { __typename label
    ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue } } } } } }"""


def gql(url: str, query: str, **variables) -> dict:
    req = urllib.request.Request(
        f"{url}/graphql",
        method="POST",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.load(resp)
    assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
    return body["data"]


def run_errors(url: str, run_id: str) -> str:
    """The run's failure events and ERROR-level messages, for a failure message."""
    events = gql(url, RUN_ERRORS, id=run_id)["logsForRun"].get("events", [])
    lines = []
    for e in events:
        if e["__typename"] == "ExecutionStepFailureEvent":
            err = e.get("error") or {}
            root = err.get("cause") or err  # a retried step's own exception is the cause
            lines.append(
                f"[{e.get('stepKey')}] {err.get('message', '').strip()}\n"
                + "".join(root.get("stack") or [])[-2000:]
                + (root.get("message") or "").strip()
            )
        elif e["__typename"] == "ExecutionStepUpForRetryEvent":
            err = e.get("retryError") or {}
            cause = (err.get("cause") or {}).get("message") or err.get("message") or ""
            lines.append(f"[{e.get('stepKey')}] up for retry: {cause.strip()}")
        elif e["__typename"] == "RunFailureEvent":
            lines.append(f"[run] {(e.get('runError') or {}).get('message', e.get('message'))}")
        elif e.get("level") == "ERROR":
            lines.append(f"[{e.get('stepKey')}] {e.get('message')}")
    return "\n".join(lines) or "(no error events)"


def wait_for_new_run(server: DagsterDev, known: set[str], timeout: float) -> str:
    """The id of the one run launched since `known`, once it succeeded; fail fast otherwise."""
    deadline = time.monotonic() + timeout
    run_id, status = None, "not launched"
    while time.monotonic() < deadline:
        runs = gql(server.url, RUNS)["runsOrError"]
        assert runs["__typename"] == "Runs", runs
        new = [r for r in runs["results"] if r["runId"] not in known]
        assert len(new) <= 1, f"expected one run from 'Materialize all', got {new}"
        if new:
            run_id, status = new[0]["runId"], new[0]["status"]
            if status == "SUCCESS":
                return run_id
            if status in ("FAILURE", "CANCELING", "CANCELED"):
                pytest.fail(
                    f"run {run_id} ended {status}:\n{run_errors(server.url, run_id)}\n"
                    f"--- dagster dev log tail ---\n{server.log_tail()}"
                )
        time.sleep(2)
    pytest.fail(
        f"run {run_id} still {status} after {timeout:.0f} s\n"
        f"--- dagster dev log tail ---\n{server.log_tail()}"
    )


# -- the page --------------------------------------------------------------------------------
def expand_all_groups(page) -> None:
    """Graph settings (the gear inside the graph viewport, not the nav's "Settings") >
    "Expand all groups", then zoom out one step so every node fits in the screenshot."""
    page.locator("button:has([aria-label='settings']):not(:has-text('Settings'))").click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    graph_node(page, EVAL_ASSET).wait_for()
    page.locator("button:has([aria-label='zoom_out'])").click()


def graph_node(page, asset: str):
    return (
        page.locator("svg foreignObject")
        .filter(has_text=re.compile(rf"^\s*{re.escape(asset)}\s*$"))
        .first
    )


def metadata_value(page, label: str) -> float:
    """The value shown in the asset page's metadata table for `label` (the first row whose key
    cell is `label`; markdown tables further down repeat the numbers, rounded)."""
    from playwright.sync_api import expect

    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=label, exact=True)).first
    expect(row).to_be_visible()
    cells = [c.strip() for c in row.get_by_role("cell").all_inner_texts()]
    assert cells[0] == label, cells
    try:
        return float(cells[-1].replace(",", ""))
    except ValueError:
        pytest.fail(f"metadata row {label!r} shows no number: {cells}")


def save(page, name: str, folder: Path) -> Path:
    path = folder / name
    page.screenshot(path=str(path))
    if extra := os.environ.get("MINILLM_SCREENSHOT_DIR"):
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(extra) / name)
        print(f"screenshot: {Path(extra) / name}")
    print(f"screenshot: {path}")
    return path


# -- the test --------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path):
    _require_browser()
    with dagster_dev(tmp_path / "ui") as srv:  # stopped (process group) however the test ends
        print(f"dagster dev at {srv.url}, log {srv.log}")
        yield srv


def test_materialize_smoke_graph_from_the_ui(server: DagsterDev, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    url = server.url
    known = {r["runId"] for r in gql(url, RUNS)["runsOrError"]["results"]}

    # Playwright starts Chromium without its sandbox (chromium_sandbox=False), so this also runs
    # as root and in containers without user namespaces; /dev/shm is small in many containers.
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)

            # 1. the global asset lineage page, all groups expanded
            page.goto(f"{url}/asset-groups")
            expect(page.get_by_text("Global asset lineage").first).to_be_visible()
            materialize = page.get_by_role("button", name="Materialize all")
            expect(materialize).to_be_enabled(timeout=120_000)
            expand_all_groups(page)
            for asset in ("pretrain_eval", "sft_eval", "dpo_eval", "tokenizer"):
                expect(graph_node(page, asset)).to_be_visible()

            # 2. materialize everything; a confirmation dialog, if this version shows one, is
            # accepted; the UI reports "Launched run <id>"
            materialize.click()
            launched = page.get_by_text(re.compile(r"Launched run"))
            dialog = page.get_by_role("dialog")
            expect(launched.or_(dialog).first).to_be_visible()
            if not launched.first.is_visible() and dialog.first.is_visible():
                dialog.first.get_by_role(
                    "button", name=re.compile(r"^(Launch|Materialize|Confirm)", re.I)
                ).first.click()
                expect(launched.first).to_be_visible()

            # 3. wait for the run through GraphQL
            started = time.monotonic()
            run_id = wait_for_new_run(server, known, RUN_TIMEOUT_S)
            print(f"run {run_id} succeeded in {time.monotonic() - started:.0f} s")
            run = gql(url, RUN, id=run_id)["runOrError"]
            stats = run["stats"]
            nodes = gql(url, ASSET_NODES)["assetNodes"]
            materializable = {
                "/".join(n["assetKey"]["path"]) for n in nodes if n["isMaterializable"]
            }
            assert set(ASSETS) <= materializable, materializable
            assert stats["stepsFailed"] == 0, stats
            assert stats["materializations"] == len(materializable), stats

            # artifacts went to the temporary root, not the checkout
            assert (server.root / "out" / "dpo" / "model.safetensors").is_file()
            assert (server.tmp / "tf_dir" / "eval_results.jsonl").is_file()

            page.goto(f"{url}/asset-groups")
            expect(materialize).to_be_enabled()
            expect(graph_node(page, EVAL_ASSET)).to_be_visible()
            page.wait_for_timeout(2000)  # let the nodes pick up their materialized state
            save(page, "asset_graph.png", shots)

            # 4. the eval asset's page shows the numbers of this run's materialization
            latest = gql(url, LATEST, path=[EVAL_ASSET])["assetOrError"]
            assert latest["__typename"] == "Asset", latest
            (mat,) = latest["assetMaterializations"]
            assert mat["runId"] == run_id, mat["runId"]
            expected = {
                e["label"]: e.get("floatValue", e.get("intValue")) for e in mat["metadataEntries"]
            }
            page.goto(f"{url}/assets/{EVAL_ASSET}")
            expect(page.get_by_text(EVAL_ASSET).first).to_be_visible()
            for label in SHOWN_METRICS:
                assert isinstance(expected.get(label), float), (label, expected.get(label))
                shown = metadata_value(page, label)
                assert math.isfinite(shown), (label, shown)
                assert math.isclose(shown, expected[label], rel_tol=1e-6), (
                    label,
                    shown,
                    expected[label],
                )
            save(page, f"{EVAL_ASSET}.png", shots)
        finally:
            browser.close()
