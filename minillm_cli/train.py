"""`minillm pretrain|sft|dpo` (and the seed's trainer/train_*.py): the training stages from the command line.

Every TrainConfig and ModelConfig field is a flag of the same name. Unset flags take the
profile's preset (`--profile`), then the defaults; default paths come from the project layout
(`minillm_core.layout`: tokens, checkpoints and the parent checkpoint under the project root or
`MINILLM_ROOT`), never from the current directory; a JSONL `--data_path` is tokenized with the
layout's trained tokenizer (out/tokenizer) unless `--tokenizer_dir` names another. SFT and DPO
take the model shape of the checkpoint they start from, and every stage takes the data's
vocabulary size.

`--max_seq_len` is the model's context (`max_position_embeddings`): pretraining sets it; SFT and
DPO train at their parent checkpoint's context, and a different value is refused.

Under torchrun the same command is one rank of a DDP job (`--dist_backend`, `--dist_timeout_s`):
    torchrun --standalone --nproc_per_node 8 -m minillm_cli.train pretrain --profile gpu ...
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from minillm_core.artifacts import read_json
from minillm_core.devices import require_device
from minillm_core.errors import ConfigError
from minillm_core.layout import Layout
from minillm_core.model import ModelConfig
from minillm_core.profiles import PROFILES, preset
from minillm_core.train.config import PARENT, STAGE_DEFAULTS, TrainConfig
from minillm_core.train.ddp import DistributedConfig, report_run, run_in_group

STAGES = ("pretrain", "sft", "dpo")
_MODEL_FLAGS = set(ModelConfig.model_fields)
_TRAIN_FLAGS = set(TrainConfig.model_fields) - {"stage"}


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _add_field(parser: argparse.ArgumentParser, name: str, field: Any) -> None:
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    base = args[0]
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": field.description or ""}
    if typing.get_origin(base) is Literal:
        kwargs["choices"] = list(typing.get_args(base))
    elif base is bool:
        kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
    elif base in (int, float):
        kwargs["type"] = base
    parser.add_argument(f"--{name}", **kwargs)


def build_parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"minillm {stage}",
        description=f"{stage} stage. Unset options take the profile's preset, then the defaults "
        f"(stage defaults: {STAGE_DEFAULTS[stage]}; paths from the project layout).",
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=argparse.SUPPRESS,
        help="apply a profile preset under the flags",
    )
    for name, field in TrainConfig.model_fields.items():
        if name != "stage":
            _add_field(p, name, field)
    for name, field in ModelConfig.model_fields.items():
        _add_field(p, name, field)
    p.add_argument(
        "--max_seq_len",
        type=int,
        default=argparse.SUPPRESS,
        help="the model's context (max_position_embeddings): set by pretraining; SFT "
        "and DPO train at their parent checkpoint's",
    )
    dist = DistributedConfig.model_fields
    p.add_argument(
        "--dist_backend",
        choices=["auto", "nccl", "gloo"],
        default="auto",
        help="under torchrun: " + (dist["backend"].description or ""),
    )
    p.add_argument(
        "--dist_timeout_s",
        type=float,
        default=dist["timeout_s"].default,
        help="under torchrun: " + (dist["timeout_s"].description or ""),
    )
    return p


def train_overrides(stage: str, argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the explicitly given flags, as (train fields, model fields); for config layering."""
    ns = vars(build_parser(stage).parse_args(list(argv)))
    model = {k: v for k, v in ns.items() if k in _MODEL_FLAGS}
    if "max_seq_len" in ns:
        given = model.setdefault("max_position_embeddings", ns["max_seq_len"])
        if given != ns["max_seq_len"]:
            raise ConfigError(
                f"--max_seq_len {ns['max_seq_len']} and --max_position_embeddings "
                f"{given} name the same length (the model's context); give one"
            )
    return {k: v for k, v in ns.items() if k in _TRAIN_FLAGS}, model


def default_paths(stage: str, layout: Layout | None = None) -> dict[str, str]:
    """Where a stage reads and writes unless told: the project layout's folders."""
    layout = layout or Layout.at()
    paths = {
        "data_path": str(layout.tokens_dir(stage)),
        "out_dir": str(layout.checkpoint_dir(stage)),
        # Tokenizes a JSONL --data_path (token tensors carry their own tokenizer's hash).
        "tokenizer_dir": str(layout.tokenizer_dir),
    }
    parent = PARENT[stage]
    if parent:
        paths["pretrained_path"] = str(layout.checkpoint_dir(parent))
    return paths


