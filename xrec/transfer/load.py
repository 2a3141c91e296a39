"""Declarative loading of a pretrained param tree into a new model's tree.

    params, report = load_params(
        init_params, ckpt_params,
        subtree="",                                  # load only this part of the checkpoint
        rename=[(r"encoder/(.*)", r"\\1")],           # checkpoint path -> model path
        graft=[("output_embed", "item_embed")],      # copy a checkpoint subtree to more places
        dont_load=[r"block_\\d+/adapter_.*"],         # keep the fresh init (both sides)
        transforms=[(r"item_embed/embedding", fn)])  # reshape values, e.g. vocabulary mapping

Steps, in this order: select `subtree` -> `rename` -> `graft` -> `transforms` ->
strict merge. The result is shaped exactly like `init_params`. Any path that is
in only one of the trees, or whose shape differs, and that no `dont_load` regex
covers, is an error listing `+ path shape` (checkpoint only) and `- path shape`
(model only) -- never a silent skip.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from xrec.models import common
from xrec.transfer import tree

# fn(path, checkpoint value, fresh init value) -> (value shaped like the init value, info or None)
Transform = Callable[[str, Any, Any], tuple[Any, Any]]


def split_source(spec: str) -> tuple[str, str]:
  """'CKPT:sub/tree' -> ('CKPT', 'sub/tree'); 'CKPT' -> ('CKPT', '')."""
  path, sep, subtree = spec.rpartition(":")
  if not sep or not path:
    return spec, ""
  return path, subtree.strip("/")


def load_source(spec: str, restore_fn: Callable[[str], Any]):
  """The param tree named by `CKPT[:subtree]`; `restore_fn(CKPT)` reads a checkpoint's params
  (e.g. `lambda d: checkpoint.restore_best_params(d)[0]`; surgery knows no checkpoint format)."""
  path, subtree = split_source(spec)
  return tree.tree_get(restore_fn(path), subtree)


def load_params(init_params, ckpt_params, *, subtree: str = "",
                rename: Sequence[tuple[str, str]] = (), graft: Sequence[tuple[str, str]] = (),
                dont_load: Sequence[str] = (),
                transforms: Sequence[tuple[str, Transform]] = ()) -> tuple[dict, dict]:
  """A tree shaped exactly like `init_params` with values from `ckpt_params` (see module doc).

  init_params: the new model's fresh params (nested dict of arrays).
  ckpt_params: the pretrained params (nested dict of arrays), or a tree holding them at `subtree`.
  Returns (params, report) where report has
    loaded: model paths whose value comes from the checkpoint,
    fresh:  model paths that keep their fresh init (dont_load),
    shared: loaded paths whose value equals the checkpoint's array, or whose transform reports
            {"identity": True} (nothing to store per target),
    transformed: {path: info returned by its transform}.
  Loaded values are cast to the init dtype.
  """
  skip = tree.compile_rules(dont_load, "dont_load")
  transform_rules = list(zip(tree.compile_rules([p for p, _ in transforms], "transforms"),
                             [fn for _, fn in transforms]))
  source = tree.tree_get(ckpt_params, subtree)
  model, ckpt = common.flatten(init_params), common.flatten(source)
  ckpt = tree.graft_paths(tree.rename_paths(ckpt, rename), graft)

  def skipped(path):
    return any(r.fullmatch(path) for r in skip)

  transformed, info = dict(ckpt), {}
  for path in sorted(set(ckpt) & set(model)):
    hit = tree.first_match(path, transform_rules)
    if hit is not None and not skipped(path):
      transformed[path], info[path] = hit[1](path, ckpt[path], model[path])

  merged = common.flatten(common.merge_params(init_params, transformed, dont_load))
  loaded = sorted(p for p in model if p in transformed and not skipped(p))
  out, shared = {}, []
  for path, value in merged.items():
    if path in loaded:
      value = np.asarray(value).astype(np.asarray(model[path]).dtype, copy=False)
      original = np.asarray(ckpt[path])
      declared = isinstance(info.get(path), dict) and info[path].get("identity") is True
      if declared or (original.shape == value.shape
                      and np.array_equal(original.astype(value.dtype), value)):
        shared.append(path)
    out[path] = value
  report = {"loaded": loaded, "fresh": sorted(set(model) - set(loaded)), "shared": shared,
            "transformed": info}
  return common.unflatten(out), report


def graft(params, source: str, targets: Sequence[str]) -> dict:
  """Tree-level share/graft: a copy of the subtree at `source` placed at each of `targets`
  (e.g. one pretrained encoder for two domains). Targets must already exist with the same
  paths and shapes, so a graft never changes the model's structure."""
  flat = common.flatten(params)
  src = common.flatten({"x": tree.tree_get(params, source)})
  for target in targets:
    dst = common.flatten({"x": tree.tree_get(params, target)})
    src_shapes = {p: np.shape(v) for p, v in src.items()}
    dst_shapes = {p: np.shape(v) for p, v in dst.items()}
    if src_shapes != dst_shapes:
      diff = [f"+ {source}{p[1:]} {s}" for p, s in sorted(src_shapes.items()) if dst_shapes.get(p) != s]
      diff += [f"- {target}{p[1:]} {s}" for p, s in sorted(dst_shapes.items()) if src_shapes.get(p) != s]
      raise ValueError(f"graft {source!r} -> {target!r}: subtrees differ (+ source, - target):\n"
                       + "\n".join(diff))
    for path, value in src.items():
      flat[target + path[1:]] = value
  return common.unflatten(flat)
