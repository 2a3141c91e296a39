"""Param trees by name: `a/b/c` paths are the language of transfer configs, logs and errors.

`flatten` / `unflatten` / `param_count` live in xrec/models/common.py (models sit
below transfer in the import order) and are re-exported here with the helpers
that surgery needs: get by path with a "did you mean", map by regex, rename by
regex, graft a subtree into several places.

Regexes are matched with `re.fullmatch` against the whole path everywhere, so
`block_1/.*` does not match `block_10/...`.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Iterable, Sequence

import jax

from xrec.models.common import flatten, param_count, unflatten

__all__ = ["flatten", "unflatten", "param_count", "path_name", "names_and_leaves", "tree_get",
           "tree_map_with_regex", "first_match", "rename_paths", "graft_paths", "compile_rules"]


def path_name(key_path) -> str:
  """A jax key path (DictKey / GetAttrKey / SequenceKey ...) -> 'a/b/c'."""
  parts = []
  for entry in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def names_and_leaves(tree) -> list[tuple[str, Any]]:
  """[(path name, leaf)] of any pytree (dicts, FrozenDicts, optax MaskedNodes have no leaves)."""
  with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_name(p), leaf) for p, leaf in with_path]


def _all_prefixes(paths: Iterable[str]) -> list[str]:
  out = set()
  for path in paths:
    parts = path.split("/")
    out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
  return sorted(out)


def tree_get(tree, path: str):
  """The leaf or subtree of a nested dict at `path` ('' = the whole tree).

  A missing path raises KeyError naming the closest existing paths.
  """
  if not path:
    return tree
  node = tree
  for part in path.split("/"):
    if hasattr(node, "items") and not hasattr(node, "shape") and part in node:
      node = node[part]
      continue
    known = _all_prefixes(flatten(tree))
    close = difflib.get_close_matches(path, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"No param path {path!r}{hint} (top level: {sorted(tree)})")
  return node


def compile_rules(patterns: Iterable[str], what: str) -> list[re.Pattern]:
  """Compiled regexes; a malformed one is an error that names it and what it was for."""
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"{what}: invalid regex {pattern!r}: {e}") from e
  return compiled


def first_match(path: str, rules: Sequence[tuple[re.Pattern, Any]]):
  """(index, value) of the first rule whose regex fullmatches `path`, or None."""
  for i, (regex, value) in enumerate(rules):
    if regex.fullmatch(path):
      return i, value
  return None


def tree_map_with_regex(fn: Callable[[Any, Any], Any], tree, rules: Sequence[tuple[str, Any]],
                        default: Callable[[Any], Any] = lambda leaf: leaf):
  """Maps leaves by name: `fn(leaf, value)` for the first `(regex, value)` rule that fullmatches
  the leaf's path, `default(leaf)` when none does. The tree structure is kept."""
  compiled = list(zip(compile_rules([p for p, _ in rules], "tree_map_with_regex"),
                      [v for _, v in rules]))

  def apply(key_path, leaf):
    hit = first_match(path_name(key_path), compiled)
    return default(leaf) if hit is None else fn(leaf, hit[1])

  return jax.tree_util.tree_map_with_path(apply, tree)


def rename_paths(flat: dict, rules: Sequence[tuple[str, str]]) -> dict:
  """{path: value} with each path renamed by the first `(pattern, replacement)` rule that
  fullmatches it (replacement may use \\1 / \\g<name>); unmatched paths keep their name.

  Two paths renamed onto the same name is an error naming both.
  """
  compiled = list(zip(compile_rules([p for p, _ in rules], "rename"), [r for _, r in rules]))
  out, origin = {}, {}
  for path, value in flat.items():
    new = path
    for regex, replacement in compiled:
      m = regex.fullmatch(path)
      if m:
        new = m.expand(replacement)
        break
    if new in out:
      raise ValueError(f"rename: {origin[new]!r} and {path!r} both become {new!r}")
    out[new], origin[new] = value, path
  return out


def graft_paths(flat: dict, grafts: Sequence[tuple[str, str]]) -> dict:
  """Copies subtrees: for each `(target, source)` prefix pair, every `source/...` path (or the leaf
  `source` itself) is also placed at `target/...`. One source may feed several targets (the same
  pretrained block into block_0 and block_1). A graft replaces what `flat` had at the target.
  """
  out = dict(flat)
  for target, source in grafts:
    hits = {p: v for p, v in flat.items() if p == source or p.startswith(source + "/")}
    if not hits:
      close = difflib.get_close_matches(source, _all_prefixes(flat), n=3, cutoff=0.5)
      hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
      raise KeyError(f"graft {target!r} <- {source!r}: no such path in the checkpoint{hint}")
    for path, value in hits.items():
      out[target + path[len(source):]] = value
  return out
