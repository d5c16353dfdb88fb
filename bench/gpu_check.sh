#!/usr/bin/env bash
# GPU check in one script (goal: under 5 minutes on one H100/H200-class card):
#   1. the three training stages (pretrain -> SFT -> DPO) with the gpu profile on the shipped
#      samples, through the core library's commands (`python -m minillm_cli.main ...`): a GPU node
#      needs torch and this package, not Dagster;
#   2. with two or more GPUs, the pretrain stage again as a two-rank DDP run under torchrun;
#   3. a throughput benchmark in bfloat16 (autocast, torch.compile, fused AdamW, the training
#      step of minillm_core.train): tokens/s and model FLOPs utilisation for the default model
#      (hidden 512, 8 layers) and a larger one (hidden 1024, 16 layers);
# then prints one table (also written to $OUT/gpu_check.md, raw numbers in $OUT/gpu_check.json).
#
#   bench/gpu_check.sh                     # on a GPU machine
#   bench/gpu_check.sh --cpu-logic-check   # every step on the CPU with tiny sizes: checks this
#                                          # script's plumbing, measures nothing
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (default a temporary folder),
# STAGE_STEPS (optimizer steps per stage, default 20), BENCH_STEPS (timed steps, default 20).
#
# Without a GPU (and without --cpu-logic-check) it says so and exits 0.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
MODE=gpu
case "${1:-}" in
  --cpu-logic-check) MODE=cpu ;;
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  "") ;;
  *) echo "gpu_check: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

if ! ngpu="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)"; then
  echo "gpu_check: $PY cannot import torch; install the project first (scripts/setup.sh)" >&2
  exit 1
fi
if [ "$MODE" = gpu ] && [ "$ngpu" -eq 0 ]; then
  smi="no nvidia-smi on PATH"
  command -v nvidia-smi >/dev/null 2>&1 && smi="nvidia-smi: $(nvidia-smi -L 2>&1 | head -1)"
  echo "gpu_check: no NVIDIA GPU visible to torch (torch.cuda.is_available() is False; $smi):" \
       "nothing to measure. On a CPU machine, --cpu-logic-check runs the same steps tiny."
  exit 0
fi

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/minillm-gpu-check.XXXXXX")}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
T0=$(date +%s)

if [ "$MODE" = gpu ]; then
  STEPS="${STAGE_STEPS:-20}"
  PROFILE=(--profile gpu)
  DEVICE_FLAGS=()
  MODEL_FLAGS=()
  MIX_PROFILE=gpu
else
  # The same commands on the CPU, tiny: float32 (bf16 pays off only on CPUs with bf16
  # instructions), no compile, a 2-layer model, 2 steps.
  STEPS=2
  PROFILE=(--profile gpu)
  DEVICE_FLAGS=(--device cpu --dtype float32 --compile false --batch_size 2 --accumulation_steps 2)
  MODEL_FLAGS=(--hidden_size 64 --num_hidden_layers 2 --num_attention_heads 4 --num_key_value_heads 2)
  MIX_PROFILE=smoke  # the smoke quotas: the full ones take minutes on a small CPU
fi

cli() { "$PY" -m minillm_cli.main "$@"; }

# Run a stage, keep its printed metadata (the last JSON object on stdout) as one result line.
stage() {
  local name="$1"; shift
  local t=$(date +%s.%N) log="$OUT/$name.log"
  if ! "$@" > "$log.out" 2> "$log"; then
    echo "gpu_check: $name failed; last lines of $log:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  "$PY" - "$name" "$t" "$log.out" >> "$RESULTS" <<'EOF'
import json, sys, time
name, t0, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
text = open(path, encoding="utf-8").read()
meta = json.loads(text[text.rindex("\n{") + 1 if "\n{" in text else text.index("{"):])
print(json.dumps({"kind": "stage", "name": name, "wall_s": round(time.time() - t0, 1),
                  "steps": meta["steps"], "final_loss": meta["final_loss"],
                  "tokens_per_s": meta["tokens_per_s"], "world_size": meta.get("world_size", 1),
                  "device": meta["device"], "dtype": meta["dtype"]}))
EOF
  echo "gpu_check: $name done ($(tail -1 "$RESULTS"))"
}

# ---- 1. data: mixes from the shipped samples, tokenizer, token tensors ----------------------------
mkdir -p "$OUT/empty_sources"
cli mix --profile "$MIX_PROFILE" --sources-dir "$OUT/empty_sources" --samples-dir "$ROOT/dataset" \
  --output-dir "$OUT/processed" > "$OUT/mix.log" 2>&1
