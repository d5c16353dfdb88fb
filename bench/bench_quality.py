"""Quality per wall-clock: our trainer against minimind's on the same real Chinese corpus.

    .venv/bin/python bench/bench_quality.py [--budgets 2,20] [--corpus DIR] [--rounds 1]

The corpus is `../shared/corpus/build_corpus.sh` (about 20 MB of real Chinese text, 61K documents;
built into --corpus when missing). Every 50th document is held out; the rest is the training set.
One tokenizer (ours, trained on the training set) serves both, so both models see the same token
ids; bits per byte does not depend on it anyway.

For each budget (minutes), each implementation trains in its own child process, from the same
initial weights, until the budget's wall clock is spent (data loading and the model's set-up
count; tokenizing does not: both get pre-tokenized data). The learning-rate schedule of each is
sized to the steps it will reach, from a short calibration run before the budget starts.

- `ours`: `minillm_core.train.train` as the `cpu` profile runs it, plus `optimizer="muon"`:
  documents packed back to back into rows of the model's context (no padding) with the document
  mask (each document attends only to itself, as it is scored), dtype `auto` (bf16 autocast where
  the CPU has native bf16), Muon for the blocks' matrices and AdamW for the rest. Stopped at the
  budget by SIGTERM, the loop's own clean stop (it saves the step). `ours-adamw`, `ours-nomask`
  and `ours-adamw-nomask` turn those parts off (ablations).
- `minimind`: `bench/minimind_ref.py`'s model and step as the seed runs pretraining on a CPU: one
  document per row, `<bos> text <eos>` cut at the context and padded to it (the padding masked out
  of the loss), float32 (the seed autocasts only on CUDA), foreach AdamW, its cosine schedule.

Both then score the held-out documents (first --heldout-docs of them) the same way, with the
evaluation's `score_loss`: each document from a fresh context (`<bos>` then its tokens, a longer
document in windows of the context, each window fresh), bits per byte = total nats / ln 2 / UTF-8
bytes of the scored tokens. The table gives steps, real (non-pad) tokens trained on, positions
processed (pad included) and the ratio of bits per byte (ours / minimind; lower is better). The load
average is printed beside every figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS_SCRIPT = ROOT.parent.parent / "shared" / "corpus" / "build_corpus.sh"
HOLDOUT_EVERY = 50
# Steps of the calibration run; the first two are left out of its timing (one-off set-up, and a
# first step whose allocations the steady state does not repeat), so the plan fills the budget.
CALIBRATION_STEPS = 6
STEADY_FROM = 2


def seconds_per_step(stamps: list[float]) -> float:
    """Steady-state seconds per step from the calibration run's step-end times."""
    steady = stamps[STEADY_FROM:]
    return (steady[-1] - steady[0]) / (len(steady) - 1)


