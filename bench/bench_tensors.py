"""Benchmark of the token tensors stage on the real Chinese corpus (issue 5).

Measures, in one run, with the 1-minute load average beside each figure (the machine is shared):

1. Export throughput: `export_tokens` (read + parse JSONL, encode, write shards, end to end)
   against plain tiktoken `encode_ordinary_batch` of the same texts already in memory (the
   tokenizer's own speed, no I/O), both with the same thread count, interleaved `--repeats` times;
   the median of each is reported. Tokens counted are text tokens (BOS excluded) for both.
2. Peak RSS, each in a fresh subprocess, on the mix and on the mix repeated `--scale` times:
   `export_tokens` against the seed's approach (the whole JSONL tokenized into Python lists).
3. Padding fraction of both pretrain layouts at max_length 512 and 2048, and of the padded layout
   when the collator pads each random batch of 4 only to its longest row.
4. Data loader time per batch (TokenDataset + DataLoader, batch 4, seq 512, shuffled) against a
   forward+backward step of `minillm_core.model.MiniLLM` at its default size (hidden 512, 8
   layers) on the same batch shape.

Usage (from the project root; the corpus and all outputs live under /tmp, never in the repo):
    .venv/bin/python bench/bench_tensors.py [--corpus /tmp/minillm-corpus] [--tokenizer DIR]
It builds the corpus with /work/shared/corpus/build_corpus.sh if `--corpus` has no corpus_zh.jsonl,
trains a tokenizer (`--vocab-size`, capped at `--tokenizer-chars` characters) unless `--tokenizer`
is given, prints a markdown table and writes the numbers as JSON to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUILD_CORPUS = Path("/work/shared/corpus/build_corpus.sh")
SECTIONS = ("throughput", "padding", "rss", "loader")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def ensure_corpus(corpus_dir: Path) -> Path:
    jsonl = corpus_dir / "corpus_zh.jsonl"
    if not jsonl.exists():
        subprocess.run(["bash", str(BUILD_CORPUS), str(corpus_dir)], check=True)
    return jsonl


def shuffled_mix(corpus: Path, out: Path, scale: int = 1) -> Path:
    """The corpus in a fixed random order (what the mix stage hands over), `scale` times."""
    if out.exists():
        return out
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(scale):
            f.writelines(lines)
    tmp.rename(out)
    return out


def proc_status_mib(key: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, MiB. Not getrusage's ru_maxrss: on Linux that
    survives exec, so a child started from a big parent would report the parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{key} not in /proc/self/status")


# ----------------------------------------------------------------------------- child processes


def child(mode: str, mix: Path, tok_dir: Path, out: Path, threads: int) -> dict:
    """Run in a fresh interpreter so ru_maxrss is this job's peak alone."""
    from minillm_core.tokenizer import load_tokenizer
    from minillm_core.tokens import TensorConfig, export_tokens

    base = proc_status_mib("VmRSS")  # after the imports (torch, tiktoken, numpy)
    t0 = time.perf_counter()
    if mode == "export":
        rep = export_tokens(
            TensorConfig(max_length=2048, num_threads=threads),
            "pretrain",
            mix,
            tok_dir,
            out,
            log=lambda m: None,
        )
        tokens = rep.tokens
    else:  # the seed: every text tokenized into memory before training starts
        tok = load_tokenizer(tok_dir)
        bos = tok.get_bos_token_id()
        texts = [json.loads(line)["text"] for line in open(mix, encoding="utf-8")]
        rows = tok.encode(texts, prepend=bos, num_threads=threads)
        tokens = sum(map(len, rows))
    return {
        "mode": mode,
        "peak_rss_mib": round(proc_status_mib("VmHWM"), 1),
        "start_rss_mib": round(base, 1),
        "tokens": tokens,
        "seconds": round(time.perf_counter() - t0, 2),
        "load": load(),
    }


def run_child(mode: str, mix: Path, tok_dir: Path, out: Path, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--mix",
        str(mix),
        "--tokenizer",
        str(tok_dir),
        "--child-out",
        str(out),
        "--threads",
        str(threads),
    ]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- measurements


