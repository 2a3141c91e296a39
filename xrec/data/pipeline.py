"""Sequence datasets -> leave-one-out splits -> grain batches.

Protocol (chronological leave-one-out, per user, sequence s of length n >= 3):
  train: inputs s[:-3] -> targets s[1:-2]  (every position predicts the next item)
  valid: history s[:-2] -> target s[-2]
  test:  history s[:-1] -> target s[-1]
Inputs are the last `max_len` items, right-aligned (left-padded with 0), so
the most recent item always sits at position max_len - 1.

Two user sets per domain, chosen separately (`split_users`):
  evaluation population  the users whose valid / test targets are scored. It never depends on
                         the few-shot fraction, the strategy or the seed, so every cell of a
                         transfer table is measured on the same users:
                           "all"     every user of the domain, each scored from its own history
                                     (sequential models are inductive in users);
                           "unseen"  a fixed share of the users (`data.eval_unseen_fraction`, drawn
                                     by a seeded hash of the raw key with `data.eval_population_seed`)
                                     that no training fraction ever contains.
  training users         the few-shot subset: a fraction of the pool (all users for "all", the
                         users outside the population for "unseen"), nested across fractions:
                         the pool is ranked once by a seeded hash of the raw key
                         (`data.fraction_seed`) and a fraction f keeps the first round(f * pool),
                         so the 5% users are inside the 10% users.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os

import grain
import numpy as np

from xrec.data import builders

log = logging.getLogger("xrec")

POPULATIONS = ("all", "unseen")


@dataclasses.dataclass
class DomainSequences:
  """One domain's user sequences, checked and indexed (read once from the data source).

  Users are numbered by their record index in `source`; `train_users` and `eval_users` are
  sorted arrays of such indices (see the module docstring).
  """

  name: str
  source: object  # random-access data source: source[i] -> record dict
  item_keys: list[str]
  user_keys: list[str]  # every user of the domain, record order
  lengths: np.ndarray  # int64 [users]
  train_users: np.ndarray  # int64 [train users]: the few-shot subset whose sequences train
  eval_users: np.ndarray  # int64 [population]: the users every evaluation scores
  population: dict  # how eval_users were chosen: kind, users, keys_sha256, description
  item_frequency: np.ndarray  # int64 [num_items + 1]: interactions per item id in every user's training part
  metadata: dict
  # another vocabulary's ids for this domain's items (0 = not in it; such items are dropped):
  # set by `remap` so that a second domain's sequences feed a model built on the first's items
  id_map: np.ndarray | None = None
  # overlapping-user inputs (xrec/data/cross_user.py CrossUserInputs): when set, training windows
  # and evaluation inputs also read the user's source-domain history
  cross: object | None = None
  # time-reversed training parts (data.reverse): sequence(u) is the forward sequence without its
  # valid / test items, newest first (so a reversed run never reads the forward held-out items)
  reverse: bool = False
  # pseudo-interactions (data.synthesis, xrec/train/synthesis.py): user -> (items generated before
  # its history, items generated after its training part), in this domain's ids
  pseudo: dict | None = None
  # every user's items, read once by index_domain: user u's are items[offsets[u]:offsets[u + 1]]
  # (int32). Batches and evaluations slice them instead of decoding a record per example, which
  # was ~90% of the time of building a batch. None: read `source` per user.
  items: np.ndarray | None = None
  offsets: np.ndarray | None = None

  @property
  def num_items(self) -> int:
    return len(self.item_keys)

  @property
  def num_users(self) -> int:
    return len(self.user_keys)

  def sequence(self, u: int) -> np.ndarray:
    if self.items is not None:
      items = self.items[self.offsets[u]:self.offsets[u + 1]].astype(np.int64)
    else:
      items = np.asarray(self.source[int(u)]["items"], np.int64)
    if self.reverse:
      items = items[:-2][::-1]
    if self.id_map is None:
      return items
    mapped = self.id_map[items]
    return mapped[mapped > 0]

  def train_lengths(self) -> np.ndarray:
    """len(train_part(u)) for every user id u, from the stored lengths (no sequence is read)."""
    lengths = self.lengths - 2
    if self.pseudo:  # pseudo-interactions lengthen short training parts
      lengths = lengths + np.array([sum(map(len, self.pseudo.get(u, ()))) for u in range(len(lengths))], np.int64)
    return lengths

  def training_interactions(self) -> int:
    """The interactions in the training users' training parts (pseudo-interactions included): the
    data a model's training windows are drawn from (a window reads at most max_len + 1 of them)."""
    return int(np.maximum(self.train_lengths()[self.train_users], 0).sum())

  def train_part(self, u: int) -> np.ndarray:
    """What user u's training windows read: its sequence without the valid / test items, with the
    pseudo-interactions of data.synthesis around it."""
    train = self.sequence(u)[:-2]
    if self.pseudo and int(u) in self.pseudo:
      before, after = self.pseudo[int(u)]
      return np.concatenate([before, train, after])
    return train

  def history(self, u: int, cut: int) -> np.ndarray:
    """The evaluation history before position `cut` (-2 valid, -1 test), after the items data.synthesis
    generated before the user's history (those generated after the training part are not read)."""
    history = self.sequence(u)[:cut]
    if self.pseudo and int(u) in self.pseudo:
      return np.concatenate([self.pseudo[int(u)][0], history])
    return history

  def timestamps(self, u: int) -> np.ndarray:
    """The times of `sequence(u)`'s items (non-decreasing)."""
    if self.reverse:
      raise ValueError("data.reverse sequences have no forward timestamps (overlapping-user inputs need them)")
    stamps = np.asarray(self.source[int(u)]["timestamps"], np.int64)
    if self.id_map is None:
      return stamps
    return stamps[self.id_map[np.asarray(self.source[int(u)]["items"], np.int64)] > 0]


