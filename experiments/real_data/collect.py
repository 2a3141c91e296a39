"""Carries the records of the queue's studies (queue.sh) from their workdirs into the repository:
RUNS/<study>/runs.jsonl -> experiments/real_data/<study>/runs.jsonl (with its study.json; a study
whose folder is committed elsewhere, experiments/*/<study>, goes there; text_tower_* studies to
experiments/text_tower/, scaling_* to experiments/scaling/), and each reproduction row's RUNS/reproduce_<row>/runs.jsonl ->
experiments/reproduce/runs.jsonl. Append-only:
a committed record stays, the workdir's records not yet committed go after it (a cell's last record
counts, as everywhere), so a rerun never erases what an earlier run recorded. Prints, per study,
its cells, how many are done and failed, and each new record's test NDCG@10.

  python experiments/real_data/collect.py RUNS [STUDY ...] [--dry_run]

Without STUDY names it carries the workdirs whose folder is already in the repository (and the
reproduction rows); name a study to carry it the first time.

Then `python -m xrec.report experiments/real_data/<study>` for its report; a study is claimed
only when whole (its README paragraph says "no claim" until then).
"""

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from xrec import runindex  # noqa: E402

REPRODUCE = os.path.join(HERE, "..", "reproduce")


def _lines(path: str) -> list[str]:
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [line.rstrip("\n") for line in f if line.strip()]


def collect(workdir: str, dest: str, copy_study: bool, dry_run: bool) -> list[dict]:
  """Appends WORKDIR's records that DEST lacks to DEST's runs.jsonl, oldest first by finished_at, and
  not one older than DEST's last record of its cell (that one stays the cell's record); returns the
  new records. With copy_study, WORKDIR's study.json replaces DEST's, less this machine's
  `carried_from` path."""
  study = os.path.join(workdir, runindex.STUDY_FILE)
  if copy_study and not os.path.isfile(study):
    raise FileNotFoundError(f"{workdir} has runs.jsonl but no {runindex.STUDY_FILE}: not a study's workdir")
  committed = [json.loads(line) for line in _lines(os.path.join(dest, runindex.RUNS_FILE))]
  have = {json.dumps(r, sort_keys=True) for r in committed}
  last = {r["key"]: str(r.get("finished_at", "")) for r in committed}
  new = [r for r in map(json.loads, _lines(os.path.join(workdir, runindex.RUNS_FILE)))
         if json.dumps(r, sort_keys=True) not in have and str(r.get("finished_at", "")) >= last.get(r["key"], "")]
  new.sort(key=lambda r: str(r.get("finished_at", "")))
  if new and not dry_run:
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, runindex.RUNS_FILE), "a") as f:
      f.write("".join(json.dumps(r) + "\n" for r in new))
    if copy_study:
      record = {k: v for k, v in runindex.read_study(workdir).items() if k != "carried_from"}
      runindex.write_json_atomic(os.path.join(dest, runindex.STUDY_FILE), record)
  return new


def _summary(name: str, dest: str, new: list[dict], dry_run: bool) -> None:
  latest = runindex.latest_runs(dest) if os.path.isfile(os.path.join(dest, runindex.RUNS_FILE)) else {}
  if dry_run:  # what DEST would hold
    latest = {**latest, **{r["key"]: r for r in new}}
  status = [r.get("status") for r in latest.values()]
  print(f"{name}: {len(latest)} cells, {status.count('done')} done, {status.count('failed')} failed; "
        f"{len(new)} new record(s)")
  for r in new:
    ndcg = (r.get("test") or {}).get("ndcg@10")
    print(f"  {r['key'][:90]}  {r.get('status')}  {'' if ndcg is None else f'{ndcg:.4f}'}")


def _destination(name: str) -> str:
  """experiments/*/NAME where committed, else experiments/text_tower/NAME or experiments/scaling/NAME
  by the name's prefix, and experiments/real_data/NAME for the others."""
  found = sorted(glob.glob(os.path.join(HERE, "..", "*", name)))
  if found:
    return found[0]
  for prefix, folder in (("text_tower_", "text_tower"), ("scaling_", "scaling")):
    if name.startswith(prefix):
      return os.path.join(HERE, "..", folder, name)
  return os.path.join(HERE, "..", "real_data", name)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("runs", help="the folder of the studies' workdirs (queue.sh's RUNS)")
  ap.add_argument("studies", nargs="*", help="workdir names to carry (default: those already committed)")
  ap.add_argument("--dry_run", action="store_true", help="print what would be carried, write nothing")
  args = ap.parse_args()
  found = {os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(args.runs, "*", runindex.RUNS_FILE))}
  for name in sorted(set(args.studies) - found):
    print(f"{name}: no workdir {os.path.join(args.runs, name)} with {runindex.RUNS_FILE}")
  for src in sorted(glob.glob(os.path.join(args.runs, "*", runindex.RUNS_FILE))):
    workdir = os.path.dirname(src)
    name = os.path.basename(workdir)
    if name.startswith("reproduce_"):
      dest, copy_study = REPRODUCE, False  # one study, its rows run apart: the committed study.json stays
    else:
      dest, copy_study = _destination(name), True
      if name not in args.studies and not (not args.studies and os.path.isdir(dest)):
        print(f"{name}: not carried ({'not named' if args.studies else 'no folder in the repository yet: name it'})")
        continue
    _summary(name, dest, collect(workdir, dest, copy_study, args.dry_run), args.dry_run)


if __name__ == "__main__":
  main()