def throughput(mix: Path, tok_dir: Path, work: Path, threads: int, repeats: int) -> dict:
    from minillm_core.tokenizer import load_tokenizer
    from minillm_core.tokens import TensorConfig, export_tokens

    tok = load_tokenizer(tok_dir)
    texts = [json.loads(line)["text"] for line in open(mix, encoding="utf-8")]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    base, ours = [], []
    for _ in range(repeats):  # interleaved, so a burst of load from other users hits both
        la = load()
        t0 = time.perf_counter()
        ids = tok.enc.encode_ordinary_batch(texts, num_threads=threads)
        dt = time.perf_counter() - t0
        text_tokens = sum(map(len, ids))
        del ids
        base.append({"seconds": dt, "tokens_per_s": text_tokens / dt, "load": la})
        la = load()
        rep = export_tokens(
            TensorConfig(max_length=2048, num_threads=threads),
            "pretrain",
            mix,
            tok_dir,
            work / "pretrain_packed_2048",
            log=lambda m: None,
        )
        dt = rep.metadata["seconds"]
        docs = rep.metadata["samples"] - rep.metadata["dropped_samples"]
        assert rep.tokens - docs == text_tokens, "export and tiktoken must see the same text tokens"
        ours.append({"seconds": dt, "tokens_per_s": text_tokens / dt, "load": la})
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    return {
        "docs": len(texts),
        "text_bytes": nbytes,
        "text_tokens": text_tokens,
        "threads": threads,
        "tiktoken": base,
        "export": ours,
        "tiktoken_tokens_per_s": med(base, "tokens_per_s"),
        "export_tokens_per_s": med(ours, "tokens_per_s"),
        "ratio": med(ours, "tokens_per_s") / med(base, "tokens_per_s"),
        "load": [x["load"] for x in base + ours],
    }


def padding(mix: Path, tok_dir: Path, work: Path, threads: int) -> dict:
    from minillm_core.tokens import TensorConfig, TokenDataset, export_tokens

    out = {}
    for L in (512, 2048):
        la = load()
        rep = export_tokens(
            TensorConfig(max_length=L, layout="padded", num_threads=threads),
            "pretrain",
            mix,
            tok_dir,
            work / f"pretrain_padded_{L}",
            log=lambda m: None,
        )
        md = rep.metadata
        # The collator pads a batch to its longest row, not to max_length: simulate shuffled
        # batches of 4 over the stored row lengths.
        ds = TokenDataset(rep.path)
        lengths = []
        for k in range(len(ds.meta["shards"])):
            rows = ds.shard_arrays(k)[""][1]
            lengths.extend((rows[:, 1] - 1).tolist())
        random.Random(0).shuffle(lengths)
        real = padded = 0
        for i in range(0, len(lengths) - 3, 4):
            b = lengths[i : i + 4]
            real += sum(b)
            padded += 4 * max(b)
        out[L] = {
            "packed": md["padding_fraction_packed"],
            "padded": md["padding_fraction_padded"],
            "padded_batch4_longest": 1 - real / padded,
            "truncated_padded": md["truncated_samples"],
            "truncated_tokens_padded": md["truncated_tokens"],
            "longest": md["longest_sample"],
            "histogram": md["length_histogram"],
            "load": la,
        }
    return out


def loader_vs_step(mix: Path, tok_dir: Path, work: Path, threads: int, batches: int) -> dict:
    import torch

    from minillm_core.tokens import TensorConfig, TokenDataset, export_tokens

    rep = export_tokens(
        TensorConfig(max_length=512, num_threads=threads),
        "pretrain",
        mix,
        tok_dir,
        work / "pretrain_packed_512",
        log=lambda m: None,
    )
    ds = TokenDataset(rep.path)
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=g, collate_fn=ds.collate_fn, num_workers=0
    )
    la = load()
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    per_batch = (time.perf_counter() - t0) / batches
    assert batch["input_ids"].shape == (4, 512)

    from minillm_core.model import MiniLLM, ModelConfig

    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=ds.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        t = time.perf_counter()
        logits = model(batch["input_ids"])
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step()  # warm-up (allocations, first-call overheads)
    sla = load()
    steps = [step() for _ in range(2)]
    step_s = statistics.median(steps)
    return {
        "loader_ms_per_batch": per_batch * 1e3,
        "loader_load": la,
        "step_s": step_s,
        "step_load": sla,
        "ratio": per_batch / step_s,
        "params": model.num_parameters(),
        "torch_threads": torch.get_num_threads(),
    }


def rss(mix: Path, tok_dir: Path, work: Path, threads: int, scale: int) -> dict:
    big = shuffled_mix(mix, work / f"mix_x{scale}.jsonl", scale) if scale > 1 else mix
    out = {}
    for name, m in (("x1", mix), (f"x{scale}", big)):
        out[name] = {
            "bytes": m.stat().st_size,
            "export": run_child("export", m, tok_dir, work / f"rss_{name}", threads),
            "seed_in_memory": run_child("seed", m, tok_dir, work / f"rss_{name}", threads),
        }
    return out


# ----------------------------------------------------------------------------- report