def few_shot_order(user_keys, seed, salt: str = "") -> np.ndarray:
  """Permutation of users by a seeded hash of their raw keys (nested few-shot subsets)."""
  def prio(key):
    return hashlib.sha256(f"{salt}{seed}:{key}".encode()).digest()[:8]
  return np.array(sorted(range(len(user_keys)), key=lambda i: prio(user_keys[i])), np.int64)


def select_fraction(num_users: int, user_keys, fraction: float, seed: int) -> np.ndarray:
  """Sorted positions (into user_keys) of the users kept by a few-shot `fraction` (nested)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"data.user_fraction must be in (0, 1], got {fraction}")
  if fraction == 1.0:
    return np.arange(num_users)
  keep = int(round(fraction * num_users))
  if keep < 1:
    raise ValueError(
        f"data.user_fraction={fraction:g} keeps no training user: round({fraction:g} * {num_users} "
        f"users) = 0. Use data.user_fraction >= {1.0 / num_users:.3g} (one user of this pool of "
        f"{num_users})")
  return np.sort(few_shot_order(user_keys, seed)[:keep])


def population_sha(user_keys) -> str:
  """Short hash of the evaluation users' raw keys: equal hashes = the same population."""
  return hashlib.sha256("\n".join(sorted(user_keys)).encode()).hexdigest()[:16]


def split_users(user_keys: list[str], user_fraction: float, fraction_seed: int, population: str = "all",
                unseen_fraction: float = 0.2, population_seed: int = 0, domain: str = ""):
  """(train_users, eval_users, population info) over users 0..n-1 (module docstring)."""
  n = len(user_keys)
  if population not in POPULATIONS:
    raise ValueError(f"Unknown data.eval_population {population!r}; valid: {list(POPULATIONS)}")
  if population == "all":
    pool = np.arange(n)
    eval_users = np.arange(n)
    description = f"all {n} users of domain {domain!r}, each scored from its own history"
  else:
    if not 0.0 < unseen_fraction < 1.0:
      raise ValueError(f"data.eval_unseen_fraction must be in (0, 1) with data.eval_population='unseen', "
                       f"got {unseen_fraction}")
    held = int(round(unseen_fraction * n))
    if held < 1:
      raise ValueError(
          f"data.eval_unseen_fraction={unseen_fraction:g} leaves an empty evaluation population: "
          f"round({unseen_fraction:g} * {n} users) = 0; use at least {1.0 / n:.3g}")
    if held >= n:
      raise ValueError(f"data.eval_unseen_fraction={unseen_fraction:g} holds out all {n} users of "
                       f"domain {domain!r}: no user is left to train on; use at most {(n - 1) / n:.3g}")
    order = few_shot_order(user_keys, population_seed, salt="population:")
    eval_users = np.sort(order[:held])
    pool = np.sort(order[held:])
    description = (f"{held} users of domain {domain!r} held out of every training fraction "
                   f"(eval_unseen_fraction={unseen_fraction:g}, seed {population_seed})")
  pool_keys = [user_keys[i] for i in pool]
  train_users = pool[select_fraction(len(pool), pool_keys, user_fraction, fraction_seed)]
  info = {"kind": population, "users": int(len(eval_users)),
          "keys_sha256": population_sha([user_keys[i] for i in eval_users]),
          "training_pool": int(len(pool)), "training_users": int(len(train_users)),
          "description": description}
  return train_users.astype(np.int64), eval_users.astype(np.int64), info


