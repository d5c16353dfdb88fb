"""The sensor that retrains when source data changes.

It fingerprints every file the mix would read (data/chinese, or the shipped samples a category
falls back to) by content hash, re-hashing only files whose size or mtime moved, and keeps the
fingerprints in its cursor (stored by Dagster, so it survives restarts). When the files feeding
an output change, it requests one run of that output's mix and everything downstream, keyed by
the content hash: the same change never triggers twice. The first tick records a baseline.
"""

import hashlib
import json
import warnings
from collections import defaultdict
from typing import Any

import dagster as dg

from minillm_assets.jobs import training_run_tags
from minillm_assets.resources import MiniLLMResource
from minillm_core.artifacts import sha256_file
from minillm_core.data import MixConfig, MixError, resolve_files


def fingerprint(
    cfg: MixConfig, previous: dict[str, list] | None = None
) -> tuple[dict[str, list], dict[str, str]]:
    """({file: [size, mtime_ns, sha256]}, {output: hash of its category files})."""
    previous = previous or {}
    files: dict[str, list] = {}
    per_output: dict[str, Any] = defaultdict(hashlib.sha256)
    for name, category in sorted(cfg.categories.items()):
        try:
            found, _ = resolve_files(cfg, name)
        except MixError:
            continue  # the mix itself reports a category without files
        for path, _, _ in found:
            st = path.stat()
            key = str(path)
            old = previous.get(key)
            same = old is not None and old[:2] == [st.st_size, st.st_mtime_ns]
            digest = old[2] if same else sha256_file(path)
            files[key] = [st.st_size, st.st_mtime_ns, digest]
            for output in category.outputs:
                per_output[output].update(f"{name}\0{key}\0{digest}\n".encode())
    return files, {o: h.hexdigest() for o, h in sorted(per_output.items())}


def sources_version(outputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()[:20]


def _mix_config(minillm: MiniLLMResource) -> MixConfig:
    return minillm.settings(
        MixConfig,
        "mix",
        None,
        base={"sources_dir": str(minillm.sources), "samples_dir": str(minillm.samples)},
    )


def _observe_sources(minillm: MiniLLMResource) -> dg.DataVersion:
    return dg.DataVersion(sources_version(fingerprint(_mix_config(minillm))[1]))


with warnings.catch_warnings():
    # Observable source assets are marked beta; they are still the way to version external data.
    warnings.simplefilter("ignore", dg.BetaWarning)
    chinese_sources = dg.observable_source_asset(
        name="chinese_sources",
        group_name="data",
        description="The source files the mixes read: data/chinese, or the shipped samples a "
        "category falls back to. Its data version is their content hash, so an edit marks the "
        "mixes (and all below them) stale.",
    )(_observe_sources)


@dg.sensor(
    name="source_data_changed",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    asset_selection=dg.AssetSelection.all(),
    description="Retrain what depends on data/chinese when its files' contents change.",
)
def source_data_changed(
    context: dg.SensorEvaluationContext, minillm: MiniLLMResource
) -> dg.SensorResult | dg.SkipReason:
    state = json.loads(context.cursor) if context.cursor else None
    files, outputs = fingerprint(_mix_config(minillm), state["files"] if state else None)
    cursor = json.dumps({"files": files, "outputs": outputs}, sort_keys=True)
    if state is None:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"baseline recorded for {len(files)} source files"),
            cursor=cursor,
        )
    changed = sorted(
        o for o in set(outputs) | set(state["outputs"]) if outputs.get(o) != state["outputs"].get(o)
    )
    if not changed:
        return dg.SensorResult(skip_reason=dg.SkipReason("no source file changed"), cursor=cursor)
    selection = dg.AssetSelection.assets(*(f"{o}_mix" for o in changed)).downstream()
    keys = sorted(selection.resolve(context.repository_def.asset_graph))
    version = sources_version(outputs)
    context.log.info(f"sources changed for {', '.join(changed)}: requesting {len(keys)} assets")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=version,
                asset_selection=keys,
                tags={**training_run_tags(), "minillm/changed_outputs": ",".join(changed)},
            )
        ],
        # Recording the new version marks the mixes stale in the UI until the run lands.
        asset_events=[
            dg.AssetObservation(
                asset_key=chinese_sources.key, tags={"dagster/data_version": version}
            )
        ],
        cursor=cursor,
    )


sensors = [source_data_changed]
source_assets = [chinese_sources]