def table(r: dict) -> str:
    t, p, s, m = r["throughput"], r["padding"], r["rss"], r["loader"]
    la = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
    lines = [
        f"Corpus: {t['docs']:,} documents, {t['text_bytes'] / 1e6:.1f} MB of text, {t['text_tokens']:,} text "
        f"tokens (vocab {r['vocab_size']}); {t['threads']} encoding threads on {os.cpu_count()} cores.",
        "",
        "| measure | value | load avg (1 min) |",
        "| --- | --- | --- |",
        f"| tiktoken `encode_ordinary_batch`, texts in memory (median of {len(t['tiktoken'])}) | "
        f"{t['tiktoken_tokens_per_s'] / 1e6:.2f} M tokens/s | {la([x['load'] for x in t['tiktoken']])} |",
        f"| `export_tokens` pretrain, end to end: read, encode, write (median of {len(t['export'])}) | "
        f"{t['export_tokens_per_s'] / 1e6:.2f} M tokens/s = **{t['ratio']:.0%} of tiktoken** | "
        f"{la([x['load'] for x in t['export']])} |",
    ]
    for key, what in (
        ("export", "`export_tokens`"),
        ("seed_in_memory", "seed-style, whole JSONL tokenized in memory"),
    ):
        for name, v in s.items():
            c = v[key]
            lines.append(
                f"| peak RSS, {what}, mix {name} ({v['bytes'] / 1e6:.0f} MB) | "
                f"{c['peak_rss_mib']:.0f} MiB ({c['peak_rss_mib'] - c['start_rss_mib']:.0f} MiB "
                f"above the {c['start_rss_mib']:.0f} MiB after imports) | {c['load']:.2f} |"
            )
    for L, v in p.items():
        lines.append(
            f"| padding at max_length {L}: packed / padded (to max_length) / padded, batch of 4 "
            f"padded to its longest | {v['packed']:.2%} / {v['padded']:.1%} / "
            f"{v['padded_batch4_longest']:.1%} | {v['load']:.2f} |"
        )
        lines.append(
            f"| truncated by the padded layout at {L} | {v['truncated_padded']:,} documents, "
            f"{v['truncated_tokens_padded']:,} tokens (longest {v['longest']:,}) | {v['load']:.2f} |"
        )
    lines += [
        f"| data loader, batch 4 x 512, shuffled, main process | {m['loader_ms_per_batch']:.2f} ms/batch | "
        f"{m['loader_load']:.2f} |",
        f"| forward+backward+AdamW, MiniLLM default ({m['params'] / 1e6:.1f} M params), batch 4 x 512, "
        f"CPU float32, {m['torch_threads']} threads | {m['step_s']:.2f} s/step; loader = "
        f"**{m['ratio'] * 100:.2g}% of the step** | {m['step_load']:.2f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/minillm-corpus"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/minillm-bench-tensors"))
    ap.add_argument(
        "--tokenizer", type=Path, help="an existing tokenizer directory (else one is trained)"
    )
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument(
        "--tokenizer-chars",
        type=int,
        default=600_000,
        help="characters to train the tokenizer on (the pure-Python trainer is slow)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--scale", type=int, default=4, help="the RSS run repeats the mix this many times"
    )
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--json", type=Path, default=Path("bench/results/tensors.json"))
    ap.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="measure only these; the others are kept from an existing --json file",
    )
    ap.add_argument("--child", choices=("export", "seed"), help=argparse.SUPPRESS)
    ap.add_argument("--mix", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.mix, a.tokenizer, a.child_out, a.threads)))
        return 0

    a.work.mkdir(parents=True, exist_ok=True)
    mix = shuffled_mix(ensure_corpus(a.corpus), a.work / "mix.jsonl")
    tok_dir = a.tokenizer
    if tok_dir is None:
        from minillm_core.tokenizer import TokenizerConfig, train_tokenizer

        tok_dir = a.work / f"tok{a.vocab_size}"
        if not (tok_dir / "tokenizer_meta.json").exists():
            train_tokenizer(
                TokenizerConfig(
                    vocab_size=a.vocab_size, max_chars_total=a.tokenizer_chars, heldout_paths=[]
                ),
                [mix],
                tok_dir,
            )
    from minillm_core.tokenizer import load_tokenizer

    r = (
        json.loads(a.json.read_text())
        if a.json.exists() and set(a.sections) != set(SECTIONS)
        else {}
    )
    r.update({"vocab_size": load_tokenizer(tok_dir).get_vocab_size(), "started_load": load()})
    jobs = {
        "throughput": lambda: throughput(mix, tok_dir, a.work, a.threads, a.repeats),
        "padding": lambda: padding(mix, tok_dir, a.work, a.threads),
        "rss": lambda: rss(mix, tok_dir, a.work, a.threads, a.scale),
        "loader": lambda: loader_vs_step(mix, tok_dir, a.work, a.threads, a.batches),
    }
    for name in SECTIONS:
        if name in a.sections:
            print(f"{name} ...", file=sys.stderr)
            r[name] = jobs[name]()
    r["table"] = table(r)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n")
    print(r["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