cli tokenizer --data_path "$OUT/processed/pretrain_chinese.jsonl" "$OUT/processed/sft_chinese.jsonl" \
  --out_dir "$OUT/tokenizer" $([ "$MODE" = cpu ] && echo "--vocab_size 512") > "$OUT/tokenizer.log" 2>&1
for s in pretrain sft dpo; do
  cli tokens --stage "$s" --input "$OUT/processed/${s}_chinese.jsonl" --output "$OUT/tokens/$s" \
    --tokenizer "$OUT/tokenizer" --profile gpu > "$OUT/tokens_$s.log" 2>&1
done
echo "gpu_check: data ready in $(( $(date +%s) - T0 )) s"

# ---- 2. the three stages, gpu profile ------------------------------------------------------------
common=(--max_steps "$STEPS" --log_interval 5 --save_interval 1000 "${DEVICE_FLAGS[@]}")
stage pretrain cli pretrain "${PROFILE[@]}" --data_path "$OUT/tokens/pretrain" --out_dir "$OUT/pretrain" \
  "${common[@]}" "${MODEL_FLAGS[@]}" --vocab_size "$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$OUT/tokens/pretrain/index.json")"
stage sft cli sft "${PROFILE[@]}" --data_path "$OUT/tokens/sft" --out_dir "$OUT/sft" \
  --pretrained_path "$OUT/pretrain" "${common[@]}"
stage dpo cli dpo "${PROFILE[@]}" --data_path "$OUT/tokens/dpo" --out_dir "$OUT/dpo" \
  --pretrained_path "$OUT/sft" "${common[@]}"

# ---- 3. two ranks (DDP) when there are two GPUs ----------------------------------------------------
if [ "$MODE" = gpu ] && [ "$ngpu" -ge 2 ]; then
  stage pretrain_ddp2 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 --max_restarts 0 \
    -m minillm_cli.train pretrain "${PROFILE[@]}" --data_path "$OUT/tokens/pretrain" \
    --out_dir "$OUT/pretrain_ddp2" "${common[@]}"
elif [ "$MODE" = cpu ]; then
  # the same command with gloo on the CPU: checks the plumbing only
  OMP_NUM_THREADS=1 stage pretrain_ddp2 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
    --max_restarts 0 -m minillm_cli.train pretrain "${PROFILE[@]}" \
    --data_path "$OUT/tokens/pretrain" --out_dir "$OUT/pretrain_ddp2" "${common[@]}" "${MODEL_FLAGS[@]}"
else
  echo "gpu_check: one GPU: no DDP run"
fi

# ---- 4. throughput benchmark -----------------------------------------------------------------------
"$PY" - "$MODE" "${BENCH_STEPS:-20}" >> "$RESULTS" <<'EOF'
"""bfloat16 training-step throughput and model FLOPs utilisation.

The step is the training loop's: bf16 autocast with float32 weights, torch.compile, the
pretrain objective, clipping at 1.0, the loop's fused AdamW (make_optimizer). FLOPs per token
are PaLM's count: 6 x parameters (every matmul weight; the tied head counted once) + 12 x layers
x hidden x sequence (attention scores and values), forward and backward. MFU divides by the
card's dense bf16 peak from its data sheet when the card is known, and is also shown against
the best bf16 matmul measured here (an 8192^3 product).
"""
import json, sys, time
import torch
from minillm_core.model import MiniLLM, ModelConfig
from minillm_core.train import TrainConfig
from minillm_core.train.objectives import pretrain_loss
from minillm_core.train.state import make_optimizer

mode, steps = sys.argv[1], int(sys.argv[2])
gpu = mode == "gpu"
dev = torch.device("cuda" if gpu else "cpu")
# dense bf16 peaks (FLOP/s) of common cards, from their data sheets (SXM for H100/H200)
PEAKS = {"H200": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
         "H100": 989.4e12, "GH200": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
         "A10G": 70e12, "A10": 125e12, "RTX 4090": 165.2e12}
name = torch.cuda.get_device_name(dev) if gpu else "cpu"
peak_sheet = next((v for k, v in PEAKS.items() if k in name), None)


def matmul_peak() -> float:
    n = 8192 if gpu else 512
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if gpu else torch.float32)
    b = torch.randn_like(a)
    best = 0.0
    for _ in range(5):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        if gpu:
            torch.cuda.synchronize()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t))
    return best


