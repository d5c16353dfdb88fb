"""What one evaluation is asked to do (`EvalConfig`) and what it found (`EvalReport`).

Paths left unset come from `minillm_core.layout.Layout.at()`; the scored length defaults to the
checkpoint's context (see `minillm_core.eval.run.eval_length`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from minillm_core.config import CoreConfig, validate_device
from minillm_core.layout import Layout
from minillm_core.schema import Stage

DEFAULT_PROMPTS = [
    "你是谁？",
    "谁开发了你？",
    "请用一句话介绍一下北京。",
    "1加1等于几？",
    "写一句关于春天的诗。",
]
DEFAULT_IDENTITY_PROBES: dict[str, Literal["name", "author"]] = {
    "你是谁？": "name",
    "谁开发了你？": "author",
}
DEFAULT_CONTINUATIONS = ["中国的首都是", "今天天气很好，我们", "人工智能是"]
# Names a small Chinese chat model tends to copy from its data when it "claims to be another
# assistant"; a probe answer naming one of these (and not the configured name) is flagged.
DEFAULT_FOREIGN_IDENTITIES = [
    "ChatGPT",
    "OpenAI",
    "GPT-4",
    "GPT-3",
    "Claude",
    "Anthropic",
    "通义千问",
    "Qwen",
    "文心一言",
    "ERNIE",
    "Llama",
    "LLaMA",
    "MiniMind",
    "智谱",
    "ChatGLM",
    "Kimi",
    "DeepSeek",
    "豆包",
]


class EvalConfig(CoreConfig):
    """Settings of one evaluation. Paths left unset derive from `stage` and the project root."""

    stage: Stage = Field(description="Which checkpoint kind is evaluated: pretrain, sft or dpo.")
    checkpoint: Path = Field(
        default=None,
        description="Checkpoint directory (model.safetensors + model.json). Default: out/<stage>.",
    )  # type: ignore[assignment]
    reference_checkpoint: Path | None = Field(
        default=None,
        description="DPO only: the reference policy (the SFT checkpoint). "
        "Default for dpo: out/sft.",
    )
    data_path: Path = Field(
        default=None,
        description="Held-out JSONL of the stage's mix. "
        "Default: data/processed/<stage>_chinese_heldout.jsonl.",
    )  # type: ignore[assignment]
    tokenizer_dir: Path = Field(
        default=None, description="Tokenizer directory. Default: out/tokenizer."
    )  # type: ignore[assignment]
    max_seq_len: int | None = Field(
        default=None,
        ge=8,
        description="Longest row scored, in tokens (longer records are cut "
        "like the training tensors cut them). Default: the checkpoint's context "
        "(max_position_embeddings); a larger value is refused.",
    )
    max_samples: int = Field(
        default=200,
        ge=1,
        description="Records scored per metric group "
        "(loss rows, knowledge items, preference pairs), first in file order.",
    )
    batch_size: int = Field(default=8, ge=1, description="Rows per forward pass.")
    results_file: Path = Field(
        default=None,
        description="JSONL the evaluation appends one line "
        "to. Default: <tf_dir>/eval_results.jsonl.",
    )  # type: ignore
    tensorboard_dir: Path | None = Field(
        default=None,
        description="TensorBoard log dir. Default: <tf_dir>/eval. Empty string disables.",
    )
    device: str = Field(
        default="auto",
        description="cpu, cuda, cuda:N, mps, or auto (cuda "
        "when available, resolved when the evaluation starts).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Autocast dtype; auto = bfloat16 on cuda, else float32."
    )
    max_new_tokens: int = Field(default=64, ge=1, description="Greedy tokens per sample.")
    model_name: str = Field(default="MiniLLM", description="Name the identity probe expects.")
    model_author: str = Field(
        default="MiniLLM 开源社区",
        description="Author the identity probe expects (the mix's default for {{author}}).",
    )
    prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        description="Fixed chat prompts answered greedily (sft, dpo).",
    )
    identity_probes: dict[str, Literal["name", "author"]] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTITY_PROBES),
        description="Prompt -> which configured value its answer must contain.",
    )
    foreign_identities: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FOREIGN_IDENTITIES),
        description="Other assistants' names; a probe answer naming one is counted.",
    )
    continuation_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTINUATIONS),
        description="Fixed text prefixes continued greedily (pretrain).",
    )
    dpo_beta: float | None = Field(
        default=None,
        gt=0,
        description="DPO beta for the reward "
        "margin. Default: the beta the DPO checkpoint was trained "
        "with (model.json), else 0.1.",
    )
    seed: int = Field(default=1337, description="Seeds torch before scoring (determinism).")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        return validate_device(v, allow_auto=True)

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        # A "before" validator, because the config validates on assignment: an "after" one that
        # assigned fields would re-enter validation.
        if not isinstance(data, dict) or data.get("stage") not in ("pretrain", "sft", "dpo"):
            return data
        d = dict(data)
        layout, stage = Layout.at(), d["stage"]
        defaults = {
            "checkpoint": layout.checkpoint_dir(stage),
            "data_path": layout.mix_path(stage, heldout=True),
            "tokenizer_dir": layout.tokenizer_dir,
            "results_file": layout.results_file,
            "tensorboard_dir": layout.eval_tensorboard_dir,
        }
        if stage == "dpo":
            defaults["reference_checkpoint"] = layout.checkpoint_dir("sft")
        # Only absent keys get a default: an explicit None (e.g. `tensorboard_dir` turned off,
        # then dumped and reloaded) must stay None. Strings, so JSON-mode validation accepts them.
        for key, value in defaults.items():
            if key not in d:
                d[key] = str(value)
        if d.get("tensorboard_dir") == "":
            d["tensorboard_dir"] = None
        return d


class EvalReport(BaseModel):
    stage: Stage
    metrics: dict[str, float]
    samples: list[dict[str, Any]]
    table_markdown: str
    results_line: dict[str, Any]
    metadata: dict[str, Any]
