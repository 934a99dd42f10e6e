#!/usr/bin/env bash
# Train the quality estimator and its three ablations on the committed labels, then evaluate them
# with every baseline on the test split: models/quality_estimator/ and docs/evaluation/.
#
#   benchmarks/estimator_evaluation.sh                 # FEATURES=static by default
#   FEATURES=contextual benchmarks/estimator_evaluation.sh
#   MODEL_DIR=build/quality_estimator benchmarks/estimator_evaluation.sh   # leave models/ alone
#
# The ablations (no token selection, no dual gate, no PRS loss) are remade by this script into
# build/estimator_ablations/ (ignored by git). With static features (the served default: a route
# decision within the 5 ms goal) it also trains the same MoE on contextual MiniLM outputs, the
# encoder the pooled baselines use, into models/quality_estimator_contextual and evaluates it as
# the variant "contextual" (quality against latency: docs/evaluation/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
FEATURES=${FEATURES:-static}
SEED=${SEED:-0}
THREADS=${THREADS:-2}
ABLATIONS=build/estimator_ablations
MODEL_DIR=${MODEL_DIR:-models/quality_estimator}
CONTEXTUAL_DIR=${CONTEXTUAL_DIR:-models/quality_estimator_contextual}
OUT=${OUT:-docs/evaluation}
common=(--labels data/labels --features "$FEATURES" --seed "$SEED" --threads "$THREADS" --no-progress)

"$BIN/t2i-router" estimator train "${common[@]}" --out "$MODEL_DIR"
"$BIN/t2i-router" estimator train "${common[@]}" --no-token-selection --out "$ABLATIONS/no_token_selection"
"$BIN/t2i-router" estimator train "${common[@]}" --no-dual-gate --out "$ABLATIONS/no_dual_gate"
"$BIN/t2i-router" estimator train "${common[@]}" --prs-loss-weight 0 --out "$ABLATIONS/no_prs_loss"

contextual=()
if [ "$FEATURES" = static ]; then
  "$BIN/t2i-router" estimator train "${common[@]/static/contextual}" --out "$CONTEXTUAL_DIR"
  contextual=(--variant "contextual=$CONTEXTUAL_DIR")
fi

"$BIN/t2i-router" estimator evaluate --labels data/labels --out "$OUT" \
  --model "$MODEL_DIR" "${contextual[@]}" \
  --variant "no_token_selection=$ABLATIONS/no_token_selection" \
  --variant "no_dual_gate=$ABLATIONS/no_dual_gate" \
  --variant "no_prs_loss=$ABLATIONS/no_prs_loss" \
  --seed "$SEED" --threads "$THREADS" ${EVALUATE_ARGS:-}
