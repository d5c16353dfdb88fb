"""Data group: the pretrain, SFT and DPO mixes built from data/chinese (or the shipped samples)."""

import dagster as dg

from minillm_assets._util import check_result, code_version, to_metadata, user_errors
from minillm_assets.configs import dagster_config
from minillm_assets.resources import MiniLLMResource
from minillm_core.artifacts import sha256_file
from minillm_core.data import MixConfig, build_mix, check_mix_counts, clean_heldout

MixRunConfig = dagster_config(MixConfig, "MixRunConfig", exclude=("sources_dir", "samples_dir"))
# The code these assets run: this module, the core and command code it imports, the resource.
CODE_VERSION = code_version(__name__, "minillm_assets.resources")

_DESCRIPTIONS = {
    "pretrain": "Pretraining text, {text, source} per line: the categories' text, by quota.",
    "sft": "SFT conversations, {conversations, source}: general, knowledge, math, identity x2.",
    "dpo": "DPO preference pairs, {chosen, rejected, source}, sharing the prompt.",
}


def mix_asset(output: str) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    name = f"{output}_mix"

    @dg.asset(
        name=name,
        group_name="data",
        description=_DESCRIPTIONS[output],
        code_version=CODE_VERSION,
        kinds={"jsonl"},
        deps=["chinese_sources"],
    )
    def _mix(
        context: dg.AssetExecutionContext, config: MixRunConfig, minillm: MiniLLMResource
    ) -> dg.MaterializeResult:
        minillm.require_devices(name, context.run.run_config)
        with user_errors(name):
            cfg = minillm.settings(
                MixConfig,
                "mix",
                config,
                base={"sources_dir": str(minillm.sources), "samples_dir": str(minillm.samples)},
            )
            report = build_mix(cfg, output, minillm.processed, log=context.log.info)
        return dg.MaterializeResult(
            metadata={
                **to_metadata(report.metadata),
                "path": dg.MetadataValue.path(str(report.path)),
                "heldout_path": dg.MetadataValue.path(str(report.heldout_path)),
                "records": report.records,
                "heldout_records": report.heldout_records,
            },
            data_version=dg.DataVersion(sha256_file(report.path)[:16]),
        )

    @dg.asset_check(
        asset=name,
        name=f"{name}_consistent",
        blocking=True,
        description="Counts match what was drawn, no empty text, every record has a source, "
        "DPO pairs share the prompt and differ; no training record is a held-out twin or "
        "shares a 50-character window with a held-out record (overlap counts in metadata). "
        "The held-out records the eval reads are checked against every training mix its "
        "checkpoint saw: the eval leaves those out (counts in metadata); fails when none is "
        "left to score.",
    )
    def _check(minillm: MiniLLMResource) -> dg.AssetCheckResult:
        problems, counts = check_mix_counts(minillm.mix_path(output), output)
        held = minillm.mix_path(output, heldout=True)
        if held.is_file():
            clean, dropped = clean_heldout(held, output)
            counts.update({f"eval_overlap_{k}": v for k, v in dropped.items()})
            counts["eval_heldout_clean"] = len(clean)
            if not clean:
                problems.append(
                    f"{held}: every held-out record overlaps a training mix; nothing to score"
                )
        result = check_result(problems)
        return dg.AssetCheckResult(
            passed=result.passed,
            metadata={
                **result.metadata,
                **counts,
                "overlap": sum(counts.get(k, 0) for k in ("heldout_twins", "window_overlaps")),
            },
        )

    return _mix, _check


pretrain_mix, pretrain_mix_check = mix_asset("pretrain")
sft_mix, sft_mix_check = mix_asset("sft")
dpo_mix, dpo_mix_check = mix_asset("dpo")

assets = [pretrain_mix, sft_mix, dpo_mix]
checks = [pretrain_mix_check, sft_mix_check, dpo_mix_check]