def _builder(data_cfg):
  data_dir = builders.data_dir_of(data_cfg)
  if data_cfg.name == "synthetic":
    knobs = dict(data_cfg.synthetic)
    scenario = knobs.pop("scenario")
    for overlap in ("user_overlap", "item_overlap"):  # negative: the scenario's own value
      if knobs.get(overlap, 0.0) < 0:
        knobs.pop(overlap)
    config = builders.synthetic_config(scenario, **knobs)
    return builders.SyntheticXdomain(config=config, data_dir=data_dir)
  if data_cfg.name in ("movielens", "interactions"):
    from xrec.data import prepared  # real sources: MovieLens archives, interaction files, scenario splits
    return prepared.make_builder(data_cfg)
  raise ValueError(f"Unknown dataset {data_cfg.name!r}; valid: ['synthetic', 'movielens', 'interactions']")


def prepare_builder(data_cfg):
  """Builds (or reuses) the TFDS dataset named by `data_cfg`; returns the builder. Processes that
  prepare the same dataset at once (two studies, the cells of one study launched as separate jobs)
  take turns on an flock next to it: the first writes it, the others then read what it wrote."""
  folder = os.path.dirname(_builder(data_cfg).data_dir)  # .../<dataset>/<config>/ (version folders inside)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, ".prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder = _builder(data_cfg)  # again, under the lock: it sees what a process before it wrote
      builder.download_and_prepare(file_format="array_record")
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return builder


def load_domain(data_cfg) -> DomainSequences:
  """Prepares the dataset and returns the checked domain with its training users and population.
  `data.domain` names one split, or several joined by "+" (e.g. "books+movies": pretraining on
  several source domains at once, see `UnionSource`)."""
  builder = prepare_builder(data_cfg)
  sources = builder.as_data_source()
  names = data_cfg.domain.split("+")
  unknown = [n for n in names if n not in sources]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f"Unknown domain {data_cfg.domain!r} in {builder.name}; valid: {sorted(sources)}"
                     + (" (or several joined by '+', each once)" if len(sources) > 1 else ""))
  metadata = dict(builder.info.metadata)
  if len(names) == 1:
    source = sources[data_cfg.domain]
    item_keys = list(metadata["item_keys"][data_cfg.domain])
  else:
    source = UnionSource(names, sources, metadata)
    item_keys = source.item_keys
    metadata["item_keys"] = {**metadata["item_keys"], data_cfg.domain: item_keys}
    metadata["item_features"] = {**(metadata.get("item_features") or {}), data_cfg.domain: source.item_features}
  domain = index_domain(data_cfg.domain, source, item_keys, data_cfg.user_fraction, data_cfg.fraction_seed,
                        metadata=metadata, population=data_cfg.eval_population,
                        unseen_fraction=data_cfg.eval_unseen_fraction,
                        population_seed=data_cfg.eval_population_seed)
  if data_cfg.get("reverse", False):
    domain = reversed_domain(domain)
  for name, pre in preprocessing(domain).items():  # every run says so, not only the one that prepared the data
    if pre.get("duplicates_dropped"):
      log.warning("%s (domain %s): %d duplicate interactions were dropped when the dataset was prepared "
                  "(data.preprocess.dedup=%s)", _source_name(metadata), name, pre["duplicates_dropped"],
                  metadata.get("options", {}).get("preprocess", {}).get("dedup"))
  return domain


