"""Tokenizer group: the BPE tokenizer trained on the three mixes, and the token tensors."""

import dagster as dg

from minillm_assets._util import (
    check_result,
    code_version,
    image_md,
    need,
    to_metadata,
    user_errors,
)
from minillm_assets.configs import dagster_config
from minillm_assets.resources import STAGES, MiniLLMResource
from minillm_core.artifacts import read_json, sha256_tree
from minillm_core.tokenizer import TokenizerConfig, check_tokenizer, load_tokenizer, train_tokenizer
from minillm_core.tokens import TensorConfig, check_tokens, export_tokens, plot_length_histogram

TokenizerRunConfig = dagster_config(TokenizerConfig, "TokenizerRunConfig")
TensorRunConfig = dagster_config(TensorConfig, "TensorRunConfig")
# The code these assets run (the tokenizer and the tokens share this module, so one version): this module, the core and command code it imports, the resource.
CODE_VERSION = code_version(__name__, "minillm_assets.resources")


@dg.asset(
    group_name="tokenizer",
    code_version=CODE_VERSION,
    kinds={"rust"},
    deps=[f"{o}_mix" for o in STAGES],
    description="Byte-level BPE (GPT-4-style split, vocab 6400 with special tokens) trained "
    "by the rustbpe crate on the three mixes; served by tiktoken.",
)
def tokenizer(
    context: dg.AssetExecutionContext, config: TokenizerRunConfig, minillm: MiniLLMResource
) -> dg.MaterializeResult:
    mixes = [need(minillm.mix_path(o), f"{o}_mix", "tokenizer") for o in STAGES]
    with user_errors("tokenizer"):
        cfg = minillm.settings(TokenizerConfig, "tokenizer", config)
        report = train_tokenizer(cfg, mixes, minillm.tokenizer_dir, log=context.log.info)
    return dg.MaterializeResult(
        metadata={
            **to_metadata(report.metadata),
            "vocab_size": report.vocab_size,
            "path": dg.MetadataValue.path(str(report.path)),
        },
        data_version=dg.DataVersion(sha256_tree(report.path)[:16]),
    )


@dg.asset_check(
    asset=tokenizer,
    blocking=True,
    description="Round-trips a fixed tricky text (Chinese, full-width punctuation, "
    "emoji, digits, whitespace runs); special tokens are where they belong.",
)
def tokenizer_round_trip(minillm: MiniLLMResource) -> dg.AssetCheckResult:
    problems = check_tokenizer(minillm.tokenizer_dir)
    return check_result(problems)


def tokens_asset(stage: str) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    name = f"{stage}_tokens"

    @dg.asset(
        name=name,
        group_name="tokenizer",
        code_version=CODE_VERSION,
        kinds={"numpy"},
        deps=[f"{stage}_mix", "tokenizer"],
        description=f"{stage} token tensors (memory-mapped shards + index.json) read by training.",
    )
    def _tokens(
        context: dg.AssetExecutionContext, config: TensorRunConfig, minillm: MiniLLMResource
    ) -> dg.MaterializeResult:
        mix = need(minillm.mix_path(stage), f"{stage}_mix", name)
        tok = need(minillm.tokenizer_dir, "tokenizer", name)
        out = minillm.tokens_dir(stage)
        with user_errors(name):
            cfg = minillm.settings(
                TensorConfig, "tensors", config, {"max_length": minillm.context_length}
            )
            report = export_tokens(cfg, stage, mix, tok, out, log=context.log.info)
        meta = to_metadata(report.metadata)
        png = out.parent / f"{stage}_lengths.png"
        plot_length_histogram(out, png)
        meta["length_histogram"] = image_md(png, f"{stage} sample lengths")
        return dg.MaterializeResult(
            metadata={
                **meta,
                "rows": report.rows,
                "tokens": report.tokens,
                "path": dg.MetadataValue.path(str(report.path)),
            },
            data_version=dg.DataVersion(
                read_json(out / "index.json").get("content_hash", "") or sha256_tree(out)[:16]
            ),
        )

    @dg.asset_check(
        asset=name,
        name=f"{name}_aligned",
        blocking=True,
        description="Every row's labels and loss mask line up with its ids; the "
        "tensors were built with the current tokenizer.",
    )
    def _check(minillm: MiniLLMResource) -> dg.AssetCheckResult:
        current = load_tokenizer(minillm.tokenizer_dir).hash
        problems = check_tokens(minillm.tokens_dir(stage), expected_tokenizer_hash=current)
        return check_result(problems)

    return _tokens, _check


pretrain_tokens, pretrain_tokens_check = tokens_asset("pretrain")
sft_tokens, sft_tokens_check = tokens_asset("sft")
dpo_tokens, dpo_tokens_check = tokens_asset("dpo")

assets = [tokenizer, pretrain_tokens, sft_tokens, dpo_tokens]
checks = [tokenizer_round_trip, pretrain_tokens_check, sft_tokens_check, dpo_tokens_check]
