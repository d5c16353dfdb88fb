#!/usr/bin/env bash
# One shot: set up (once), then materialize the whole MiniLLM graph (mixes -> tokenizer -> token
# tensors -> pretrain -> SFT -> DPO -> eval) and print a summary table. `--help` lists the flags
# and the environment variables.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'HELP'
usage: scripts/run.sh [--profile smoke|cpu|gpu] [--smoke-test] [--dry-run] [-h|--help]

Sets up the virtualenv once (scripts/setup.sh), checks that the profile's device exists, then
materializes the whole graph with Dagster: mixes -> tokenizer -> token tensors -> pretrain ->
SFT -> DPO -> evaluations. The terminal shows INFO lines; the full log (Dagster DEBUG included)
goes to out/logs/run-<time>.log. It ends with a table of stages, losses, scores, times and
artifact paths (also written to out/run_summary.md; `minillm summary` prints it again).

Options:
  --profile NAME   smoke: CPU, float32, shipped samples, a tiny model (minutes; checks plumbing)
                   cpu:   the CPU, real data (data/chinese, else the samples), bf16 where native
                   gpu:   CUDA, bfloat16, full data, the seed's model (default)
                   A profile that needs CUDA stops at once, in one line, where there is none.
  --smoke-test     the seed's spelling of --profile smoke
  --dry-run        print what would run (setup and the pipeline command); run nothing
  -h, --help       show this help

Environment:
  MINILLM_PROFILE  profile when --profile is not given (default: gpu)
  PRETRAIN_ARGS    extra pretrain flags, as `minillm pretrain --help` lists them, e.g.
                   PRETRAIN_ARGS="--batch_size 8 --learning_rate 3e-4" scripts/run.sh
  SFT_ARGS         extra SFT flags (`minillm sft --help`)
  DPO_ARGS         extra DPO flags (`minillm dpo --help`)
  MINILLM_ROOT     project root holding data/ and out/ (default: this checkout)
  TF_DIR           TensorBoard logs and eval_results.jsonl (default: <root>/../tf_dir)
  MINILLM_LOG      the full log file (default: <root>/out/logs/run-<time>.log)
  DAGSTER_HOME     Dagster instance: run history (default: <checkout>/.dagster)
  PYTHON           interpreter for a new virtualenv (default: python3)
  VENV_DIR         virtualenv folder (default: .venv)
  ENABLE_RUSTBPE   unset: build the Rust tokenizer trainer when cargo exists; 1: require it; 0: skip
  MINILLM_DEV      1: also install the dev dependencies (tests, linters)
  MINILLM_ALLOCATOR auto: preload tcmalloc when installed (Debian: libtcmalloc-minimal4), for
                   faster CPU steps; system: glibc's malloc; or the path of a malloc library

Identity data: data/chinese/identity_conversations.jsonl, else the shipped persona sample.
scripts/run_cn_pipeline.sh runs the same with uv managing the environment (pip without uv).
HELP
}

profile="${MINILLM_PROFILE:-gpu}"
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke-test) profile=smoke ;;
    --profile)
      [ $# -ge 2 ] || { echo "run.sh: --profile needs a value: smoke, cpu or gpu" >&2; exit 2; }
      profile="$2"; shift ;;
    --profile=*) profile="${1#--profile=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

pipeline=(-m minillm_assets.pipeline --profile "$profile"
  --pretrain-args "${PRETRAIN_ARGS:-}" --sft-args "${SFT_ARGS:-}" --dpo-args "${DPO_ARGS:-}")
if [ "$dry_run" = 1 ]; then
  echo "run.sh: would set up ${VENV_DIR:-.venv} with scripts/setup.sh (python -m venv + pip)"
  echo "run.sh: would run: python $(printf '%q ' "${pipeline[@]}")"
  exit 0
fi

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
# CPU training steps run faster on tcmalloc where it is installed (minillm_core/allocator.py);
# the library is chosen before the process starts, so it is exported here.
allocator_env="$("$VENV_DIR/bin/python" -m minillm_core.allocator)" || exit 2
eval "$allocator_env"
# The pipeline checks the profile's device first (seconds), then runs Dagster.
exec "$VENV_DIR/bin/python" "${pipeline[@]}"