def bench(label, cfg: ModelConfig, batch: int, seq: int) -> dict:
    torch.manual_seed(0)
    model = MiniLLM(cfg).to(dev).train()
    opt = make_optimizer(model, TrainConfig(stage="pretrain", learning_rate=1e-4))
    fwd = torch.compile(model) if gpu else model
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=dev)
    data = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
            loss, _ = pretrain_loss(fwd, data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t = time.perf_counter()
    for _ in range(3):  # compile + warm-up
        step()
    if gpu:
        torch.cuda.synchronize()
    warm = time.perf_counter() - t
    n_steps = steps if gpu else 2
    t = time.perf_counter()
    for _ in range(n_steps):
        loss = step()
    if gpu:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / n_steps
    n = model.num_parameters()
    tps = batch * seq / dt
    flops_tok = 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq
    mem = torch.cuda.max_memory_allocated(dev) / 2**30 if gpu else None
    if gpu:
        torch.cuda.reset_peak_memory_stats(dev)
    return {"kind": "bench", "name": label, "params_M": round(n / 1e6, 2), "batch": batch, "seq": seq,
            "s_per_step": round(dt, 4), "tokens_per_s": round(tps), "warmup_s": round(warm, 1),
            "tflops": round(flops_tok * tps / 1e12, 1),
            "mfu_sheet": round(flops_tok * tps / peak_sheet, 3) if peak_sheet else None,
            "mfu_measured": round(flops_tok * tps / PEAK, 3), "peak_mem_GiB": round(mem, 1) if mem else None,
            "loss": round(float(loss.detach()), 3), "device": name}


PEAK = matmul_peak()
print(json.dumps({"kind": "peak", "device": name, "sheet_tflops": peak_sheet and peak_sheet / 1e12,
                  "measured_tflops": round(PEAK / 1e12, 1), "torch": torch.__version__}))
if gpu:
    runs = [("default 512x8", ModelConfig(vocab_size=6400), 32, 512),
            ("large 1024x16", ModelConfig(vocab_size=6400, hidden_size=1024, num_hidden_layers=16,
                                          num_attention_heads=16, num_key_value_heads=8), 32, 1024)]
else:
    runs = [("default (tiny on cpu)", ModelConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2), 2, 64)]
for label, cfg, b, s in runs:
    print(json.dumps(bench(label, cfg, b, s)), flush=True)
EOF

# ---- 5. the table ------------------------------------------------------------------------------------
"$PY" - "$RESULTS" "$OUT" "$(( $(date +%s) - T0 ))" "$MODE" <<'EOF'
import datetime, json, sys
path, out, total, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
peak = next(r for r in rows if r["kind"] == "peak")
lines = [f"gpu_check {datetime.date.today()} on {peak['device']} (torch {peak['torch']}), "
         f"{total} s in all{' -- CPU LOGIC CHECK, NOT A MEASUREMENT' if mode == 'cpu' else ''}", "",
         f"bf16 peak: data sheet {peak['sheet_tflops'] or 'unknown'} TFLOP/s, measured matmul "
         f"{peak['measured_tflops']} TFLOP/s", "",
         "| stage | processes | steps | final loss | tokens/s | wall s |", "| --- | --- | --- | --- | --- | --- |"]
for r in rows:
    if r["kind"] == "stage":
        lines.append(f"| {r['name']} | {r['world_size']} | {r['steps']} | {r['final_loss']:.4f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['wall_s']} |")
lines += ["", "| model | params (M) | batch x seq | s/step | tokens/s | TFLOP/s | MFU (data sheet) | "
          "MFU (measured peak) | peak mem GiB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in rows:
    if r["kind"] == "bench":
        sheet = f"{r['mfu_sheet']:.0%}" if r["mfu_sheet"] is not None else "n/a"
        lines.append(f"| {r['name']} | {r['params_M']} | {r['batch']} x {r['seq']} | {r['s_per_step']} | "
                     f"{r['tokens_per_s']:,} | {r['tflops']} | {sheet} | {r['mfu_measured']:.0%} | "
                     f"{r['peak_mem_GiB'] or ''} |")
text = "\n".join(lines)
print("\n" + text)
open(f"{out}/gpu_check.md", "w", encoding="utf-8").write(text + "\n")
json.dump(rows, open(f"{out}/gpu_check.json", "w"), indent=1)
print(f"\n(results in {out})")
EOF
