"""Benchmark the data mix: throughput (MB/s of source JSONL) and peak RSS at 0.1x, 1x and 10x.

    .venv/bin/python bench/bench_mix.py                  # 10 MB / 100 MB / 1 GB of sources
    .venv/bin/python bench/bench_mix.py --base-mb 20     # quicker: 2 / 20 / 200 MB
    .venv/bin/python bench/bench_mix.py --write-doc      # and put the table in docs/mix.md

Synthetic sources (seeded, written under /tmp/minillm-bench, never committed) imitate the real
layouts in the proportions of the seed's mix: Belle/ShareGPT/messages/Alpaca-style general data,
multiple-choice knowledge, GSM8K-style math, nanochat identity lines and preference pairs (three
DPO layouts), with a few bad lines (0.1%) so the error path is exercised too. Each size is built
in its own subprocess (a clean peak RSS, `ru_maxrss`) with the default config (the seed's quotas:
460K/100K/8K/2x1K/60K), all three outputs. Throughput = source bytes read by the three builds /
wall time; the load average is printed beside each figure because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from minillm_core.artifacts import write_text

ROOT = Path(__file__).resolve().parents[1]
FILE_MB = 256  # split sources into files of about this size, as corpora are shipped


def _sentences() -> list[str]:
    # Real sentences from the shipped samples, recombined: realistic character statistics.
    out = []
    for p in sorted((ROOT / "dataset").glob("*.json*")):
        for piece in p.read_text(encoding="utf-8").replace("\\n", "。").split("。"):
            piece = piece.strip(' "{}[],:\n')
            if 6 <= len(piece) <= 80 and '"' not in piece and "\\" not in piece:
                out.append(piece + "。")
    return out


def _vary(rng: random.Random, sentence: str) -> str:
    # One character in 20 replaced: recombined sample sentences would otherwise share long
    # windows across records, which real corpora do not (the decontamination would drop most).
    chars = list(sentence)
    for i in range(rng.randrange(20), len(chars), 20):
        chars[i] = chr(0x4E00 + rng.randrange(20000))
    return "".join(chars)


def _record(rng: random.Random, kind: str, s: list[str], i: int) -> dict:
    def para(lo: int, hi: int) -> str:
        # Line breaks between some sentences, as in real answers (paragraphs, lists): escaped
        # in the JSON, they are work for the parser and the line checks.
        n = rng.randint(lo, hi)
        return "".join(
            _vary(rng, rng.choice(s)) + ("\n" if k < n - 1 and rng.random() < 0.3 else "")
            for k in range(n)
        )

    q, a = para(1, 3), para(6, 16)  # about 1 KB a line, as minimind and Belle files
    if kind == "belle":
        return {"instruction": q, "input": "", "output": a}
    if kind == "sharegpt":
        return {
            "id": f"s{i}",
            "conversations": [
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
                {"from": "human", "value": para(1, 2)},
                {"from": "gpt", "value": para(2, 5)},
            ],
        }
    if kind == "messages":
        return {
            "conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        }
    if kind == "mcq":
        return {
            "question": q,
            "A": para(1, 1),
            "B": para(1, 1),
            "C": para(1, 1),
            "D": para(1, 1),
            "answer": rng.choice("ABCD"),
        }
    if kind == "math":
        n = rng.randint(2, 999)
        return {"question": q, "answer": f"{a}\n{n}-1=<<{n}-1={n - 1}>>{n - 1}\n#### {n - 1}"}
    if kind == "identity":
        return [
            {"role": "user", "content": q},
            {"role": "assistant", "content": "我是{{name}}。" + a},
        ]
    if kind == "dpo_messages":
        u = {"role": "user", "content": q}
        return {
            "chosen": [u, {"role": "assistant", "content": a}],
            "rejected": [u, {"role": "assistant", "content": para(1, 3)}],
        }
    return {"prompt": q, "chosen": a, "rejected": para(1, 3)}


# category -> (share of bytes, [(file stem, record kind)])
LAYOUT = {
    "general": (0.78, [("belle", "belle"), ("sharegpt", "sharegpt"), ("sft", "messages")]),
    "knowledge": (0.08, [("cmmlu", "mcq")]),
    "math": (0.02, [("gsm8k", "math")]),
    "preference": (0.12, [("dpo", "dpo_messages"), ("pairs", "dpo_prompt")]),
}


def generate(root: Path, total_mb: float, seed: int = 0) -> int:
    """Write the synthetic sources under `root` (skipped when already there); returns bytes."""
    marker = root / ".complete.json"
    want = {"total_mb": total_mb, "seed": seed, "version": 4}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return sum(p.stat().st_size for p in root.rglob("*.jsonl"))
    shutil.rmtree(root, ignore_errors=True)
    rng, s = random.Random(seed), _sentences()
    written = 0
    for cat, (share, files) in LAYOUT.items():
        per_file = total_mb * share / len(files) * 1e6
        for stem, kind in files:
            parts = max(1, round(per_file / (FILE_MB * 1e6)))
            for part in range(parts):
                path = root / cat / f"{stem}-{part:03d}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                size, i = 0, 0
                with open(path, "w", encoding="utf-8", buffering=1 << 20) as f:
                    while size < per_file / parts:
                        i += 1
                        line = json.dumps(_record(rng, kind, s, i), ensure_ascii=False) + "\n"
                        if i % 1000 == 999:
                            line = line[: len(line) // 2] + "\n"  # a truncated line: 0.1% bad
                        f.write(line)
                        size += len(line.encode("utf-8"))
                written += size
    ident = root / "identity_conversations.jsonl"
    with open(ident, "w", encoding="utf-8") as f:
        for i in range(2000):
            f.write(json.dumps(_record(rng, "identity", s, i), ensure_ascii=False) + "\n")
    written += ident.stat().st_size
    marker.write_text(json.dumps(want))
    return written


def run_one(src: Path, out: Path) -> dict:
    """Build the three outputs from `src` (called in a fresh subprocess); print one JSON line."""
    from minillm_core.data import MixConfig, build_mix

    cfg = MixConfig(sources_dir=src, samples_dir=src / "no-samples")
    t0 = time.monotonic()
    per = {}
    for output in ("pretrain", "sft", "dpo"):
        t = time.monotonic()
        r = build_mix(cfg, output, out, log=lambda _m: None)
        per[output] = {
            "seconds": round(time.monotonic() - t, 2),
            "source_bytes": r.metadata["source_bytes"],
            "records": r.records,
            "out_bytes": r.metadata["bytes"],
            "scan_seconds": r.metadata["scan_seconds"],
            "scan_cpu_seconds": r.metadata["scan_cpu_seconds"],
            "decontam_seconds": r.metadata.get("decontam_cpu_seconds", 0.0),
            "index_bytes": r.metadata.get("dedup_index_bytes", 0),
            "index_per_distinct": r.metadata.get("dedup_bytes_per_distinct", 0.0),
        }
    seconds = time.monotonic() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu.ru_utime + cpu.ru_stime,
        "source_bytes": sum(p["source_bytes"] for p in per.values()),
        "scan_seconds": sum(p["scan_seconds"] for p in per.values()),
        "scan_cpu_seconds": sum(p["scan_cpu_seconds"] for p in per.values()),
        "decontam_seconds": sum(p["decontam_seconds"] for p in per.values()),
        "index_per_distinct": max(p["index_per_distinct"] for p in per.values()),
        "out_bytes": sum(p["out_bytes"] for p in per.values()),
        "peak_rss_mb": rss_kb / 1024,
        "outputs": per,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-mb", type=float, default=100.0, help="size of the 1x source set")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/minillm-bench"))
    ap.add_argument("--keep-outputs", action="store_true")
    ap.add_argument(
        "--write-doc", action="store_true", help="replace the table in docs/mix.md with this run's"
    )
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run_one(args.run, args.out)))
        return 0
    rows = []
    for scale in args.scales:
        mb = args.base_mb * scale
        src = args.work / f"src-{mb:g}MB"
        t = time.monotonic()
        size = generate(src, mb)
        print(
            f"sources {scale:g}x: {size / 1e6:.0f} MB in {src} "
            f"({time.monotonic() - t:.0f}s to generate or check)",
            file=sys.stderr,
            flush=True,
        )
        out = args.work / f"out-{mb:g}MB"
        shutil.rmtree(out, ignore_errors=True)
        load0 = os.getloadavg()[0]
        proc = subprocess.run(
            [sys.executable, __file__, "--run", str(src), "--out", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(scale=scale, input_mb=size / 1e6, load=(load0, os.getloadavg()[0]))
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        if not args.keep_outputs:
            shutil.rmtree(out, ignore_errors=True)
    table = _table(rows)
    print("\n" + table)
    if args.write_doc:
        doc = ROOT / "docs" / "mix.md"
        text = doc.read_text(encoding="utf-8")
        head, _, rest = text.partition(DOC_BEGIN)
        _, _, tail = rest.partition(DOC_END)
        write_text(doc, f"{head}{DOC_BEGIN}\n{table}\n{DOC_END}{tail}")
    return 0


DOC_BEGIN, DOC_END = "<!-- bench_mix:begin -->", "<!-- bench_mix:end -->"


def _table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["scale"] == 1.0), rows[0])
    out = [
        f"Measured {time.strftime('%Y-%m-%d')}: all three outputs at the seed's quotas; "
        f"{os.cpu_count()} CPUs (shared), one process, python {sys.version.split()[0]}.",
        "",
    ]
    out.append(
        "| scale | sources (MB) | source read (MB) | written (MB) | wall (s) | CPU (s) "
        "| scan MB/s (wall) | scan MB/s (CPU) | end-to-end MB/s (wall) "
        "| end-to-end MB/s (CPU) | decontam (CPU s) | index B/distinct | peak RSS (MB) | RSS / 1x "
        "| load avg (start, end) |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        read = r["source_bytes"] / 1e6
        out.append(
            f"| {r['scale']:g}x | {r['input_mb']:.0f} | {read:.0f} | "
            f"{r['out_bytes'] / 1e6:.0f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{read / r['scan_seconds']:.1f} | {read / r['scan_cpu_seconds']:.1f} | "
            f"{read / r['seconds']:.1f} | "
            f"{read / r['cpu_seconds']:.1f} | {r['decontam_seconds']:.1f} | "
            f"{r['index_per_distinct']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | "
            f"{r['load'][0]:.2f}, {r['load'][1]:.2f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
