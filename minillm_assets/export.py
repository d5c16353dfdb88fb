"""Export group: the DPO checkpoint as a HuggingFace Llama folder that transformers loads."""

import dagster as dg

from minillm_assets._util import check_result, code_version, need, to_metadata, user_errors
from minillm_assets.configs import dagster_config
from minillm_assets.resources import MiniLLMResource
from minillm_core.artifacts import read_json, sha256_tree
from minillm_core.export import EXPORT_META, ExportConfig, export_hf

ExportRunConfig = dagster_config(ExportConfig, "ExportRunConfig")
# The code these assets run: this module, the core and command code it imports, the resource.
CODE_VERSION = code_version(__name__, "minillm_assets.resources")


@dg.asset(
    group_name="export",
    code_version=CODE_VERSION,
    kinds={"huggingface"},
    deps=["dpo_checkpoint", "tokenizer"],
    description="The DPO checkpoint as a HuggingFace folder (Llama config.json, "
    "safetensors, tokenizer.json, chat template), verified against the native "
    "model when transformers is installed.",
)
def hf_export(
    context: dg.AssetExecutionContext, config: ExportRunConfig, minillm: MiniLLMResource
) -> dg.MaterializeResult:
    ckpt = need(minillm.checkpoint_dir("dpo"), "dpo_checkpoint", "hf_export")
    tok = need(minillm.tokenizer_dir, "tokenizer", "hf_export")
    with user_errors("hf_export"):
        cfg = minillm.settings(ExportConfig, "export", config)
        report = export_hf(ckpt, tok, minillm.layout.hf_dir, cfg, log=context.log.info)
    return dg.MaterializeResult(
        metadata={**to_metadata(report.metadata), "path": dg.MetadataValue.path(str(report.path))},
        data_version=dg.DataVersion(sha256_tree(report.path)[:16]),
    )


@dg.asset_check(
    asset=hf_export,
    description="transformers loaded the export and its logits "
    "matched the native model's within the tolerance, greedy tokens equal.",
)
def hf_export_matches_native(minillm: MiniLLMResource) -> dg.AssetCheckResult:
    record = read_json(minillm.layout.hf_dir / EXPORT_META).get("verification") or {}
    problems = []
    if not record.get("verified"):
        problems.append("not verified (is transformers installed?)")
    elif not record.get("greedy_equal") or record.get(
        "max_abs_logit_diff", float("inf")
    ) > record.get("atol", 1e-4):
        problems.append(f"export differs from the native model: {record}")
    return check_result(problems)


assets = [hf_export]
checks = [hf_export_matches_native]
