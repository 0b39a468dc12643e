#!/usr/bin/env bash
# Train recipes one after another, then evaluate and publish each finished run, so that what a
# run leaves in results/ does not depend on its checkpoints surviving (they stay in the run
# directory, outside the repository).
#
#   bash scripts/paper_runs.sh NAME=RECIPE[@last] [NAME=RECIPE[@last] ...]
#   bash scripts/paper_runs.sh bn-cvae-g0.3-learned-s1=recipes/bn-cvae-g0.3-learned-s1.json
#
# A run is evaluated at its best checkpoint; with @last, at its last one (a fine-tuning stage
# of a fixed length, which is compared with another of the same length).
#
# For each pair, from the repository root and in the virtual environment:
#   1. trains RECIPE into its "out" directory; a run with a saved training state is resumed,
#      a finished run (its summary.json exists) is not trained again, and not evaluated again
#      either when results/NAME.json and .paper.json are newer than its summary.json;
#   2. evaluates the run's checkpoint on test with the project's protocol
#      (results/NAME.json, .contexts.json) and the paper's (results/NAME.paper.json);
#   3. writes the per-dimension latent record results/NAME.dims.json (eval.latent_dims), which
#      draws the per-dimension plots later without the checkpoint;
#   4. publishes the run's config, summary, metrics and curves as results/NAME.*;
#   5. if the KL-settle rule set a checkpoint aside (RUN/best-before-kl-settled), evaluates it
#      both ways as results/NAME-before-kl-settled.json and .paper.json, unless already done.
# Nothing is committed: commit each finished run's results yourself. Stop it with
# `pkill -f paper_runs.sh; pkill -TERM -f training.switchboard` (the state is saved on SIGTERM)
# and start the same command again to go on. Each step logs to RUN/paper_runs.log.
# NICE (default 19) is the niceness of every step; THREADS, when set, trains with that many
# torch threads instead of the recipe's (one run alone on 2 cores goes faster with 2).
set -euo pipefail
cd "$(dirname "$0")/.."
NICE=${NICE:-19}
threads=()
if [ -n "${THREADS:-}" ]; then
  threads=(--threads "$THREADS")
fi

parse() {  # NAME=RECIPE[@last] -> name, recipe, checkpoint
  name=${1%%=*}
  recipe=${1#*=}
  checkpoint=best
  if [ "${recipe%@last}" != "$recipe" ]; then
    recipe=${recipe%@last}
    checkpoint=last
  fi
}

run_step() {  # python -m ARGS..., logged to the run's paper_runs.log
  echo "$(date -u +%FT%TZ) python -m $*" >>"$log"
  nice -n "$NICE" python -m "$@" >>"$log" 2>&1
}

evaluate() {  # NAME CHECKPOINT: the test split, both protocols, as results/NAME.json, .paper.json
  run_step eval.switchboard --checkpoint "$2" --split test --samples 10 --seed 0 --out "results/$1.json"
  run_step eval.switchboard --checkpoint "$2" --protocol paper --out "results/$1.paper.json"
}

# Every pair is checked before the first one trains: a typo in the last must not wait hours.
for pair in "$@"; do
  parse "$pair"
  if [ "$name" = "$pair" ] || [ ! -f "$recipe" ]; then
    echo "paper_runs.sh: expected NAME=RECIPE[@last] with an existing recipe file, got '$pair'" >&2
    exit 2
  fi
done

for pair in "$@"; do
  parse "$pair"
  run=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["train"]["out"])' "$recipe")
  mkdir -p "$run"
  log=$run/paper_runs.log
  echo "$(date -u +%FT%TZ) $name: $recipe -> $run" >>"$log"
  if [ ! -f "$run/summary.json" ]; then
    if [ -f "$run/training_state.pt" ]; then
      nice -n "$NICE" python -m training.switchboard --out "$run" --resume "${threads[@]}" >>"$run/nohup.log" 2>&1
    else
      nice -n "$NICE" python -m training.switchboard --config "$recipe" "${threads[@]}" >>"$run/nohup.log" 2>&1
    fi
  fi
  if [ "results/$name.json" -nt "$run/summary.json" ] && [ -f "results/$name.paper.json" ]; then
    # Evaluated since it finished (the queue started again): not again. Delete
    # results/NAME.json to have it evaluated anew.
    echo "$(date -u +%FT%TZ) $name: already evaluated" >>"$log"
  else
    evaluate "$name" "$run/$checkpoint"
    run_step eval.latent_dims "$name=$run/$checkpoint" --split test --no-progress \
      --out "$run/dims.png" --json-out "results/$name.dims.json"
    run_step training.publish "$run" --name "$name"
  fi
  # A run whose KL settled under the KL-settle rule also left the best model by -ELBO alone (what
  # plain early stopping keeps) in best-before-kl-settled/: scored too, once (it is never changed
  # after the move).
  aside=$run/best-before-kl-settled
  if [ "$checkpoint" = best ] && [ -d "$aside" ] && [ ! -f "results/$name-before-kl-settled.json" ]; then
    evaluate "$name-before-kl-settled" "$aside"
  fi
  echo "$(date -u +%FT%TZ) $name: done" >>"$log"
done