def _source_name(metadata: dict) -> str:
  source = metadata.get("options", {}).get("source", {})
  return source.get("path") or f"{source.get('name', 'the source')} {source.get('release', '')}".strip()


def preprocessing(domain: DomainSequences) -> dict:
  """{domain name: the preprocessing counts of its prepared dataset (xrec/data/preprocess.py: rows read,
  duplicates dropped, targets repeating the last input, ...)} for each domain the run reads; empty for
  the synthetic generator."""
  stats = domain.metadata.get("statistics", {}).get("domains", {})
  return {name: stats[name]["preprocess"] for name in domain.name.split("+")
          if "preprocess" in stats.get(name, {})}


class UnionSource:
  """Several domains of one dataset as one: every user of each (its key prefixed `domain:`, so a
  person in two domains is two users here), items numbered in the union of the domains'
  vocabularies by raw key (the first domain's order, then each later domain's new keys), item
  features from the first domain that has features for the item. Users are never paired across
  domains here (a model pretrained on a union sees no user of a single-domain target as known)."""

  def __init__(self, names, sources, metadata):
    self.item_keys, position, self.item_features = [], {}, {}
    features = metadata.get("item_features") or {}
    self._parts, self._maps = [], []
    for name in names:
      keys = list(metadata["item_keys"][name])
      id_map = np.zeros(len(keys) + 1, np.int64)
      for i, key in enumerate(keys):
        if key not in position:
          position[key] = len(self.item_keys) + 1
          self.item_keys.append(key)
        if key not in self.item_features and key in features.get(name, {}):
          self.item_features[key] = features[name][key]
        id_map[i + 1] = position[key]
      self._parts.append((name, sources[name]))
      self._maps.append(id_map)
    self._offsets = np.cumsum([0] + [len(src) for _, src in self._parts])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, i):
    part = int(np.searchsorted(self._offsets, i, side="right")) - 1
    name, src = self._parts[part]
    rec = dict(src[int(i - self._offsets[part])])
    key = rec["user_key"]
    rec["user_key"] = f"{name}:{key.decode() if isinstance(key, bytes) else key}"
    rec["items"] = self._maps[part][np.asarray(rec["items"], np.int64)]
    return rec


def reversed_domain(domain: DomainSequences) -> DomainSequences:
  """The domain's forward training parts time-reversed (newest first): a model trained on it predicts
  the previous item (a backward generator for data.synthesis). Its own held-out items are the two
  oldest; the forward valid / test items are never in it. Users left with fewer than 3 items are
  neither trained nor evaluated."""
  out = dataclasses.replace(domain, reverse=True, lengths=domain.lengths - 2)
  keep = out.lengths >= 3
  if not keep.any():
    raise ValueError(f"data.reverse: no user of domain {domain.name!r} has the >= 5 interactions a reversed "
                     "training part needs (3 for its own train / valid / test, 2 held out forwards)")
  frequency = np.zeros_like(domain.item_frequency)
  for u in np.flatnonzero(keep):
    np.add.at(frequency, out.sequence(u)[:-2], 1)
  population = dict(domain.population, users=int(keep[domain.eval_users].sum()),
                    description=domain.population.get("description", "") + "; reversed training parts")
  return dataclasses.replace(out, item_frequency=frequency, train_users=domain.train_users[keep[domain.train_users]],
                             eval_users=domain.eval_users[keep[domain.eval_users]], population=population)


