"""Training group: pretrain -> SFT -> DPO checkpoints, all trained by the one core loop."""

import math
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from minillm_assets._util import code_version, need, user_errors
from minillm_assets.configs import dagster_config
from minillm_assets.k8s import K8sPodConfig, run_k8s
from minillm_assets.pipes import checkpoint_metadata, run_torchrun
from minillm_assets.resources import MiniLLMResource
from minillm_core.model import ModelConfig
from minillm_core.tokenizer import load_tokenizer
from minillm_core.train import TrainConfig, train
from minillm_core.train.checkpointer import read_meta
from minillm_core.train.ddp import DistributedConfig

ModelRunConfig = dagster_config(ModelConfig, "ModelRunConfig", exclude=("vocab_size",))
DistributedRunConfig = dagster_config(DistributedConfig, "DistributedRunConfig")
_DISTRIBUTED = (
    Optional[DistributedRunConfig],
    Field(
        default=None,
        description="How to launch: in this process, or as torchrun ranks (DDP) with "
        "nproc_per_node / nnodes / rdzv_endpoint / backend. Unset fields take the profile's preset.",
    ),
)
K8sRunConfig = dagster_config(K8sPodConfig, "K8sRunConfig")
_K8S = (
    Optional[K8sRunConfig],
    Field(
        default=None,
        description="The pod, when distributed."
        "launcher is k8s (image, volume claim, GPUs node selector).",
    ),
)
PretrainRunConfig = dagster_config(
    TrainConfig,
    "PretrainRunConfig",
    exclude=("stage",),
    model=(
        Optional[ModelRunConfig],
        Field(
            default=None,
            description="Model shape; SFT and DPO inherit it from the pretrain checkpoint.",
        ),
    ),
    distributed=_DISTRIBUTED,
    k8s=_K8S,
)
FinetuneRunConfig = dagster_config(
    TrainConfig, "FinetuneRunConfig", exclude=("stage",), distributed=_DISTRIBUTED, k8s=_K8S
)

# The code these assets run: this module and the core it imports, the launchers (torchrun via
# Pipes, Kubernetes) and the rank entry point they start, the resource.
CODE_VERSION = code_version(
    __name__,
    "minillm_assets.resources",
    "minillm_assets.pipes",
    "minillm_assets.k8s",
    "minillm_core.train.__main__",
)

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


