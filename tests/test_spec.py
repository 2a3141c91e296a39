"""Configs stop at the door (issue 28): a study cell's ConfigDict is resolved once into typed pieces
(xrec/config.py: RunSpec) by train_and_evaluate; below it, no function takes the ConfigDict."""

import ast
import dataclasses
import os

import pytest

import ml_collections

from xrec.config import RunSpec, Train, copy_config, core_config, resolve_spec
from xrec.defaults import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pieces_are_typed_copies_of_the_config():
  c = base_config()
  c.train.num_steps, c.train.batch_size, c.model.max_len = 40, 8, 12
  spec = resolve_spec(c)
  assert isinstance(spec, RunSpec) and isinstance(spec.train, Train)
  assert spec.train.num_steps == 40 and spec.train.batch_size == 8 and spec.model.max_len == 12
  assert spec.data.name == c.data.name and spec.transfer.strategy == c.transfer.strategy
  assert spec.rules == tuple(tuple(r) for r in c.sharding.rules) and spec.seed == c.seed
  assert spec.recorded == c.to_dict()
  # typed: every Train field has its declared type, even when the config holds an int for a float
  c.train.num_epochs = 3
  t = resolve_spec(c).train
  assert type(t.num_epochs) is float and type(t.num_steps) is int and type(t.progress_bar) is bool
  # copies: the caller's config changing afterwards does not reach the spec, and the spec cannot
  # change its own budget
  c.model.max_len = 99
  assert spec.model.max_len == 12
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.train.num_steps = 1
  with pytest.raises(AttributeError):  # locked pieces: a misspelt field fails
    spec.model.max_lenn = 3


def test_config_copies_are_deep_keep_locks_and_types_and_keep_a_users_field_links():
  c = base_config()
  c.lock()
  c.data.files.update(dict(path="/x"))
  with c.unlocked():
    c.experiment.extra = [1, [2]]  # a mutable leaf
  d = copy_config(c)
  assert d.to_dict() == c.to_dict() and d.is_locked and d.is_type_safe
  d.experiment.extra[1].append(3)
  d.model.embed_dim = 7
  assert c.experiment.extra == [1, [2]] and c.model.embed_dim != 7
  with pytest.raises(AttributeError, match="embed_dimm"):
    d.model.embed_dimm = 1  # locked
  with pytest.raises(TypeError):
    d.model.embed_dim = "wide"  # type-safe
  linked = ml_collections.ConfigDict({"a": 1})
  linked.b = linked.get_ref("a")
  e = copy_config(linked)
  e.a = 5
  assert e.b == 5 and linked.b == 1
  # core_config hands out copies of one prototype: changing one never reaches the next
  core = core_config()
  core.train.num_steps = 12345
  assert core_config().train.num_steps != 12345


def test_replace_applies_dotted_fields_and_names_the_valid_ones():
  spec = resolve_spec(base_config())
  wider = spec.replace({"model.embed_dim": 48, "train.init_from": "/some/run"})
  assert wider.model.embed_dim == 48 and wider.train.init_from == "/some/run"
  assert spec.model.embed_dim != 48 and spec.train.init_from == ""  # the original is unchanged
  assert wider.recorded["model"]["embed_dim"] == 48
  assert spec.replace({}) is spec
  with pytest.raises(ValueError, match=r"'model.embed_dims'.*no field 'embed_dims'; valid: \[.*'embed_dim'"):
    spec.replace({"model.embed_dims": 48})


def test_train_budget_rules():
  spec = resolve_spec(base_config())
  t = dataclasses.replace(spec.train, num_steps=0, num_epochs=2.0, batch_size=10, eval_every_steps=5)
  assert t.total_steps(steps_per_epoch=4.5, num_users=45) == 9  # ceil(2 * 4.5)
  with pytest.raises(ValueError, match=r"below one evaluation interval"):
    dataclasses.replace(t, num_steps=3).total_steps(4.5, 45)
  with pytest.raises(ValueError, match=r"train.num_epochs=0.5 over 45 training users \(batch 10\) is 3 steps"):
    dataclasses.replace(t, num_epochs=0.5).total_steps(4.5, 45)
  t = dataclasses.replace(t, eval_every_steps=4, log_every_steps=3, checkpoint_every_steps=6)
  assert [s for s in range(1, 13) if t.at(s, 12)[0]] == [4, 8, 12]
  # extra evaluations (train.eval_at_steps) come on top of the cadence, inside the budget only
  early = dataclasses.replace(t, eval_at_steps=(1, 2, 6))
  assert [s for s in range(1, 13) if early.at(s, 12)[0]] == [1, 2, 4, 6, 8, 12]
  assert dataclasses.replace(early, num_steps=12).total_steps(4.5, 45) == 12
  with pytest.raises(ValueError, match=r"train.eval_at_steps=\(1, 2, 6\) has steps beyond the budget of 5 steps "
                                       r"\(\[6\]\); valid: steps 1..5"):
    dataclasses.replace(early, num_steps=5).total_steps(4.5, 45)
  assert resolve_spec(base_config()).train.eval_at_steps == ()
  assert [s for s in range(1, 13) if t.at(s, 12)[1]] == [3, 6, 9, 12]
  assert [s for s in range(1, 13) if t.at(s, 12)[2]] == [6, 12]
  assert t.stop_at(5) is None
  assert dataclasses.replace(t, stop_after_steps=4, stop_at_step=20).stop_at(5) == 9
  assert dataclasses.replace(t, stop_after_steps=4, stop_at_step=7).stop_at(5) == 7


def _functions_taking_config(path: str) -> list[str]:
  with open(path) as f:
    tree = ast.parse(f.read())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      names = [a.arg for a in node.args.args + node.args.kwonlyargs]
      if "config" in names:
        found.append(node.name)
  return found


def test_no_function_below_the_door_takes_the_config():
  """The door (loop.validate / door / train_and_evaluate) takes the ConfigDict; the layers below it
  (data, models, transfer, evaluate, the training step, hooks, checkpoints) take pieces. The
  launcher above it (runner.py, experiment.py: grids, stage hashes) works on whole cells."""
  door = {"validate", "door", "train_and_evaluate"}
  above = {os.path.join("xrec", "train", f) for f in ("runner.py", "experiment.py")}
  offenders = {}
  for sub in ("data", "models", "transfer", "evaluate", "train"):
    for folder, _, files in os.walk(os.path.join(ROOT, "xrec", sub)):
      for name in files:
        rel = os.path.relpath(os.path.join(folder, name), ROOT)
        if not name.endswith(".py") or rel in above or rel == os.path.join("xrec", "models", "text_encoder.py"):
          continue  # text_encoder's `config` is a BertConfig (the weights' own), not the run's
        found = [f for f in _functions_taking_config(os.path.join(ROOT, rel)) if not (
            rel == os.path.join("xrec", "train", "loop.py") and f in door)]
        if found:
          offenders[rel] = found
  assert offenders == {}, f"functions below the door that take the whole config: {offenders}"