def index_domain(name, source, item_keys, user_fraction=1.0, fraction_seed=0, metadata=None,
                 population="all", unseen_fraction=0.2, population_seed=0) -> DomainSequences:
  """One pass over `source`: validates every sequence, then picks training users and population."""
  n_items = len(item_keys)
  if n_items >= 2 ** 31:
    raise ValueError(f"Domain {name!r}: {n_items:,} items do not fit int32 item ids")
  user_keys, lengths, all_items = [], [], []
  for i in range(len(source)):
    rec = source[i]
    items = np.asarray(rec["items"])
    key = rec["user_key"]
    key = key.decode() if isinstance(key, bytes) else str(key)
    if items.size == 0:
      raise ValueError(f"Domain {name!r}: user {key!r} (record {i}) has an empty sequence")
    if items.size < 3:
      raise ValueError(
          f"Domain {name!r}: user {key!r} has {items.size} interactions; leave-one-out needs >= 3 "
          "(train, valid, test). Filter short users when preparing the dataset.")
    if items.min() < 1 or items.max() > n_items:
      raise ValueError(
          f"Domain {name!r}: user {key!r} has item ids in [{items.min()}, {items.max()}], outside the "
          f"valid range [1, {n_items}] of the item vocabulary (0 is padding)")
    user_keys.append(key)
    lengths.append(items.size)
    all_items.append(items.astype(np.int32, copy=False))
  if not user_keys:
    raise ValueError(f"Domain {name!r} has no users")
  flat = np.concatenate(all_items)
  offsets = np.zeros(len(lengths) + 1, np.int64)
  offsets[1:] = np.cumsum(lengths)
  trainable = np.ones(len(flat), bool)  # what training may see (valid / test targets are held out)
  trainable[offsets[1:] - 1] = trainable[offsets[1:] - 2] = False
  frequency = np.bincount(flat[trainable], minlength=n_items + 1)
  train_users, eval_users, info = split_users(user_keys, user_fraction, fraction_seed, population,
                                              unseen_fraction, population_seed, domain=name)
  return DomainSequences(
      name=name, source=source, item_keys=item_keys, user_keys=user_keys,
      lengths=np.asarray(lengths, np.int64), train_users=train_users, eval_users=eval_users,
      population=info, item_frequency=frequency, metadata=metadata or {}, items=flat, offsets=offsets)


class NoSharedItems(ValueError):
  """remap: the domain keeps no training example in the other vocabulary (too few shared items)."""


def remap(domain: DomainSequences, item_keys: list[str]) -> DomainSequences:
  """`domain`'s users with their items numbered in another vocabulary (`item_keys`, id i ->
  item_keys[i - 1]) by raw key; items the vocabulary lacks are dropped from the sequences. Used
  for a second stream (the source domain's batches in a target model's item ids). Every user is
  a training user; the report gives the share of interactions kept."""
  target = {key: i + 1 for i, key in enumerate(item_keys)}
  id_map = np.zeros(domain.num_items + 1, np.int64)
  for i, key in enumerate(domain.item_keys):
    id_map[i + 1] = target.get(key, 0)
  out = dataclasses.replace(domain, item_keys=list(item_keys), id_map=id_map)
  lengths = np.array([len(out.sequence(u)) for u in range(domain.num_users)], np.int64)
  kept = float(lengths.sum() / max(domain.lengths.sum(), 1))
  out = dataclasses.replace(out, lengths=lengths, train_users=np.arange(domain.num_users),
                            item_frequency=np.zeros(len(item_keys) + 1, np.int64),
                            metadata={**domain.metadata, "remap": {"interactions_kept": kept,
                                                                    "items_shared": int((id_map > 0).sum())}})
  if not (lengths >= 4).any():
    raise NoSharedItems(f"Domain {domain.name!r} shares too few items with the model's vocabulary: after mapping "
                     f"by raw key ({int((id_map > 0).sum())} shared items, {kept:.1%} of its interactions kept) "
                     "no user has the >= 4 items a training example needs")
  return out


def right_align(seq: np.ndarray, max_len: int) -> np.ndarray:
  out = np.zeros(max_len, np.int32)
  tail = seq[-max_len:]
  if len(tail):
    out[max_len - len(tail):] = tail
  return out


def train_example(seq: np.ndarray, max_len: int) -> dict:
  """Training window of one user: every position of `inputs` predicts the next item (`targets`);
  `items` is the last max_len training items themselves (for cloze-style objectives)."""
  return window_example(seq[:-2], max_len)


def window_example(train: np.ndarray, max_len: int) -> dict:
  """The example of a training part (a sequence without its valid / test items)."""
  train = train[-(max_len + 1):]
  return {"inputs": right_align(train[:-1], max_len), "targets": right_align(train[1:], max_len),
          "items": right_align(train, max_len)}


