"""bf16 autocast against float32 on the loss curve: same batches, same initial weights.

    .venv/bin/python bench/bench_bf16.py [--steps 200] [--corpus DIR] [--docs 8000]

Trains the product loop (`minillm_core.train.train`) on real Chinese text (the shared corpus of
`bench_quality.py`, the first --docs documents, packed at --seq) three times:

- float32, seed A and float32, seed B: the run-to-run noise of float32 (another initialisation and
  data order), the yardstick;
- bfloat16 autocast (float32 master weights), seed A: the same initial weights and batches as
  float32 A, so any difference is the precision's.

It prints, over the last 20% of steps and over the whole curve, the mean absolute difference of the
per-step losses and the difference of the final (mean of the last 10) losses, bf16 vs fp32 A beside
fp32 B vs fp32 A; bf16 is "within noise" when its differences are not larger than the seeds'. The
load average is printed beside each run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepare(args: argparse.Namespace, work: Path) -> Path:
    from minillm_core.tokenizer.training import TokenizerConfig, train_tokenizer
    from minillm_core.tokens.build import export_tokens
    from minillm_core.tokens.config import TensorConfig

    corpus = Path(args.corpus) / "corpus_zh.jsonl"
    mix = work / "train.jsonl"
    with corpus.open(encoding="utf-8") as f, mix.open("w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= args.docs:
                break
            out.write(line)
    train_tokenizer(TokenizerConfig(vocab_size=args.vocab), [mix], work / "tokenizer")
    export_tokens(
        TensorConfig(max_length=args.seq), "pretrain", mix, work / "tokenizer", work / "tensors"
    )
    return work / "tensors"


def run(args: argparse.Namespace, data: Path, work: Path, dtype: str, seed: int) -> dict:
    from minillm_core.model import ModelConfig
    from minillm_core.train import TrainConfig, train

    cfg = TrainConfig(
        stage="pretrain",
        data_path=str(data),
        out_dir=str(work / f"{dtype}-{seed}"),
        batch_size=args.batch,
        accumulation_steps=1,
        epochs=100,
        max_steps=args.steps,
        learning_rate=args.lr,
        dtype=dtype,
        seed=seed,
        log_interval=10**6,
        save_interval=10**9,
        resume=False,
    )
    model = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=args.seq,
    )
    load0, t = os.getloadavg()[0], time.perf_counter()
    train(cfg, model, log=lambda line: None)
    meta = json.loads((Path(cfg.out_dir) / "model.json").read_text())
    losses = meta["losses"]
    assert len(losses) == args.steps, "the sidecar's curve must hold every step here"
    return {
        "dtype": dtype,
        "seed": seed,
        "losses": losses,
        "seconds": time.perf_counter() - t,
        "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
    }


def compare(a: list[float], b: list[float]) -> dict[str, float]:
    tail = max(1, len(a) // 5)
    return {
        "mean abs diff, all steps": sum(abs(x - y) for x, y in zip(a, b)) / len(a),
        "mean abs diff, last 20%": sum(abs(x - y) for x, y in zip(a[-tail:], b[-tail:])) / tail,
        "final loss diff (mean of last 10)": abs(sum(a[-10:]) / 10 - sum(b[-10:]) / 10),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--corpus", default=str(Path(tempfile.gettempdir()) / "minillm-corpus"))
    ap.add_argument("--docs", type=int, default=8000, help="first N corpus documents")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", default="1,2", help="seed A (both dtypes), seed B (float32)")
    ap.add_argument("--out", default=str(HERE / "results" / "bf16_curve.json"))
    args = ap.parse_args()
    seed_a, seed_b = (int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare(args, work)
        runs = [
            run(args, data, work, dtype, seed)
            for dtype, seed in (("float32", seed_a), ("bfloat16", seed_a), ("float32", seed_b))
        ]
    fp_a, bf_a, fp_b = (r["losses"] for r in runs)
    bf16, noise = compare(bf_a, fp_a), compare(fp_b, fp_a)
    lines = [
        f"{args.steps} steps, batch {args.batch} x {args.seq}, hidden {args.hidden} x "
        f"{args.layers} layers, vocab {args.vocab}, first {args.docs} corpus documents",
        "",
        "| run | final loss (mean of last 10) | seconds | load avg (start-end) |",
        "| --- | --- | --- | --- |",
    ]
    for r in runs:
        final = sum(r["losses"][-10:]) / 10
        lines.append(
            f"| {r['dtype']}, seed {r['seed']} | {final:.4f} | {r['seconds']:.0f} | {r['load']} |"
        )
    lines += [
        "",
        f"| measure | bf16 vs fp32 (seed {seed_a}) | fp32 seed {seed_b} vs seed {seed_a} "
        "(noise) | within noise |",
        "| --- | --- | --- | --- |",
    ]
    for key in bf16:
        ok = "yes" if bf16[key] <= noise[key] else "no"
        lines.append(f"| {key} | {bf16[key]:.4f} | {noise[key]:.4f} | {ok} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
