"""What a run's data were read from: the input files of a real source, by content.

A stage's identity (xrec/train/experiment.py: stage_hash), a prepared dataset's name
(xrec/data/prepared.py) and a study's record (study.json) include the sha256 of every file the
configured source reads, so an edited, appended or replaced file never reuses results computed from
the old one, whatever its size or modification time. The path is not part of the identity: the same
bytes in another folder are the same data.

  fingerprint(data_cfg) -> {role: {"path", "bytes", "sha256"}}
  role: "data.files.path", "data.files.item_attributes_path", "data.scenario.target_files.path", ...,
        "movielens-1m:ratings.dat" (an extracted release folder) or "movielens-1m:ml-1m.zip"

Hashes are kept per process by (path, inode, size, mtime, ctime): ctime changes with every write
and cannot be set back, so a file is read once per process unless it changed.
"""

from __future__ import annotations

import hashlib
import os

from xrec.data import builders, movielens

_DIGESTS: dict[tuple, str] = {}


def sha256_of(path: str) -> str:
  """The file's sha256, computed once per process per version of the file."""
  st = os.stat(path)
  key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
  if key not in _DIGESTS:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    _DIGESTS[key] = h.hexdigest()
  return _DIGESTS[key]


def _file(path: str) -> dict:
  return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def _movielens_files(release_name: str, manual_dir: str, verify_checksum: bool) -> dict:
  """The release's files the reader reads: the extracted folder's, else the archive; an archive still
  to be downloaded is known by its published sha256 when the download is verified against it."""
  r = movielens.release_of(release_name)
  prefix = f"movielens-{release_name}:"
  folder = os.path.join(manual_dir, r.folder)
  if os.path.isfile(os.path.join(folder, r.ratings_file)):
    return {prefix + name: _file(os.path.join(folder, name)) for name in r.read_files
            if os.path.isfile(os.path.join(folder, name))}
  archive = os.path.join(manual_dir, r.archive)
  if os.path.isfile(archive):
    return {prefix + r.archive: _file(archive)}
  if verify_checksum:
    return {prefix + r.archive: {"path": os.path.abspath(archive), "bytes": r.size, "sha256": r.sha256}}
  return {}  # absent and unverified: read (and hashed) once downloaded


def _interaction_files(files_cfg, prefix: str) -> dict:
  out = {}
  for field in ("path", "item_attributes_path"):
    path = files_cfg[field]
    if path and os.path.isfile(path):
      out[f"{prefix}.{field}"] = _file(path)
  return out


def fingerprint(data_cfg) -> dict[str, dict]:
  """{role: {"path", "bytes", "sha256"}} of every input file of `config.data` (empty for the
  synthetic generator, whose data its config defines)."""
  name = data_cfg.name
  out = {}
  manual_dir = data_cfg.movielens.manual_dir or os.path.join(builders.data_dir_of(data_cfg), "manual")
  if name == "movielens":
    out.update(_movielens_files(data_cfg.movielens.release, manual_dir, bool(data_cfg.movielens.verify_checksum)))
  elif name == "interactions":
    out.update(_interaction_files(data_cfg.files, "data.files"))
  if name in ("movielens", "interactions") and data_cfg.scenario.kind == "cross_app":
    if data_cfg.scenario.target_name == "movielens":
      out.update(_movielens_files(data_cfg.scenario.target_release, manual_dir,
                                  bool(data_cfg.movielens.verify_checksum)))
    else:
      out.update(_interaction_files(data_cfg.scenario.target_files, "data.scenario.target_files"))
  return out


def digests(data_cfg) -> dict[str, str]:
  """{role: sha256}: the part of the fingerprint that is the data's identity."""
  return {role: f["sha256"] for role, f in fingerprint(data_cfg).items()}


def changes(before: dict[str, dict], now: dict[str, dict]) -> list[str]:
  """One line per input file whose content differs between two fingerprints (or that one lacks)."""
  lines = []
  for role in sorted(set(before) | set(now)):
    old, new = before.get(role), now.get(role)
    if old and new and old["sha256"] == new["sha256"]:
      continue
    if old is None:
      lines.append(f"{role}: {new['path']} is read now and was not before")
    elif new is None:
      lines.append(f"{role}: {old['path']} was read before and is not now")
    else:
      lines.append(f"{role}: {new['path']} changed ({old['bytes']:,} -> {new['bytes']:,} bytes, sha256 "
                   f"{old['sha256'][:12]} -> {new['sha256'][:12]})")
  return lines
