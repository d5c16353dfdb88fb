#!/usr/bin/env bash
# One shot: set up (once), then materialize the whole MiniLLM graph: mixes -> tokenizer ->
# token tensors -> pretrain -> SFT -> DPO -> eval.
#
#   scripts/run.sh --smoke-test     CPU smoke profile on the shipped samples (minutes)
#   scripts/run.sh                  the profile in MINILLM_PROFILE (default: gpu)
#
# Environment: PYTHON, VENV_DIR, ENABLE_RUSTBPE (see scripts/setup.sh), TF_DIR, and
# PRETRAIN_ARGS / SFT_ARGS / DPO_ARGS with extra training options, e.g.
#   PRETRAIN_ARGS="--batch_size 8 --learning_rate 3e-4" scripts/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${MINILLM_PROFILE:-gpu}"
for arg in "$@"; do
  case "$arg" in
    --smoke-test) profile=smoke ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

source "$ROOT/scripts/setup.sh"

if [ ! -f "$ROOT/data/chinese/identity_conversations.jsonl" ]; then
  if [ -f "$ROOT/dataset/identity_cn_sample.jsonl" ]; then
    echo "run.sh: no data/chinese/identity_conversations.jsonl: using the shipped persona sample" \
         "dataset/identity_cn_sample.jsonl (see README, 'Your own data')"
  else
    echo "run.sh: identity data missing: add data/chinese/identity_conversations.jsonl" >&2
    exit 1
  fi
fi

cd "$ROOT"
exec "$VENV_DIR/bin/python" -m minillm_assets.pipeline --profile "$profile" \
  --pretrain-args "${PRETRAIN_ARGS:-}" --sft-args "${SFT_ARGS:-}" --dpo-args "${DPO_ARGS:-}"
