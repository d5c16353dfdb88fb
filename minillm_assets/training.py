"""Training group: pretrain -> SFT -> DPO checkpoints, all trained by the one core loop."""

from typing import Any, Optional

import dagster as dg
from pydantic import Field

from minillm_assets._util import image_md, need, to_metadata, user_errors
from minillm_assets.configs import dagster_config
from minillm_assets.resources import MiniLLMResource
from minillm_core.checkpoint import read_meta
from minillm_core.model import ModelConfig
from minillm_core.tokenizer import load_tokenizer
from minillm_core.train import TrainConfig, train

ModelRunConfig = dagster_config(ModelConfig, "ModelRunConfig", exclude=("vocab_size",))
PretrainRunConfig = dagster_config(
    TrainConfig, "PretrainRunConfig", exclude=("stage",),
    model=(Optional[ModelRunConfig], Field(default=None, description="Model shape; SFT and DPO "
                                           "inherit it from the pretrain checkpoint.")))
FinetuneRunConfig = dagster_config(TrainConfig, "FinetuneRunConfig", exclude=("stage",))

# Training on one device at a time: runs that would share the GPU (or the CPU cores) queue on
# this pool instead (its limit is set in the instance's dagster.yaml).
TRAIN_POOL = "minillm_train"

# With resume state written every save_interval steps, a retry continues from the last checkpoint.
TRAIN_RETRY = dg.RetryPolicy(max_retries=2, delay=10)

_DESCRIPTIONS = {
    "pretrain": "Pretrained weights (safetensors + model.json): next-token loss on the packed "
                "pretrain tokens.",
    "sft": "Supervised fine-tuned weights: loss on assistant tokens, initialised from pretrain.",
    "dpo": "DPO-tuned weights: preference loss against the frozen SFT model.",
}
_PARENT = {"pretrain": None, "sft": "pretrain", "dpo": "sft"}


def checkpoint_asset(stage: str) -> dg.AssetsDefinition:
    name, parent = f"{stage}_checkpoint", _PARENT[stage]
    deps = [f"{stage}_tokens", "tokenizer"] + ([f"{parent}_checkpoint"] if parent else [])

    @dg.asset(name=name, group_name="training", description=_DESCRIPTIONS[stage], deps=deps,
              code_version="train-1", kinds={"pytorch"}, pool=TRAIN_POOL,
              retry_policy=TRAIN_RETRY)
    def _checkpoint(context: dg.AssetExecutionContext,
                    config: PretrainRunConfig if parent is None else FinetuneRunConfig,  # type: ignore[valid-type]
                    minillm: MiniLLMResource) -> dg.MaterializeResult:
        data = need(minillm.tokens_dir(stage), f"{stage}_tokens", name)
        tok_dir = need(minillm.tokenizer_dir, "tokenizer", name)
        user: dict[str, Any] = config.model_dump(exclude_none=True)
        model_user = user.pop("model", None)
        base: dict[str, Any] = {"stage": stage, "data_path": str(data),
                                "out_dir": str(minillm.checkpoint_dir(stage)),
                                "tensorboard_dir": str(minillm.tf / stage)}
        with user_errors(name):
            if parent is None:
                vocab = load_tokenizer(tok_dir).get_vocab_size()
                model_cfg = ModelConfig.resolve({"vocab_size": vocab}, minillm.preset("model"),
                                                model_user)
            else:
                parent_dir = need(minillm.checkpoint_dir(parent), f"{parent}_checkpoint", name)
                base["pretrained_path"] = str(parent_dir)
                model_cfg = ModelConfig(**read_meta(parent_dir)["model"])
            cfg = minillm.settings(TrainConfig, stage, user, base)
            report = train(cfg, model_cfg, log=context.log.info)
        meta = to_metadata(report.metadata)
        if report.loss_curve_png:
            meta["loss_curve"] = image_md(report.loss_curve_png, f"{stage} loss")
        return dg.MaterializeResult(
            metadata={**meta, "final_loss": report.final_loss, "steps": report.steps,
                      "tokens_seen": report.tokens_seen, "tokens_per_s": report.tokens_per_s,
                      "num_parameters": report.num_parameters,
                      "path": dg.MetadataValue.path(str(report.checkpoint_dir)),
                      "tensorboard": dg.MetadataValue.path(str(minillm.tf / stage))})

    return _checkpoint


pretrain_checkpoint = checkpoint_asset("pretrain")
sft_checkpoint = checkpoint_asset("sft")
dpo_checkpoint = checkpoint_asset("dpo")

assets = [pretrain_checkpoint, sft_checkpoint, dpo_checkpoint]
