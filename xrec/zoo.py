"""A local model zoo: finished runs registered by name in a catalog file, so that
`train.init_from=NAME` loads one and a selection can compare them (issue 13).

  python -m xrec.zoo add WORKDIR [--name NAME] [--catalog PATH]
  python -m xrec.zoo list [--catalog PATH]
  python -m xrec.zoo remove NAME [--catalog PATH]

WORKDIR is a finished run: a stage folder (results.json, best/, model.json, item_keys.json) or a
one-cell study's workdir (its trained stage is found through runs.jsonl). The catalog (JSON) is
`--catalog`, else $XREC_ZOO, else ~/.xrec/zoo.json. An entry records what choosing a pretrained
model needs without loading it: encoder and its model fields, params, stored bytes of the best
checkpoint, source dataset / domain / users, the item vocabulary (size and a hash of the raw keys),
validation metrics and evaluation users/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from xrec import models, runfiles, runindex

DEFAULT_CATALOG = os.path.join("~", ".xrec", "zoo.json")


def catalog_path(catalog: str | None = None) -> str:
  return os.path.abspath(os.path.expanduser(catalog or os.environ.get("XREC_ZOO") or DEFAULT_CATALOG))


def read_catalog(catalog: str | None = None) -> dict:
  path = catalog_path(catalog)
  if not os.path.exists(path):
    return {"entries": {}}
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"zoo catalog {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
    raise ValueError(f"zoo catalog {path} has no 'entries' object; it was not written by xrec.zoo")
  return data


def _write_catalog(data: dict, catalog: str | None = None) -> None:
  path = catalog_path(catalog)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  runindex.write_json_atomic(path, data)


def run_folder(workdir: str) -> str:
  """The folder holding a finished run's results.json and best/ checkpoint: `workdir` itself, or a
  one-cell study's trained stage."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(os.path.join(workdir, "best")) and os.path.exists(os.path.join(workdir, runfiles.RESULTS_FILE)):
    return workdir
  runs = runindex.latest_runs(workdir) if os.path.exists(os.path.join(workdir, runindex.RUNS_FILE)) else {}
  done = [r for r in runs.values() if r.get("status") == "done"]
  if len(done) == 1:
    stages = done[0]["stages"]
    kind = "single" if "single" in stages else "transfer"
    return os.path.join(workdir, "stages", stages[kind])
  if len(done) > 1:
    raise ValueError(f"{workdir} is a study with {len(done)} finished cells; add one cell's stage folder "
                     f"({os.path.join(workdir, 'stages', '<hash>')}, listed in runs.jsonl)")
  raise FileNotFoundError(f"{workdir} holds no finished run (no results.json with a best/ checkpoint, nor a "
                          "study with a finished cell)")


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def describe(workdir: str) -> dict:
  """The catalog entry of a finished run (read from its files; nothing is loaded)."""
  folder = run_folder(workdir)
  results, model, keys = (runfiles.read_results(folder), runfiles.read_model(folder),
                          runfiles.read_item_keys(folder))
  name = model["model"]["name"]
  if name not in models.MODELS:
    raise ValueError(f"{folder}: encoder {name!r} is unknown to this xrec; known: {sorted(models.MODELS)}")
  width = {k: model["model"][name][k] for k in ("num_layers", "num_heads", "mlp_dim") if k in model["model"][name]}
  return {
      "path": folder, "encoder": name, "model": {"embed_dim": model["model"]["embed_dim"],
                                                 "max_len": model["model"]["max_len"], **width},
      "params": int(results["param_count"]), "stored_bytes": _folder_bytes(os.path.join(folder, "best")),
      "source": {k: results["dataset"][k] for k in ("name", "domain", "users", "items")},
      "items": {"count": len(keys), "keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()},
      "valid": {k: v for k, v in results["valid"].items() if "@" in k},
      "eval_users_per_second": (results.get("throughput") or {}).get("eval_users_per_second"),
  }


def add(workdir: str, name: str | None = None, catalog: str | None = None) -> dict:
  entry = describe(workdir)
  name = name or os.path.basename(os.path.normpath(workdir))
  data = read_catalog(catalog)
  if name in data["entries"] and data["entries"][name]["path"] != entry["path"]:
    raise ValueError(f"zoo entry {name!r} already names {data['entries'][name]['path']}; pick another --name "
                     "or remove it first")
  data["entries"][name] = entry
  _write_catalog(data, catalog)
  return entry


def remove(name: str, catalog: str | None = None) -> None:
  data = read_catalog(catalog)
  if name not in data["entries"]:
    raise KeyError(f"no zoo entry {name!r}; entries: {sorted(data['entries'])}")
  del data["entries"][name]
  _write_catalog(data, catalog)


def resolve(name_or_path: str, catalog: str | None = None) -> str:
  """train.init_from: an existing folder as it is, else a zoo entry's run folder (which must still
  hold its best checkpoint)."""
  if not name_or_path or os.path.isdir(name_or_path):
    return name_or_path
  entries = read_catalog(catalog)["entries"]
  if name_or_path not in entries:
    raise FileNotFoundError(f"train.init_from={name_or_path!r} is neither a folder nor a zoo entry of "
                            f"{catalog_path(catalog)}; entries: {sorted(entries)}")
  path = entries[name_or_path]["path"]
  if not os.path.isdir(os.path.join(path, "best")):
    raise FileNotFoundError(f"zoo entry {name_or_path!r}: its checkpoint {os.path.join(path, 'best')} is gone; "
                            f"remove the entry (python -m xrec.zoo remove {name_or_path})")
  return path


def table(catalog: str | None = None) -> str:
  """The catalog as a Markdown table (a missing checkpoint is marked)."""
  entries = read_catalog(catalog)["entries"]
  lines = ["| name | encoder | d | params | stored MB | source | items | valid ndcg@10 | eval users/s | checkpoint |",
           "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
  for name in sorted(entries):
    e = entries[name]
    ok = "ok" if os.path.isdir(os.path.join(e["path"], "best")) else "**missing**"
    speed = e.get("eval_users_per_second")
    lines.append(f"| {name} | {e['encoder']} | {e['model']['embed_dim']} | {e['params']:,} | "
                 f"{e['stored_bytes'] / 1e6:.2f} | {e['source']['name']}/{e['source']['domain']} | "
                 f"{e['items']['count']:,} | {e['valid'].get('ndcg@10', float('nan')):.4f} | "
                 f"{'-' if speed is None else f'{speed:,.0f}'} | {ok} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m xrec.zoo", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--catalog", default=None, help="catalog file (default $XREC_ZOO or ~/.xrec/zoo.json)")
  sub = ap.add_subparsers(dest="command", required=True)
  p_add = sub.add_parser("add", help="register a finished run")
  p_add.add_argument("workdir")
  p_add.add_argument("--name", default=None)
  sub.add_parser("list", help="print the catalog")
  p_rm = sub.add_parser("remove", help="forget an entry (its files stay)")
  p_rm.add_argument("name")
  args = ap.parse_args(argv)
  try:
    if args.command == "add":
      entry = add(args.workdir, args.name, args.catalog)
      print(f"added {args.name or os.path.basename(os.path.normpath(args.workdir))}: {entry['encoder']}, "
            f"{entry['params']:,} params -> {catalog_path(args.catalog)}")
    elif args.command == "remove":
      remove(args.name, args.catalog)
    else:
      print(table(args.catalog))
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"xrec.zoo: error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
