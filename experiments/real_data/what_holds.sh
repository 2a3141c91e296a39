#!/usr/bin/env bash
# Which synthetic table each real table is compared with, and on which columns: fixed here before
# the real tables finish, so that no pairing is chosen after seeing the numbers. For each pair whose
# real study is committed, `xrec.report.compare --findings` writes findings_vs_<synthetic>.md (and
# _hr10.md) into the real study's folder; README.md's "What holds on real data" reads them.
#
#   bash experiments/real_data/what_holds.sh [PYTHON]
#
# A pair is compared only once its real study is whole (every cell done): a partial table is not a
# finding. Pairs, synthetic -> real, and why these columns:
#   fraction_study -> ml1m_cross_region_cpu_early: the same strategies; the 5 / 20 / 100% columns
#     (the synthetic 1% has no real counterpart).
#   fraction_study -> cross_app_beauty_{toys,sports}_cpu: the same grid; Amazon's files share no
#     item (zero_shot is n/a there), the synthetic domains share all: what survives fresh item tables.
#   cross_user -> overlap_ml1m_cross_genre_cpu, user_overlap 1 = user_fraction 0.05: the synthetic
#     study trains on 5% of the target's users, every one with a source history; on ML-1M
#     cross-genre 89.7% of the target's users have one (5,236 of 5,835, as each cross_user run logs),
#     and the movies are disjoint.
#   toolbox -> adversarial_ml1m_cross_region_cpu, shift 0.25 = 0.05 and shift 0.75 = 0.05: the
#     synthetic study trains on 5% at two generator shifts; the real one at 5% on one real shift.
#   text_transfer -> text_ml1m_cross_genre_cpu: the same grid (1 / 5 / 20%).
#   distill_prune -> compress_ml1m_cross_region_cpu: the same layout (widths 16 / 32 / 64 at 20%;
#     prune:mlp is the real study's only).
#   augment -> augment_ml1m_cross_region_cpu: the same grid (5 / 20%).
set -u
PY=${1:-python}
HERE=experiments/real_data

whole() {  # whole STUDY: every cell of its study.json has a done last record
  "$PY" - "$1" <<'EOF'
import json, os, sys
d = sys.argv[1]
if not os.path.isfile(os.path.join(d, "study.json")) or not os.path.isfile(os.path.join(d, "runs.jsonl")):
  sys.exit(1)
cells = {c["key"] for c in json.load(open(os.path.join(d, "study.json")))["cells"]}
last = {}
for line in open(os.path.join(d, "runs.jsonl")):
  if line.strip():
    r = json.loads(line)
    last[r["key"]] = r["status"]
sys.exit(0 if cells and all(last.get(k) == "done" for k in cells) else 1)
EOF
}

pair() {  # pair SYNTHETIC REAL [SUFFIX COLUMNS]
  local synthetic=$1 real=$HERE/$2 suffix=${3:-} columns=${4:-}
  if ! whole "$real"; then echo "$2: not whole, not compared"; return; fi
  local flags=(--findings)
  if [ -n "$columns" ]; then flags+=(--columns "$columns"); fi
  local out metric
  for metric in ndcg@10 hr@10; do  # written only when the comparison succeeds
    out="$real/findings_vs_$synthetic$suffix$([ "$metric" = hr@10 ] && echo _hr10).md"
    if "$PY" -m xrec.report.compare "experiments/$synthetic" "$real" "${flags[@]}" --metric "$metric" > "$out.tmp"; then
      mv "$out.tmp" "$out"
    else
      rm -f "$out.tmp"; echo "$2: the comparison with $synthetic failed"; return
    fi
  done
  echo "$2 vs $synthetic${suffix}: $(grep -o '[0-9]* of [0-9]* findings hold' "$real/findings_vs_$synthetic$suffix.md"), $(
      grep -o '[0-9]* reversed' "$real/findings_vs_$synthetic$suffix.md" | tail -n 1)"
}

pair fraction_study ml1m_cross_region_cpu_early
pair fraction_study cross_app_beauty_toys_cpu
pair fraction_study cross_app_beauty_sports_cpu
pair cross_user overlap_ml1m_cross_genre_cpu "" 1=0.05
pair toolbox adversarial_ml1m_cross_region_cpu _shift025 0.25=0.05
pair toolbox adversarial_ml1m_cross_region_cpu _shift075 0.75=0.05
pair text_transfer text_ml1m_cross_genre_cpu
pair distill_prune compress_ml1m_cross_region_cpu
pair augment augment_ml1m_cross_region_cpu
