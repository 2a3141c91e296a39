"""Validation curves of a reproduction study's stages, running or finished (for partial records).

  python experiments/reproduce/curves.py WORKDIR --out experiments/reproduce/partial/curves.json

One entry per stage: its data file, model and objective, the evaluations so far (step, valid NDCG@10 /
HR@10) and whether the stage has finished (results.json). Nothing here is a test metric: a
reproduction's numbers are the test metrics of finished cells in WORKDIR/runs.jsonl.
"""

import argparse
import json
import os


def curves(workdir: str) -> list[dict]:
  stages = os.path.join(workdir, "stages")
  out = []
  for digest in sorted(os.listdir(stages)):
    folder = os.path.join(stages, digest)
    if not os.path.isfile(os.path.join(folder, "stage.json")):
      continue
    with open(os.path.join(folder, "stage.json")) as f:
      stage = json.load(f)
    rows = []
    if os.path.isfile(os.path.join(folder, "metrics.jsonl")):
      with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
          try:
            r = json.loads(line)
          except json.JSONDecodeError:  # a line being written
            continue
          if r.get("split") == "valid":
            rows.append({"step": r["step"], "ndcg@10": r["ndcg@10"], "hr@10": r["hr@10"],
                         **({"time": r["time"]} if "time" in r else {})})
    config = stage["config"]
    data = (os.path.basename(config["data"]["files"]["path"]) if config["data"]["name"] == "interactions"
            else f"movielens-{config['data']['movielens']['release']}")
    terms = "+".join(t for t, _ in config["objective"]["terms"])  # a stage's config keeps no variant label
    out.append({"stage": digest, "variant": f"{data} {config['model']['name']} {terms}", "data": data,
                "finished": os.path.isfile(os.path.join(folder, "results.json")), "valid": rows})
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("workdir")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(curves(args.workdir), f, indent=1)
  for c in curves(args.workdir):
    best = max(c["valid"], key=lambda r: r["ndcg@10"], default=None)
    print(f"{c['variant']}: {len(c['valid'])} evaluations, best valid ndcg@10 "
          f"{best['ndcg@10']:.4f} at step {best['step']}" if best else f"{c['variant']}: no evaluation yet",
          "(finished)" if c["finished"] else "(running)")


if __name__ == "__main__":
  main()