def split_corpus(corpus: Path, work: Path, docs: int) -> tuple[Path, list[str]]:
    """The training set as a JSONL mix in `work`, and the held-out texts (every 50th); only the
    first `docs` documents when `docs` > 0."""
    train, heldout = [], []
    with (corpus / "corpus_zh.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if docs and i >= docs:
                break
            text = json.loads(line)["text"]
            (heldout if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append(text)
    mix = work / "train.jsonl"
    with mix.open("w", encoding="utf-8") as f:
        for text in train:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return mix, heldout


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Tokenizer, packed tensors (ours), padded rows (minimind), held-out texts and init weights."""
    from minillm_core.model import MiniLLM
    from minillm_core.tokenizer import load_tokenizer
    from minillm_core.tokenizer.training import TokenizerConfig, train_tokenizer
    from minillm_core.tokens.build import export_tokens
    from minillm_core.tokens.config import TensorConfig
    from minillm_core.train.checkpointer import save_checkpoint

    corpus = Path(args.corpus)
    if not (corpus / "corpus_zh.jsonl").exists():
        subprocess.run(["bash", str(CORPUS_SCRIPT), str(corpus)], check=True)
    mix, heldout = split_corpus(corpus, work, args.docs)
    train_tokenizer(TokenizerConfig(vocab_size=args.vocab), [mix], work / "tokenizer")
    export_tokens(
        TensorConfig(max_length=args.seq), "pretrain", mix, work / "tokenizer", work / "tensors"
    )
    tok = load_tokenizer(work / "tokenizer")
    bos, eos = tok.get_bos_token_id(), tok.encode_special("<|assistant_end|>")
    texts = [json.loads(line)["text"] for line in mix.open(encoding="utf-8")]
    rows = [[bos, *ids, eos][: args.seq + 1] for ids in tok.encode(texts)]
    torch.save(rows, work / "minimind_rows.pt")
    (work / "heldout.json").write_text(json.dumps(heldout[: args.heldout_docs], ensure_ascii=False))
    torch.manual_seed(0)
    save_checkpoint(work / "init", MiniLLM(model_config(args)), {"stage": "pretrain"})
    return {"train_docs": len(texts), "heldout_docs": len(heldout)}


def model_config(args: argparse.Namespace):
    from minillm_core.model import ModelConfig

    return ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=args.seq,
    )


# ---------------------------------------------------------------------------------------- ours


# Ablations of ours: the impl name's suffixes turn its recipe's parts off.
OURS_VARIANTS = ("ours", "ours-adamw", "ours-nomask", "ours-adamw-nomask")


def run_ours(args: argparse.Namespace, work: Path, budget_s: float, impl: str = "ours") -> dict:
    from minillm_core.errors import TrainingInterrupted
    from minillm_core.train import TrainConfig, train
    from minillm_core.train.checkpointer import load_checkpoint

    base = TrainConfig(
        stage="pretrain",
        data_path=str(work / "tensors"),
        out_dir=str(work / "ours-calibration"),
        pretrained_path=str(work / "init"),
        batch_size=args.batch,
        accumulation_steps=1,
        epochs=100,
        learning_rate=args.lr,
        dtype="auto",
        optimizer="adamw" if "-adamw" in impl else "muon",
        document_mask="-nomask" not in impl,
        log_interval=1,
        save_interval=10**9,
        resume=False,
        max_steps=CALIBRATION_STEPS,
    )
    mc = model_config(args)
    stamps: list[float] = []

    def on_log(line: str) -> None:
        if re.search(r" step \d+/\d+ ", line):
            stamps.append(time.perf_counter())

    train(base, mc, log=on_log)
    planned = max(1, int(budget_s / seconds_per_step(stamps)))
    cfg = base.model_copy(
        update={"out_dir": str(work / "ours"), "max_steps": planned, "log_interval": 10}
    )
    # The budget's clean stop: SIGTERM, which the loop turns into "save this step and stop".
    # One that comes during the set-up, before the loop's own handler, must not kill the child:
    # it is ignored, and the run then stops at its planned steps (sized to the budget).
    signal.signal(signal.SIGTERM, lambda *_: None)
    timer = threading.Timer(budget_s, os.kill, (os.getpid(), signal.SIGTERM))
    t0 = time.perf_counter()
    timer.start()
    try:
        rep = train(cfg, mc, log=lambda line: None)
        steps, tokens = rep.steps, rep.tokens_seen
    except TrainingInterrupted:
        meta = json.loads((work / "ours" / "model.json").read_text())
        steps, tokens = meta["step"], meta["tokens_seen"]
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    model, _ = load_checkpoint(work / "ours")
    return {
        "steps": steps,
        "planned_steps": planned,
        "real_tokens": tokens,
        "positions": steps * args.batch * args.seq,
        "train_s": wall,
        "dtype": str(resolve_train_dtype()),
        "model": model,
    }


def resolve_train_dtype() -> torch.dtype:
    from minillm_core.inference import autocast_dtype

    return autocast_dtype("auto", torch.device("cpu"))


# ------------------------------------------------------------------------------------ minimind


def run_minimind(args: argparse.Namespace, work: Path, budget_s: float) -> dict:
    sys.path.insert(0, str(HERE))
    import minimind_ref as mm

    from minillm_core.train.checkpointer import load_checkpoint

    rows = torch.load(work / "minimind_rows.pt", weights_only=True)
    mc = model_config(args)
    mcfg = mm.MiniMindConfig(
        vocab_size=mc.vocab_size,
        hidden_size=mc.hidden_size,
        num_hidden_layers=mc.num_hidden_layers,
        num_attention_heads=mc.num_attention_heads,
        num_key_value_heads=mc.kv_heads,
        rope_theta=mc.rope_theta,
        max_position_embeddings=mc.max_position_embeddings,
    )
    init = load_checkpoint(work / "init")[0].state_dict()
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()

    def batch(s: int):
        picked = [order[(s * args.batch + k) % len(order)] for k in range(args.batch)]
        docs = [torch.tensor(rows[i]) for i in picked]
        return mm.pad_lm_rows([{"input_ids": d[:-1], "labels": d[1:]} for d in docs], args.seq)

    def run(steps: int, deadline: float) -> tuple[object, int, int, list[float]]:
        model = mm.MiniMindForCausalLM(mcfg)
        model.load_state_dict(init)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        real = s = 0
        stamps = []
        while s < steps and time.perf_counter() < deadline:
            X, Y, M = batch(s)
            mm.lm_step(model, opt, X, Y, M, mm.minimind_lr(s, steps, args.lr))
            real += int(M.sum())
            s += 1
            stamps.append(time.perf_counter())
        return model, s, real, stamps

    # Timed between step ends, as ours is between its log lines: the first step's one-off set-up
    # (allocations, kernel selection) would make the plan too short and stop it before the budget.
    stamps = run(CALIBRATION_STEPS, float("inf"))[3]
    planned = max(1, int(budget_s / seconds_per_step(stamps)))
    t0 = time.perf_counter()
    model, steps, real, _ = run(planned, t0 + budget_s)
    return {
        "steps": steps,
        "planned_steps": planned,
        "real_tokens": real,
        "positions": steps * args.batch * args.seq,
        "train_s": time.perf_counter() - t0,
        "dtype": "torch.float32",
        "model": model.eval(),
    }


# ------------------------------------------------------------------------------------- scoring


def heldout_bits_per_byte(model: torch.nn.Module, work: Path, seq: int) -> dict[str, float]:
    """Each held-out document from a fresh context, in windows of the context, float32."""
    from minillm_core.eval.metrics import token_byte_lengths
    from minillm_core.eval.scoring import score_loss
    from minillm_core.tokenizer import load_tokenizer

    tok = load_tokenizer(work / "tokenizer")
    texts = json.loads((work / "heldout.json").read_text())
    rows = []
    for ids in tok.encode(texts):
        seq_ids = [tok.get_bos_token_id(), *ids]
        for start in range(0, len(ids), seq):
            window = [seq_ids[0], *ids[start : start + seq]]  # fresh context: <bos> + window
            rows.append(
                {"input_ids": torch.tensor(window[:-1]), "labels": torch.tensor(window[1:])}
            )
    scores = score_loss(
        model.eval(),
        rows,
        pad_id=0,
        batch_size=16,
        device=torch.device("cpu"),
        dtype=torch.float32,
        token_bytes=token_byte_lengths(tok),
    )
    utf8 = sum(len(t.encode("utf-8")) for t in texts)
    return {**scores, "utf8_bytes": float(utf8)}


def child(impl: str, args: argparse.Namespace, work: Path, budget_s: float) -> dict:
    load0 = os.getloadavg()[0]
    if impl in OURS_VARIANTS:
        result = run_ours(args, work, budget_s, impl)
    else:
        result = run_minimind(args, work, budget_s)
    model = result.pop("model")
    t = time.perf_counter()
    result.update(heldout_bits_per_byte(model, work, args.seq))
    result.update(
        impl=impl, budget_min=budget_s / 60, score_s=time.perf_counter() - t, load_start=load0
    )
    result["load_end"] = os.getloadavg()[0]
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| budget | impl | steps | trained s | real tokens | positions | real share | dtype "
        "| held-out bits/byte | ratio ours/minimind | load avg (start-end) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_budget: dict[float, dict[str, dict]] = {}
    for r in results:
        by_budget.setdefault(r["budget_min"], {})[r["impl"]] = r
    for budget, impls in by_budget.items():
        for impl, r in impls.items():
            ratio = ""
            if impl in OURS_VARIANTS and "minimind" in impls:
                ratio = f"{r['bits_per_byte'] / impls['minimind']['bits_per_byte']:.2f}"
            lines.append(
                f"| {budget:g} min | {impl} | {r['steps']} | {r['train_s']:.0f} | {r['real_tokens']:,} | "
                f"{r['positions']:,} | {r['real_tokens'] / max(1, r['positions']):.0%} | "
                f"{r['dtype'].removeprefix('torch.')} | {r['bits_per_byte']:.3f} | {ratio} | "
                f"{r['load_start']:.1f}-{r['load_end']:.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="0.5", help="minutes per run, comma-separated (2,20)")
    ap.add_argument(
        "--impls",
        default="minimind,ours",
        help="minimind and any of " + ", ".join(OURS_VARIANTS) + " (ablations: AdamW in place "
        "of Muon, no document mask)",
    )
    ap.add_argument("--corpus", default=str(Path(tempfile.gettempdir()) / "minillm-corpus"))
    ap.add_argument("--docs", type=int, default=0, help="use the first N documents; 0 = all")
    ap.add_argument("--heldout-docs", type=int, default=400, help="held-out documents scored")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256, help="the model's context")
    ap.add_argument("--vocab", type=int, default=6400)
    ap.add_argument("--batch", type=int, default=16, help="rows per step (both)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (both)")
    ap.add_argument("--out", default=str(HERE / "results" / "quality.json"))
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "WORK", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = set(args.impls.split(",")) - {"minimind", *OURS_VARIANTS}
    if unknown:
        ap.error(f"--impls: unknown {', '.join(sorted(unknown))}")
    if args.child:
        impl, work, seconds = args.child
        print("RESULT " + json.dumps(child(impl, args, Path(work), float(seconds))), flush=True)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = prepare(args, work)
        print(f"corpus: {info}", file=sys.stderr, flush=True)
        passthrough = [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("budgets", "impls", "out", "child", "corpus")
        ]
        for budget in (float(b) for b in args.budgets.split(",")):
            for impl in args.impls.split(","):
                cmd = [sys.executable, __file__, *passthrough]
                cmd += ["--child", impl, str(work), str(budget * 60)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                results.append(json.loads(line[7:]))
                r = results[-1]
                print(
                    f"{budget:g} min {impl}: {r['steps']} steps, bpb {r['bits_per_byte']:.3f}, "
                    f"load {r['load_start']:.1f}-{r['load_end']:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), **info, "runs": results}, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
