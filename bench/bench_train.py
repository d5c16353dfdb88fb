"""Training throughput: MiniLLM's loop against a minimal copy of minimind's, side by side.

    .venv/bin/python bench/bench_train.py [--steps 3] [--stages pretrain,sft,dpo] [--threads N]
    .venv/bin/python bench/bench_train.py --dtype bfloat16 --batch 8 --stages pretrain \
        --impls ours,ours-compile,minimind     # bf16 MFU against the bf16 peak, batch 8 x 512
    .venv/bin/python bench/bench_train.py --dtype bfloat16 --batch 8 --stages pretrain \
        --impls ours,minimind --allocators system,tcmalloc     # what the malloc costs a step
    .venv/bin/python bench/bench_train.py --breakdown [--steps 3]

`--breakdown` profiles the product loop's pretrain steps (torch.profiler, the warm-up step left
out) and prints where a step's time goes: the matmuls (the work 6N counts), the attention kernel,
everything else, and the MFU each part allows at most. It answers "how far can MFU go here".

For each stage, child processes (one per trial, so each has its own peak RSS) train the default
model (hidden 512, 8 layers, 8 heads, vocab 6400: about 29M parameters) on CPU in float32 at
batch 4 (`--batch`), sequence 512, from the same initial weights on the same batches in the same order. The
two implementations alternate (`--rounds`, ABAB...), so load from other jobs hits both alike; the
table shows the best trial (the least disturbed) and the median:

- `ours`: the product loop, `minillm_core.train.train`, timed between its per-step log lines (the
  time includes everything the loop does per step: data, forward, backward, the NaN check,
  clipping, the fused AdamW step, logging). Pretrain/SFT leave the first step out as warm-up;
  DPO steps differ in length, so DPO warms up with a separate one-step run and times every step;
- `ours-compile`: the same loop with `compile=True` (torch.compile of the model; the compile time
  falls in the warm-up step, which is left out);
- `ours-muon`: the same loop with `optimizer="muon"` (what the orthogonalisation costs per step;
  its losses differ from minimind's by design);
- `minimind`: `bench/minimind_ref.py`, the seed's model and step (rows padded to the maximum
  length, loss mask, foreach AdamW, DPO log_softmax + gather), timed per step, first step left out.

Optimizer settings follow minimind's (AdamW betas 0.9/0.999, weight decay 0.01) and minimind is fed
our learning-rate values, so the per-step losses should agree up to float noise; the table shows
the largest difference.

Model FLOPs utilisation = 6 x parameters x tokens/s over this machine's float32 matmul peak,
measured in the same run (best of a few 2048^3 matmuls, before and after the trials; the higher
is used). `--dtype bfloat16` trains both under bf16 autocast and measures the peak in bf16.
A second column adds the attention products 6N leaves out (12 x layers x width x context per
token, PaLM's definition of MFU and nanochat's).
Pretrain and SFT rows are full 512-token rows (no padding advantage: pure compute).
DPO pairs have realistic lengths: each side's length is drawn log-normal with median 200 tokens
(sigma 0.6, clipped to 32..512), the prompt being the first 40% of it, the shape of public Chinese
preference sets truncated at 512. minimind pads both sides to 512; we group pairs of similar
length into batches (`group_by_length`, on for DPO), pad each batch to its longest row, run the
reference under inference_mode and, from the second epoch, reuse its cached log-probabilities.
Grouping changes which pairs share a step, so DPO's per-step losses are of different batches than
minimind's (at the seed's learning rate of 4e-8 all stay at ln 2 within float noise). The load average (1 min) is recorded beside each figure: other jobs on a
2-core machine distort timings.

`--allocators`: the malloc each trial's process runs on (`minillm_core.allocator`): `auto` (the
default, what scripts/run.sh gives a run: tcmalloc where installed), `system` (glibc's) or
`tcmalloc`; each trial records the allocator its process actually had.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from minillm_core import allocator

HERE = Path(__file__).resolve().parent
BATCH, SEQ = 4, 512
# --quick: a tiny model and short rows, to check the script itself in seconds (numbers meaningless)
QUICK_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
MODEL: dict = {}
DTYPE = "float32"  # --dtype: the training (autocast) dtype, and the dtype the peak is measured in
PEAK_SECONDS = 3.0  # --quick: 0.5
LR = {"pretrain": 5e-4, "sft": 1e-5, "dpo": 4e-8}


def measure_peak(n: int = 2048) -> float:
    """Best matmul rate (FLOP/s) in DTYPE over a few n^3 products."""
    a, b = (torch.randn(n, n, dtype=getattr(torch, DTYPE)) for _ in range(2))
    a @ b
    best, t_end = 0.0, time.perf_counter() + PEAK_SECONDS
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def make_rows(stage: str, n: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        if stage == "pretrain":
            seq = torch.randint(1, vocab, (SEQ + 1,), generator=g)
            rows.append({"input_ids": seq[:-1], "labels": seq[1:]})
        elif stage == "sft":
            seq = torch.randint(1, vocab, (SEQ + 1,), generator=g)
            mask = torch.zeros(SEQ + 1, dtype=torch.long)
            mask[SEQ // 4 :] = 1  # a user turn, then the assistant's answer
            labels = torch.where(mask[1:] == 1, seq[1:], torch.full((SEQ,), -100))
            rows.append({"input_ids": seq[:-1], "labels": labels, "loss_mask": mask[1:]})
        else:
            length = int(
                min(
                    SEQ, max(32, math.exp(math.log(200) + 0.6 * float(torch.randn(1, generator=g))))
                )
            )
            prompt = torch.randint(1, vocab, (int(length * 0.4),), generator=g)
            row = {}
            for side in ("chosen", "rejected"):
                seq = torch.cat(
                    [prompt, torch.randint(1, vocab, (length - len(prompt) + 1,), generator=g)]
                )
                mask = torch.zeros(len(seq), dtype=torch.long)
                mask[len(prompt) :] = 1
                row[f"{side}_input_ids"] = seq[:-1]
                row[f"{side}_labels"] = torch.where(
                    mask[1:] == 1, seq[1:], torch.full((len(seq) - 1,), -100)
                )
            rows.append(row)
    return rows


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows, stage, vocab):
        self.rows = rows
        self.meta = {
            "stage": stage,
            "vocab_size": vocab,
            "pad_id": 0,
            "tokenizer_hash": "bench",
            "data_hash": "bench",
        }

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


# ---------------------------------------------------------------------------------------------- child


def child(impl: str, stage: str, steps: int, work: Path) -> dict:
    from minillm_core.model import MiniLLM, ModelConfig
    from minillm_core.train import TrainConfig, train
    from minillm_core.train.data import SampleStream
    from minillm_core.train.state import lr_at

    model_cfg = ModelConfig(**MODEL)
    n_rows = (1 + steps) * BATCH
    rows = make_rows(stage, n_rows, model_cfg.vocab_size)
    epochs = 2 if (stage == "dpo" and impl.startswith("ours")) else 1
    cfg = TrainConfig(
        stage=stage,
        data_path="bench",
        out_dir=str(work / f"{impl}-{stage}"),
        batch_size=BATCH,
        accumulation_steps=1,
        epochs=epochs,
        learning_rate=LR[stage],
        warmup_steps=0,
        adam_beta2=0.999,
        weight_decay=0.01,
        log_interval=1,
        save_interval=10**9,
        resume=False,
        seed=0,
        dtype=DTYPE,
        pretrained_path=str(work / "init") if stage != "pretrain" else None,
    )
    result: dict = {
        "impl": impl,
        "stage": stage,
        "threads": torch.get_num_threads(),
        "allocator": allocator.active(),
        "load_start": os.getloadavg()[0],
    }
    if impl.startswith("ours"):
        cfg = cfg.model_copy(
            update={
                "compile": impl == "ours-compile",
                "optimizer": "muon" if impl == "ours-muon" else "adamw",
            }
        )
        ds = Rows(rows, stage, model_cfg.vocab_size)
        if stage == "dpo":
            # DPO batches differ in length (grouped by length, padded to their longest), so no
            # step can be left out as warm-up without bias: warm up with a separate one-step run,
            # then time every step of the measured run from its start.
            train(
                cfg.model_copy(update={"out_dir": str(work / "warm"), "max_steps": 1}),
                model_cfg,
                log=lambda line: None,
                dataset=ds,
            )
        stamps: list[tuple[float, str]] = []
        rep = train(
            cfg, model_cfg, log=lambda line: stamps.append((time.perf_counter(), line)), dataset=ds
        )
        meta = json.loads((Path(cfg.out_dir) / "model.json").read_text())
        t0 = next(t for t, line in stamps if "starting at step" in line)  # set-up done
        steps_t = [t for t, line in stamps if re.search(r" step \d+/\d+ ", line)]
        times = [b - a for a, b in zip([t0] + steps_t, steps_t)]
        result.update(losses=meta["losses"], num_parameters=rep.num_parameters)
        if stage == "dpo":
            result["step_times"] = times[: 1 + steps]  # epoch 1: reference computed
            result["cached_step_times"] = times[1 + steps :]  # epoch 2: reference log-probs cached
        else:
            result["step_times"] = times[1:]  # the first step is the warm-up
    else:
        import minimind_ref as mm

        from minillm_core.train.checkpointer import load_checkpoint

        mcfg = mm.MiniMindConfig(
            vocab_size=model_cfg.vocab_size,
            hidden_size=model_cfg.hidden_size,
            num_hidden_layers=model_cfg.num_hidden_layers,
            num_attention_heads=model_cfg.num_attention_heads,
            num_key_value_heads=model_cfg.kv_heads,
            rope_theta=model_cfg.rope_theta,
        )
        model = mm.MiniMindForCausalLM(mcfg)
        if stage == "pretrain":
            torch.manual_seed(cfg.seed)  # the same initial weights as ours
            init = MiniLLM(model_cfg).state_dict()
        else:
            init = load_checkpoint(work / "init")[0].state_dict()
        model.load_state_dict(init)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
        ref = None
        if stage == "dpo":
            ref = mm.MiniMindForCausalLM(mcfg)
            ref.load_state_dict(init)
            ref.eval().requires_grad_(False)
        order = SampleStream(cfg.seed, n_rows).indices(0, n_rows)
        losses, times = [], []
        for s in range(1 + steps):
            batch = [rows[i] for i in order[s * BATCH : (s + 1) * BATCH]]
            lr = lr_at(s, 1 + steps, cfg)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=getattr(torch, DTYPE), enabled=DTYPE != "float32"):
                loss = step_minimind(mm, stage, model, ref, opt, batch, lr, cfg.beta)
            losses.append(loss)
            times.append(time.perf_counter() - t)
        result.update(
            losses=losses,
            step_times=times[1:],
            num_parameters=sum(p.numel() for p in model.parameters()),
        )
    result["tokens_per_step"] = tokens_per_step(stage, rows, impl)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_end"] = os.getloadavg()[0]
    return result


def step_minimind(
    mm, stage: str, model, ref, opt, batch: list[dict], lr: float, beta: float
) -> float:
    if stage == "dpo":
        x, y, m = mm.pad_dpo_rows(batch, SEQ)
        return mm.dpo_step(model, ref, opt, x, y, m, lr, beta=beta)
    X, Y, M = mm.pad_lm_rows(batch, SEQ)
    return mm.lm_step(model, opt, X, Y, M, lr)


def tokens_per_step(stage: str, rows: list[dict], impl: str) -> float:
    """Useful (non-pad) tokens per step, the same for both: pad positions are not throughput."""
    if stage == "dpo":
        per = [len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows]
    else:
        per = [len(r["input_ids"]) for r in rows]
    return sum(per) / len(rows) * BATCH


# ---------------------------------------------------------------------------------------------- breakdown


def breakdown(steps: int) -> str:
    """Profile `steps` pretrain steps of the product loop and split each step's time by kind."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from minillm_core.model import ModelConfig
    from minillm_core.train import TrainConfig, train

    model_cfg = ModelConfig(**MODEL)
    rows = make_rows("pretrain", (1 + steps) * BATCH, model_cfg.vocab_size)
    peak_before = measure_peak()
    walls: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
        ) as prof,
    ):

        def on_log(line: str) -> None:
            # The loop logs each step (log_interval=1): the profiler's step boundary is the same.
            if re.search(r" step \d+/\d+ ", line):
                walls.append(time.perf_counter())
                prof.step()

        cfg = TrainConfig(
            stage="pretrain",
            data_path="bench",
            out_dir=tmp,
            batch_size=BATCH,
            accumulation_steps=1,
            epochs=1,
            learning_rate=LR["pretrain"],
            warmup_steps=0,
            log_interval=1,
            save_interval=10**9,
            resume=False,
            seed=0,
            dtype=DTYPE,
        )
        rep = train(
            cfg, model_cfg, log=on_log, dataset=Rows(rows, "pretrain", model_cfg.vocab_size)
        )
    peak = max(peak_before, measure_peak())
    wall = (walls[-1] - walls[0]) / (len(walls) - 1)  # the profiled steps, warm-up left out
    parts = {
        "matmuls (the work 6N counts)": 0.0,
        "attention kernel (SDPA, fwd + bwd)": 0.0,
        "other ops (norms, RoPE, SwiGLU, softmax/CE, AdamW, clipping, ...)": 0.0,
    }
    names = list(parts)
    for ev in prof.key_averages():
        kind = (
            names[0]
            if ev.key in ("aten::mm", "aten::addmm", "aten::bmm")
            else names[1]
            if "scaled_dot_product" in ev.key
            else names[2]
        )
        parts[kind] += ev.self_cpu_time_total / 1e6 / steps
    parts["outside ops (Python, the loop itself)"] = max(0.0, wall - sum(parts.values()))
    work = 6 * rep.num_parameters * BATCH * SEQ
    mm = parts[names[0]]
    lines = [
        f"pretrain step, {rep.num_parameters / 1e6:.2f}M parameters, batch {BATCH} x {SEQ}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; {DTYPE} matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s; 6N work {work / 1e9:.0f} GFLOP per step",
        "",
        "| part of the step | ms/step | share |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {v * 1e3:.1f} | {v / wall:.0%} |" for k, v in parts.items()]
    lines += [
        f"| whole step (wall) | {wall * 1e3:.1f} | 100% |",
        "",
        f"MFU of this step: {work / wall / peak:.0%}. The matmuls alone run at "
        f"{work / mm / 1e9:.0f} GFLOP/s = {work / mm / peak:.0%} of the peak: the MFU if nothing else "
        f"took any time. With the attention kernel as it is and everything else free: "
        f"{work / (mm + parts[names[1]]) / peak:.0%}.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- parent


def main() -> int:
    global SEQ, DTYPE, PEAK_SECONDS, BATCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, default=3, help="timed steps per trial (after one warm-up)"
    )
    ap.add_argument("--stages", default="pretrain,sft,dpo")
    ap.add_argument("--impls", default="minimind,ours")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate the implementations this many times per stage (ABAB...): load from "
        "other jobs then hits both alike, and the best round shows the quiet speed",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=BATCH, help="rows per step (both)")
    ap.add_argument("--out", default=str(HERE / "results" / "train.json"))
    ap.add_argument(
        "--quick", action="store_true", help="tiny model, 64-token rows: checks the script"
    )
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="train under this autocast dtype (both implementations) and measure the "
        "peak in it: bfloat16 pays off on CPUs with AVX512-BF16 or AMX",
    )
    ap.add_argument(
        "--allocators",
        default="auto",
        help="comma-separated mallocs to run each trial on: auto (tcmalloc where installed, as "
        "scripts/run.sh), system, tcmalloc",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="profile the loop's pretrain step and print where its time goes",
    )
    ap.add_argument(
        "--child", nargs=3, metavar=("IMPL", "STAGE", "WORKDIR"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    DTYPE, BATCH = args.dtype, args.batch
    if args.quick:
        SEQ, PEAK_SECONDS = 64, 0.5
        MODEL.update(QUICK_MODEL)
    if args.breakdown:
        print(breakdown(args.steps))
        return 0
    if args.child:
        impl, stage, work = args.child
        sys.path.insert(0, str(HERE))  # minimind_ref lives beside this script, not in the package
        print("RESULT " + json.dumps(child(impl, stage, args.steps, Path(work))), flush=True)
        return 0

    from minillm_core.model import MiniLLM, ModelConfig
    from minillm_core.train.checkpointer import save_checkpoint

    for alloc in set(args.allocators.split(",")):
        child_env(alloc)  # an unknown or missing allocator stops here, before any trial
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "dtype": DTYPE,
        "batch": BATCH,
        "trials": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(1)
        save_checkpoint(
            work / "init",
            MiniLLM(ModelConfig(**MODEL)),
            {"stage": "pretrain", "tokenizer_hash": "bench"},
        )
        peaks = [(measure_peak(), os.getloadavg()[0])]
        for stage in args.stages.split(","):
            for impl, alloc in trial_order(args.impls, args.allocators, args.rounds):
                cmd = [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(args.steps),
                    "--child",
                    impl,
                    stage,
                    str(work),
                ]
                if args.threads:
                    cmd[2:2] = ["--threads", str(args.threads)]
                if args.quick:
                    cmd[2:2] = ["--quick"]
                cmd[2:2] = ["--dtype", DTYPE, "--batch", str(BATCH)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(alloc))
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(line[7:])
                results["trials"].append(r)
                print(
                    f"{impl:8s} {r['allocator']:8s} {stage:8s} {_rate(r):7.2f} s/step "
                    f"load {r['load_start']:.1f}-{r['load_end']:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
        peaks.append((measure_peak(), os.getloadavg()[0]))
    results["peak_flops"] = max(p for p, _ in peaks)
    results["peaks"] = peaks
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


def trial_order(impls: str, allocators: str, rounds: int) -> list[tuple[str, str]]:
    """(implementation, allocator) of every trial, alternating both (ABAB...) round by round."""
    pairs = [(i, a) for i in impls.split(",") for a in allocators.split(",")]
    return pairs * rounds


def child_env(alloc: str) -> dict[str, str]:
    """The environment of a trial on `alloc`: `auto` and `system` as MINILLM_ALLOCATOR has them,
    `tcmalloc` the same as auto but refused where tcmalloc is not installed."""
    if alloc == "tcmalloc" and allocator.find_tcmalloc() is None:
        sys.exit(
            "--allocators tcmalloc: not installed (Debian: apt-get install libtcmalloc-minimal4)"
        )
    if alloc not in ("auto", "system", "tcmalloc"):
        sys.exit(f"--allocators: unknown allocator {alloc!r} (auto, system, tcmalloc)")
    choice = "system" if alloc == "system" else "auto"
    return allocator.environment({**os.environ, allocator.ENV: choice, "MPLBACKEND": "Agg"})


def attention_flops() -> float:
    """Per token, the score and value products 6N leaves out: 12 x layers x width x context
    (PaLM's MFU, as nanochat counts it; the full T x T, though causal kernels may skip half)."""
    from minillm_core.model import ModelConfig

    cfg = ModelConfig(**MODEL)
    return 12 * cfg.num_hidden_layers * cfg.hidden_size * SEQ


def _rate(trial: dict, cached: bool = False) -> float:
    """Seconds per step of one trial: DPO steps differ in length (grouped batches), so the mean
    over the epoch; pretrain/SFT steps are alike, so the median (robust to a disturbed step)."""
    times = trial["cached_step_times" if cached else "step_times"]
    return sum(times) / len(times) if trial["stage"] == "dpo" else statistics.median(times)


def table(res: dict) -> str:
    """One row per (stage, impl, allocator): the best trial (least disturbed by other jobs) and
    the median."""
    peak = res["peak_flops"]
    lines = [
        f"batch {res.get('batch', 4)} x {SEQ}; "
        f"{res.get('dtype', 'float32')} matmul peak: {peak / 1e9:.1f} GFLOP/s (best 2048^3 matmul; measurements: "
        + ", ".join(f"{p / 1e9:.1f} at load {load:.1f}" for p, load in res["peaks"])
        + ")",
        "",
        "| stage | impl | allocator | s/step best (median of trials) | tokens/s | pairs/s "
        "| MFU (6N) | MFU (6N + attention) | peak RSS MB | max loss diff | load avg during trials |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for t in res["trials"]:
        groups.setdefault((t["stage"], t["impl"], t.get("allocator", "system")), []).append(t)
    for (stage, impl, alloc), trials in groups.items():
        rates = [_rate(t) for t in trials]
        best = min(rates)
        t = trials[rates.index(best)]
        tps = t["tokens_per_step"] / best
        mfu = mfu_attn = ""
        if stage != "dpo":
            mfu = f"{6 * t['num_parameters'] * tps / peak:.1%}"
            mfu_attn = f"{(6 * t['num_parameters'] + attention_flops()) * tps / peak:.1%}"
        diff = ""
        other = next((v for k, v in groups.items() if k[:2] == (stage, "minimind")), None)
        if impl.startswith("ours") and other:
            k = min(len(t["losses"]), len(other[0]["losses"]))
            diff = f"{max(abs(a - b) for a, b in zip(t['losses'][:k], other[0]['losses'][:k])):.1e}"
        pairs = f"{BATCH / best:.3f}" if stage == "dpo" else ""
        loads = ", ".join(f"{x['load_start']:.1f}-{x['load_end']:.1f}" for x in trials)
        lines.append(
            f"| {stage} | {impl} | {alloc} | {best:.2f} ({statistics.median(rates):.2f}) | {tps:.0f} "
            f"| {pairs} | "
            f"{mfu} | {mfu_attn} | {max(x['peak_rss_mb'] for x in trials):.0f} | {diff} | {loads} |"
        )
        if stage == "dpo" and t.get("cached_step_times"):
            c = min(_rate(x, cached=True) for x in trials)
            lines.append(
                f"| dpo, epoch 2 (cached reference) | {impl} | {alloc} | {c:.2f} | "
                f"{t['tokens_per_step'] / c:.0f} | {BATCH / c:.3f} | | | | | |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