def eval_example(seq: np.ndarray, split: str, max_len: int, max_history: int) -> dict:
  cut = {"valid": -2, "test": -1}[split]
  history = seq[:cut]
  return {
      "inputs": right_align(history, max_len),
      "target": np.int32(seq[cut]),
      "history": right_align(history, max_history),  # every earlier item, for masking
      "weight": np.float32(1.0),
  }


def _stack(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class TrainBatches:
  """Deterministic training batches: batch `step` is a pure function of (seed, step).

  Each epoch is a fresh seeded permutation of the training users; batches may
  straddle epochs. Resuming at step s reads exactly the batches an
  uninterrupted run would have read from s on.
  """

  def __init__(self, domain: DomainSequences, batch_size: int, max_len: int, seed: int,
               process_index: int = 0, process_count: int = 1, augmenter=None, augment_prob: float = 0.0,
               views: bool = False):
    """augmenter (xrec/data/augment.py): with probability `augment_prob` a training example is
    built from an augmented view of the training part; `views`: every example also carries two
    augmented views `view_a`, `view_b` [max_len] (contrastive objectives). All randomness is keyed
    by (seed, step, global row), so a batch stays a pure function of (seed, step)."""
    if domain.cross is not None and (augmenter is not None or views):
      raise ValueError("overlapping-user inputs (transfer.strategy=cross_user) do not combine with "
                       "data.augment yet: clear data.augment.ops")
    if (augment_prob > 0 or views) and augmenter is None:
      raise ValueError("augmented examples or views need data.augment.ops (e.g. ('crop', 'mask', 'reorder'))")
    if not 0.0 <= augment_prob <= 1.0:
      raise ValueError(f"data.augment.prob={augment_prob!r} must be in [0, 1]")
    self.augmenter, self.augment_prob, self.views = augmenter, augment_prob, views
    # users with fewer than 4 interactions have no (input, next) pair before valid/test
    self.users = domain.train_users[domain.train_lengths()[domain.train_users] >= 2]
    if len(self.users) == 0:
      raise ValueError(
          f"Domain {domain.name!r}: none of the {len(domain.train_users)} training users has >= 4 "
          "interactions, so nothing trains (3 are held out for train/valid/test); raise "
          "data.user_fraction so that a user with a longer sequence is kept")
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} not divisible by process count {process_count}")
    self.domain, self.batch_size, self.max_len, self.seed = domain, batch_size, max_len, seed
    self.process_count = process_count
    self.local = slice(process_index * batch_size // process_count,
                       (process_index + 1) * batch_size // process_count)
    self._perms = {}
    self.packing = None  # (shards, capacity) once pack_targets has chosen a layout

  @property
  def steps_per_epoch(self) -> float:
    return len(self.users) / self.batch_size

  def _user(self, position: int) -> int:
    epoch, i = divmod(position, len(self.users))
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.users)}
    return int(self._perms[epoch][i])

  def example(self, step: int, row: int) -> dict:
    """The example at global position `row` of batch `step`."""
    user = self._user(row)
    if self.domain.cross is not None:
      return self.domain.cross.train_example(user, self.max_len)
    train = self.domain.train_part(user)
    if self.augmenter is None:
      return window_example(train, self.max_len)
    key = (self.seed, step, row)
    if self.augment_prob > 0 and np.random.default_rng(key + (0,)).random() < self.augment_prob:
      out = window_example(self.augmenter.view(train, key + (1,)), self.max_len)
    else:
      out = window_example(train, self.max_len)
    if self.views:
      out["view_a"] = right_align(self.augmenter.view(train, key + (2,)), self.max_len)
      out["view_b"] = right_align(self.augmenter.view(train, key + (3,)), self.max_len)
    return out

  def batch(self, step: int) -> dict:
    start = step * self.batch_size
    rows = range(start + self.local.start, start + self.local.stop)
    batch = _stack([self.example(step, p) for p in rows])
    if self.packing is not None:
      batch["positions"] = target_positions(batch["targets"], *self.packing, self.process_count)
    return batch

  def target_bounds(self) -> np.ndarray:
    """Per user id, an upper bound on the predicted positions (targets > 0) of its training
    window: min(training part - 1, max_len), or max_len where windows are built otherwise
    (augmented views, overlapping-user inputs)."""
    if self.augmenter is not None or self.domain.cross is not None:
      return np.full(self.domain.num_users, self.max_len, np.int64)
    return np.clip(self.domain.train_lengths() - 1, 0, self.max_len)

  def pack_targets(self, shards: int, num_steps: int, multiple: int = 128, max_rows: int = 20_000_000) -> int | None:
    """Lay the next-item terms' work out over the predicted positions only (see target_positions):
    each of the `shards` blocks of a batch (its rows split over the mesh's 'data' devices) lists
    its positions with targets > 0, padded to one capacity for the whole run: the largest count
    any block of steps [0, num_steps) can hold, from the users' lengths (so every process and a
    resumed run choose the same; beyond `max_rows` rows of training, the fullest block any order
    can form), rounded up to `multiple`. Returns the capacity, or None (and batches keep the
    [batch, len] layout) when it would not be smaller than a block."""
    self.packing = None
    if self.batch_size % shards or shards % self.process_count:
      return None
    rows = self.batch_size // shards
    block, bounds = rows * self.max_len, self.target_bounds()
    total = num_steps * self.batch_size
    if total > max_rows:  # too many to list: the fullest block any order can form
      need = int(np.sort(bounds[self.users])[-rows:].sum())
    else:
      need, carry = 0, np.zeros(0, np.int64)
      for epoch in range(-(-total // len(self.users))):  # batches straddle epochs: carry the rest
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.users)
        seq = np.concatenate([carry, bounds[perm[:total - epoch * len(self.users)]]])
        whole = len(seq) // rows * rows
        if whole:
          need = max(need, int(seq[:whole].reshape(-1, rows).sum(1).max()))
        carry = seq[whole:]
    capacity = min(block, -(-max(need, 1) // multiple) * multiple)
    if capacity >= block:
      return None
    self.packing = (shards, capacity)
    return capacity

  def iterate(self, start_step: int, num_steps: int, prefetch: int = 4):
    """grain pipeline over steps [start_step, num_steps), prepared ahead in threads."""
    ds = grain.MapDataset.range(start_step, num_steps).map(self.batch)
    opts = grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


def target_positions(targets: np.ndarray, shards: int, capacity: int, process_count: int = 1) -> np.ndarray:
  """[shards / process_count, capacity] int32: for this process's rows of a batch split into its
  blocks of the global `shards`, the flat indices (within the block's [rows * len]) of the positions
  with targets > 0, and then of as many padding positions (targets 0) as fill the capacity; sorted
  and distinct. The next-item terms gather these positions and compute the output head on them
  only (objectives._next_item): the same loss, without the padding's share of the work."""
  local = shards // process_count
  blocks = targets.reshape(local, -1)
  out = np.empty((local, capacity), np.int32)
  for i, block in enumerate(blocks):
    valid = np.flatnonzero(block > 0)
    if len(valid) > capacity:
      raise ValueError(f"a training batch block has {len(valid)} predicted positions, above the capacity "
                       f"{capacity} chosen for the run (TrainBatches.pack_targets)")
    fill = np.flatnonzero(block == 0)[:capacity - len(valid)]
    out[i] = np.sort(np.concatenate([valid, fill]))
  return out


def iterate_streams(streams: dict, start_step: int, num_steps: int):
  """One dict {stream name: batch} per step from several TrainBatches (each deterministic per
  (its seed, step)), prepared ahead like a single stream."""
  names = sorted(streams)
  iterators = [streams[n].iterate(start_step, num_steps) for n in names]
  for batches in zip(*iterators):
    yield dict(zip(names, batches))


def max_history_len(domain: DomainSequences, multiple: int = 64) -> int:
  longest = int(domain.lengths.max()) - 1
  return max(multiple, -(-longest // multiple) * multiple)


def sampled_negatives(domain: DomainSequences, user: int, split: str, n: int, log_probs: np.ndarray,
                      seed: int) -> np.ndarray:
  """n item ids [n] that user `user` never interacted with (in any split), drawn without replacement
  in proportion to exp(log_probs) ([num_items + 1], -inf at id 0 and at items never to draw) by
  Gumbel top-k; seeded by (seed, the user's key, split), so every model, fraction and strategy is
  ranked against the same negatives. Fewer drawable items than n: the rest are 0 (padding, not ranked)."""
  digest = hashlib.sha256(f"{domain.user_keys[user]}|{split}".encode()).digest()
  rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
  keys = log_probs + rng.gumbel(size=log_probs.shape)
  keys[domain.sequence(user)] = -np.inf
  drawable = int(np.isfinite(keys).sum())
  top = np.argpartition(-keys, min(n, len(keys) - 1))[:n] if drawable > n else np.flatnonzero(np.isfinite(keys))
  out = np.zeros(n, np.int64)
  out[:len(top)] = np.sort(top)
  return out


def eval_batches(domain: DomainSequences, split: str, batch_size: int, max_len: int,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 4, order=None,
                 batch_lengths=None, negatives=None):
  """Every user of the evaluation population once, in order (or in `order`: positions into
  domain.eval_users), last batch padded with weight-0 rows. `batch_lengths[b]` <= max_len: batch
  b's inputs keep only their last that many slots (evaluation length buckets). `negatives`:
  user index -> item ids [n] to rank the target against as well (sampled-negative evaluation),
  added as batch["negatives"]."""
  if split not in ("valid", "test"):
    raise ValueError(f"Unknown eval split {split!r}; valid: ['valid', 'test']")
  users = domain.eval_users
  if len(users) == 0:
    raise ValueError(f"Domain {domain.name!r}: the evaluation population is empty "
                     f"({domain.population.get('description', '')})")
  max_history = max_history_len(domain)
  num_batches = -(-len(users) // batch_size)
  lo, hi = process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count

  if order is None:
    order = np.arange(len(users))

  def make(b):
    rows = []
    for u in range(b * batch_size + lo, b * batch_size + hi):
      if u < len(users):
        u = order[u]
        rows.append(eval_example(domain.sequence(users[u]), split, max_len, max_history))
        if domain.pseudo:  # the items synthesised before the history are part of the input
          rows[-1]["inputs"] = right_align(domain.history(users[u], {"valid": -2, "test": -1}[split]), max_len)
        if domain.cross is not None:  # the input also reads the user's source history
          rows[-1]["inputs"] = domain.cross.eval_inputs(int(users[u]), {"valid": -2, "test": -1}[split], max_len)
        if negatives is not None:
          rows[-1]["negatives"] = negatives(int(users[u]))
      else:  # padding row: scored but weighted out
        pad = eval_example(np.array([1, 1, 1], np.int64), split, max_len, max_history)
        rows.append({**pad, "weight": np.float32(0.0)})
        if negatives is not None:
          rows[-1]["negatives"] = np.zeros_like(negatives(int(users[0])))
    batch = _stack(rows)
    if batch_lengths is not None:
      batch["inputs"] = batch["inputs"][:, max_len - batch_lengths[b]:]
    return batch

  ds = grain.MapDataset.range(num_batches).map(make)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)))


def pack_streams(streams: dict, blocks: int, num_steps: int) -> None:
  """Each stream's next-item terms over the non-padding positions only (objectives.predicted_positions),
  packed for `num_steps` steps of `blocks` data-parallel blocks."""
  for name, stream in sorted(streams.items()):
    capacity = stream.pack_targets(blocks, num_steps)
    if capacity:
      log.info("%s batches: next-item terms on %d of the %d positions of each of %d blocks", name, capacity,
               stream.batch_size // blocks * stream.max_len, blocks)


def item_counts(domain: DomainSequences, split: str = "train") -> np.ndarray:
  """Interaction counts per item id [num_items + 1] over the training users' sequences before
  `split` (what a model fitted on the training users may see)."""
  cut = {"train": -2, "valid": -2, "test": -1}[split]
  counts = np.zeros(domain.num_items + 1, np.int64)
  for u in domain.train_users:
    np.add.at(counts, domain.sequence(u)[:cut], 1)
  return counts


def popularity(domain: DomainSequences, vocab_size: int) -> np.ndarray:
  """[vocab_size] float32: the share of each item among the target's training interactions (0 for
  padding, sharding padding and special tokens): what sampled softmax draws by popularity."""
  counts = item_counts(domain).astype(np.float64)
  probs = np.zeros(vocab_size)
  probs[: len(counts)] = counts / counts.sum()
  return probs.astype(np.float32)