def parse_train_args(stage: str, argv: Sequence[str]) -> tuple[TrainConfig, ModelConfig]:
    """Flags over the profile preset (`--profile`) over the layout's paths and the defaults."""
    ns = vars(build_parser(stage).parse_args(list(argv)))
    profile = ns.get("profile")
    train_over, model_over = train_overrides(stage, argv)
    t_pre = preset(profile, stage) if profile else {}
    m_pre = preset(profile, "model") if profile else {}
    cfg = TrainConfig.resolve(default_paths(stage), t_pre, {"stage": stage}, train_over)
    return cfg, ModelConfig.resolve(m_pre, model_over)


def fill_model_from_upstream(
    cfg: TrainConfig, model_cfg: ModelConfig, explicit: Mapping[str, Any]
) -> ModelConfig:
    """SFT/DPO take the shape of the checkpoint they start from, and every stage takes the data's
    vocabulary size, unless the user set those fields."""
    from minillm_core.train.checkpointer import META, read_meta

    fill: dict[str, Any] = {}
    if cfg.pretrained_path and (Path(cfg.pretrained_path) / META).exists():
        fill.update(read_meta(cfg.pretrained_path).get("model", {}))
        given, parent = explicit.get("max_position_embeddings"), fill.get("max_position_embeddings")
        if cfg.stage != "pretrain" and given is not None and given != parent:
            raise ConfigError(
                f"--max_seq_len {given} differs from the context of {cfg.pretrained_path} "
                f"({parent}): {cfg.stage} trains at its parent's context"
            )
    elif "vocab_size" not in explicit and cfg.data_path:
        # Missing inputs are left to train(), which names them; a corrupt one fails here, named.
        p = Path(cfg.data_path)
        if (p / "index.json").is_file():
            fill["vocab_size"] = read_json(p / "index.json")["vocab_size"]
        elif p.is_file() and cfg.tokenizer_dir and Path(cfg.tokenizer_dir).is_dir():
            from minillm_core.tokenizer import load_tokenizer

            fill["vocab_size"] = load_tokenizer(cfg.tokenizer_dir).vocab_size
    base = model_cfg.model_dump()
    base.update({k: v for k, v in fill.items() if k not in explicit})
    return ModelConfig.resolve(base)


def stage_flags(cfg: TrainConfig, model_cfg: ModelConfig) -> list[str]:
    """Flags that rebuild exactly these (resolved) configs: every set field, spelled as the
    stage's command line spells it (floats in repr, which round-trips)."""
    out: list[str] = []
    for obj, skip in ((cfg, {"stage"}), (model_cfg, set())):
        for name, value in obj.model_dump().items():
            if name in skip or value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            out += [f"--{name}", repr(value) if isinstance(value, float) else str(value)]
    return out


def check_device(cfg: TrainConfig, argv: Sequence[str]) -> None:
    """Stop before any work when the device asked for is not here (one line, what to use instead)."""
    ns = vars(build_parser(cfg.stage).parse_args(list(argv)))
    profile = ns.get("profile")
    what = None if "device" in ns or not profile else f"--profile {profile} (device {cfg.device})"
    require_device(cfg.device, what, "Use --device cpu, or --profile smoke")


def _main(stage: str, argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> Any:
        cfg, model_cfg = parse_train_args(stage, argv)
        check_device(cfg, argv)
        model_cfg = fill_model_from_upstream(cfg, model_cfg, train_overrides(stage, argv)[1])
        ns = build_parser(stage).parse_args(argv)
        return run_in_group(cfg, model_cfg, ns.dist_backend, ns.dist_timeout_s)

    return report_run(f"minillm {stage}", run)


def main_pretrain(argv: Sequence[str] | None = None) -> int:
    return _main("pretrain", argv)


def main_sft(argv: Sequence[str] | None = None) -> int:
    return _main("sft", argv)


def main_dpo(argv: Sequence[str] | None = None) -> int:
    return _main("dpo", argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m minillm_cli.train {pretrain|sft|dpo} [flags]` (also as a torchrun rank)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STAGES:
        print(
            f"usage: python -m minillm_cli.train {{{'|'.join(STAGES)}}} [options]", file=sys.stderr
        )
        return 2
    return _main(args[0], args[1:])


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
