"""Data group: the pretrain, SFT and DPO mixes built from data/chinese (or the shipped samples)."""

import dagster as dg

from minillm_assets._util import check_result, code_version, to_metadata, user_errors
from minillm_assets.configs import dagster_config
from minillm_assets.resources import MiniLLMResource
from minillm_core.artifacts import sha256_file
from minillm_core.data import MixConfig, build_mix, check_mix

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
        description="Counts match the quotas, no empty text, every record has a "
        "source, DPO pairs share the prompt and differ.",
    )
    def _check(minillm: MiniLLMResource) -> dg.AssetCheckResult:
        problems = check_mix(minillm.mix_path(output), output)
        return check_result(problems)

    return _mix, _check


pretrain_mix, pretrain_mix_check = mix_asset("pretrain")
sft_mix, sft_mix_check = mix_asset("sft")
dpo_mix, dpo_mix_check = mix_asset("dpo")

assets = [pretrain_mix, sft_mix, dpo_mix]
checks = [pretrain_mix_check, sft_mix_check, dpo_mix_check]