def loss_problems(losses: list[float]) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a stage's logged losses: any non-finite value is an error; a
    curve whose last quarter is not below its first quarter is a warning (a few smoke steps, or
    DPO starting at ln 2, can legitimately be flat)."""
    if not losses:
        return ["no losses were logged"], []
    bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
    if bad:
        return [f"non-finite loss at logged points {bad[:5]}"], []
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    warn = (
        []
        if last < first
        else [f"loss did not decrease: first {k} mean {first:.4f}, last {k} mean {last:.4f}"]
    )
    return [], warn


def checkpoint_asset(
    stage: str, retry_policy: dg.RetryPolicy | None = TRAIN_RETRY
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    name, parent = f"{stage}_checkpoint", _PARENT[stage]
    deps = [f"{stage}_tokens", "tokenizer"] + ([f"{parent}_checkpoint"] if parent else [])

    @dg.asset(
        name=name,
        group_name="training",
        description=_DESCRIPTIONS[stage],
        deps=deps,
        code_version=CODE_VERSION,
        kinds={"pytorch"},
        pool=TRAIN_POOL,
        retry_policy=retry_policy,
    )
    def _checkpoint(
        context: dg.AssetExecutionContext,
        config: PretrainRunConfig if parent is None else FinetuneRunConfig,  # type: ignore[valid-type]
        minillm: MiniLLMResource,
    ) -> dg.MaterializeResult:
        data = need(minillm.tokens_dir(stage), f"{stage}_tokens", name)
        tok_dir = need(minillm.tokenizer_dir, "tokenizer", name)
        user: dict[str, Any] = config.model_dump(exclude_none=True)
        model_user = user.pop("model", None)
        dist_user = user.pop("distributed", None)
        k8s_user = user.pop("k8s", None)
        base: dict[str, Any] = {
            "stage": stage,
            "data_path": str(data),
            "out_dir": str(minillm.checkpoint_dir(stage)),
            "tensorboard_dir": str(minillm.layout.tensorboard_dir(stage)),
        }
        with user_errors(name):
            if parent is None:
                vocab = load_tokenizer(tok_dir).get_vocab_size()
                model_cfg = ModelConfig.resolve(
                    {"vocab_size": vocab}, minillm.preset("model"), model_user
                )
            else:
                parent_dir = need(minillm.checkpoint_dir(parent), f"{parent}_checkpoint", name)
                base["pretrained_path"] = str(parent_dir)
                model_cfg = ModelConfig(**read_meta(parent_dir)["model"])
            cfg = minillm.settings(TrainConfig, stage, user, base)
            dist_cfg = minillm.settings(DistributedConfig, "distributed", dist_user)
            if dist_cfg.uses_torchrun or dist_cfg.launcher == "k8s":
                # Refuse a global batch that does not split across the ranks here, in one line,
                # rather than once per rank inside the job.
                cfg.rank_accumulation(dist_cfg.world_size)
            if dist_cfg.launcher != "k8s":  # a pod brings its own GPU
                minillm.require_device(cfg.device, stage)
            if dist_cfg.launcher == "k8s":
                k8s_cfg = minillm.settings(K8sPodConfig, "k8s", k8s_user)
                return run_k8s(
                    context, name, stage, cfg, model_cfg, dist_cfg, k8s_cfg, minillm.root_path
                )
        if dist_cfg.uses_torchrun:
            # Rank 0 reports through Pipes the metadata checkpoint_metadata builds, as below.
            return run_torchrun(context, name, stage, cfg, model_cfg, dist_cfg)
        with user_errors(name):
            report = train(cfg, model_cfg, log=context.log.info)
        return dg.MaterializeResult(
            metadata=checkpoint_metadata(report, minillm.layout.tensorboard_dir(stage))
        )

    return _checkpoint, loss_checks(stage)


def loss_checks(stage: str) -> dg.AssetChecksDefinition:
    """The checks on a stage's logged losses: all finite (blocking), and decreasing (a warning)."""
    name = f"{stage}_checkpoint"

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                f"{name}_loss_finite",
                asset=name,
                blocking=True,
                description="Every logged loss is finite.",
            ),
            dg.AssetCheckSpec(
                f"{name}_loss_decreasing",
                asset=name,
                description="The last quarter of the loss curve is below the "
                "first (a warning: short runs can be flat).",
            ),
        ],
        name=f"{name}_loss_checks",
    )
    def _checks(minillm: MiniLLMResource):  # noqa: ANN202 (a generator of results)
        losses = read_meta(minillm.checkpoint_dir(stage)).get("losses") or []
        errors, warnings = loss_problems([float(x) for x in losses])
        yield dg.AssetCheckResult(
            check_name=f"{name}_loss_finite",
            asset_key=name,
            passed=not errors,
            metadata={"problems": dg.MetadataValue.json(errors)},
        )
        yield dg.AssetCheckResult(
            check_name=f"{name}_loss_decreasing",
            asset_key=name,
            passed=not warnings,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"problems": dg.MetadataValue.json(warnings), "points": len(losses)},
        )

    return _checks


pretrain_checkpoint, pretrain_checkpoint_checks = checkpoint_asset("pretrain")
sft_checkpoint, sft_checkpoint_checks = checkpoint_asset("sft")
dpo_checkpoint, dpo_checkpoint_checks = checkpoint_asset("dpo")

assets = [pretrain_checkpoint, sft_checkpoint, dpo_checkpoint]
checks = [pretrain_checkpoint_checks, sft_checkpoint_checks, dpo_checkpoint_checks]
