"""Eval group: scores after each stage, printed, appended to eval_results.jsonl, shown here."""

from typing import Any

import dagster as dg

from minillm_assets._util import check_result, code_version, need, to_metadata, user_errors
from minillm_assets.configs import dagster_config
from minillm_assets.resources import MiniLLMResource
from minillm_core.artifacts import read_json, sidecar_path
from minillm_core.eval import EvalConfig, check_eval, evaluate

EvalRunConfig = dagster_config(EvalConfig, "EvalRunConfig", exclude=("stage",))
# The code these assets run: this module, the core and command code it imports, the resource.
CODE_VERSION = code_version(__name__, "minillm_assets.resources")

_DESCRIPTIONS = {
    "pretrain": "Held-out loss, perplexity and bits per byte of the pretrain checkpoint, plus "
    "fixed text continuations.",
    "sft": "Held-out masked loss, identity probes and multiple-choice accuracy after SFT.",
    "dpo": "Preference accuracy and reward margin against the SFT reference after DPO.",
}


def _identity(minillm: MiniLLMResource) -> dict[str, Any]:
    """The persona the SFT mix was built with, so eval probes for the same name and author."""
    side = sidecar_path(minillm.mix_path("sft"))
    if not side.exists():
        return {}
    cfg = read_json(side).get("config", {})
    return {k: cfg[k] for k in ("model_name", "model_author") if k in cfg}


def eval_asset(stage: str) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    name = f"{stage}_eval"
    deps = [f"{stage}_checkpoint", f"{stage}_mix", "tokenizer"] + (
        ["sft_checkpoint"] if stage == "dpo" else []
    )

    @dg.asset(
        name=name,
        group_name="eval",
        description=_DESCRIPTIONS[stage],
        deps=deps,
        code_version=CODE_VERSION,
        kinds={"pytorch"},
    )
    def _eval(
        context: dg.AssetExecutionContext, config: EvalRunConfig, minillm: MiniLLMResource
    ) -> dg.MaterializeResult:
        base: dict[str, Any] = {
            "stage": stage,
            "checkpoint": str(need(minillm.checkpoint_dir(stage), f"{stage}_checkpoint", name)),
            "data_path": str(need(minillm.mix_path(stage, heldout=True), f"{stage}_mix", name)),
            "tokenizer_dir": str(need(minillm.tokenizer_dir, "tokenizer", name)),
            "results_file": str(minillm.results_file),
            "tensorboard_dir": str(minillm.layout.eval_tensorboard_dir),
            # No max_seq_len: evaluation scores at the checkpoint's context, the length its
            # token rows were cut to (both are ModelConfig.max_position_embeddings).
            **_identity(minillm),
        }
        if stage == "dpo":
            base["reference_checkpoint"] = str(
                need(minillm.checkpoint_dir("sft"), "sft_checkpoint", name)
            )
        with user_errors(name):
            cfg = minillm.settings(EvalConfig, "eval", config, base)
            minillm.require_device(cfg.device, f"{name}")
            report = evaluate(cfg, log=context.log.info)
        return dg.MaterializeResult(
            metadata={
                **to_metadata(report.metadata),
                **to_metadata(report.metrics),
                # The results line stores NaN as null, so a blown-up loss fails the check visibly.
                "metrics": dg.MetadataValue.json(report.results_line["metrics"]),
                "scores_md": dg.MetadataValue.md(report.table_markdown),
                "samples": dg.MetadataValue.json(report.samples),
                "results_file": dg.MetadataValue.path(str(minillm.results_file)),
            }
        )

    @dg.asset_check(
        asset=name,
        name=f"{name}_in_range",
        description="Smoke: every score finite and in range. GPU: also the quality "
        "thresholds of the profile (e.g. the identity probe passes).",
    )
    def _check(
        context: dg.AssetCheckExecutionContext, minillm: MiniLLMResource
    ) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(name))
        entry = event.asset_materialization.metadata.get("metrics") if event else None
        metrics = dict(entry.value) if entry is not None else {}
        problems = check_eval(metrics, minillm.preset("eval_checks").get(stage, {}))
        return check_result(problems)  # no metrics at all is itself a problem

    return _eval, _check


pretrain_eval, pretrain_eval_check = eval_asset("pretrain")
sft_eval, sft_eval_check = eval_asset("sft")
dpo_eval, dpo_eval_check = eval_asset("dpo")

assets = [pretrain_eval, sft_eval, dpo_eval]
checks = [pretrain_eval_check, sft_eval_check, dpo_eval_check]
