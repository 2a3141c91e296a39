"""Synthetic cross-domain interaction generator (pure numpy, deterministic by seed).

The world: items and users live in a latent space organised around topics. A
user's next item comes either from a short-term transition of the previous item
(each item has a few weighted successors) or from the user's long-term
preference (dot product of latents plus an item popularity bias, Zipf-like).
A sequential model can learn both, a popularity baseline only the bias.

Two domains are drawn from this world: `source` and `target`. The target's
item latents, popularity and transitions move away from the source's by
`shift` (0 = same behaviour, 1 = unrelated); `user_overlap` / `item_overlap`
say which fraction of the target's users / items are also in the source, and
keep the same raw keys there (`u000042`, `i000017`), so transfer can map them.

Every item also has a text (`DomainData.item_text`, the dataset's item feature "text"): `text_words`
pseudo-words, each drawn with probability `text_signal` from the vocabulary of the item's own
topic (the topic nearest its latent) and otherwise from a random topic's; a topic's `text_vocab`
words share a stem (`bralo-kimu`, `bralo-sate`, ...), so that a sub-word text encoder can see
which words go together. Text is a function of the global item id (an item in both domains has
one text) and is drawn from its own random stream, so the sequences do not depend on the text knobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

# Scenario presets of the mission (see DESIGN.md): name -> overrides of SyntheticSpec.
SCENARIOS = {
    # Same users and items, shifted behaviour.
    "cross_platform": dict(user_overlap=1.0, item_overlap=1.0),
    # Same items, disjoint users.
    "cross_region": dict(user_overlap=0.0, item_overlap=1.0),
    # Disjoint items; some users shared.
    "cross_app": dict(user_overlap=0.5, item_overlap=0.0),
}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Knobs of the generator. All counts are per domain."""

  num_source_users: int = 3000
  num_target_users: int = 3000
  num_source_items: int = 1000
  num_target_items: int = 1000
  # Fraction of target users / items that also exist in the source domain.
  user_overlap: float = 0.0
  item_overlap: float = 1.0
  # How far the target's item latents, popularity and transitions move from the source's.
  shift: float = 0.2
  # Zipf exponent of item popularity (0 = uniform).
  popularity_skew: float = 1.0
  latent_dim: int = 16
  num_topics: int = 20
  # Strength of the long-term preference (inverse temperature of u.v).
  preference_strength: float = 4.0
  # Short-term structure: each item has `num_successors` weighted successors and
  # the next item follows one of them with probability `transition_prob`.
  num_successors: int = 4
  transition_prob: float = 0.6
  # Sequence length: min_len + geometric(mean_len - min_len), clipped to max_len.
  min_seq_len: int = 5
  mean_seq_len: float = 20.0
  max_seq_len: int = 100
  seed: int = 0
  # Item text: words per item, share of them from the item's own topic (0 = text carries no
  # signal, 1 = every word names the topic), words per topic vocabulary.
  text_words: int = 6
  text_signal: float = 0.8
  text_vocab: int = 25

  def __post_init__(self):
    def check(cond, msg):
      if not cond:
        raise ValueError(f"SyntheticSpec: {msg} (got {self})")

    check(0.0 <= self.user_overlap <= 1.0, "user_overlap must be in [0, 1]")
    check(0.0 <= self.item_overlap <= 1.0, "item_overlap must be in [0, 1]")
    check(0.0 <= self.shift <= 1.0, "shift must be in [0, 1]")
    check(self.popularity_skew >= 0, "popularity_skew must be >= 0")
    check(self.min_seq_len >= 3, "min_seq_len must be >= 3 (leave-one-out needs train, valid, test)")
    check(self.max_seq_len >= self.min_seq_len, "max_seq_len must be >= min_seq_len")
    check(self.mean_seq_len >= self.min_seq_len, "mean_seq_len must be >= min_seq_len")
    check(self.num_successors >= 1, "num_successors must be >= 1")
    check(0.0 <= self.transition_prob <= 1.0, "transition_prob must be in [0, 1]")
    check(0.0 <= self.text_signal <= 1.0, "text_signal must be in [0, 1]")
    check(self.text_words >= 1 and self.text_vocab >= 1, "text_words and text_vocab must be >= 1")
    for name in ("num_source_users", "num_target_users"):
      check(getattr(self, name) >= 1, f"{name} must be >= 1")
    for name in ("num_source_items", "num_target_items"):
      check(getattr(self, name) > self.max_seq_len,
            f"{name} must exceed max_seq_len (users never repeat an item)")
    if self.user_overlap > 0:
      check(round(self.user_overlap * self.num_target_users) <= self.num_source_users,
            "user_overlap * num_target_users exceeds num_source_users")
    check(round(self.item_overlap * self.num_target_items) <= self.num_source_items,
          "item_overlap * num_target_items exceeds num_source_items")

  @classmethod
  def for_scenario(cls, scenario: str, **overrides) -> "SyntheticSpec":
    if scenario not in SCENARIOS:
      raise ValueError(f"Unknown synthetic scenario {scenario!r}; valid: {sorted(SCENARIOS)}")
    return cls(**{**SCENARIOS[scenario], **overrides})

  def fingerprint(self) -> str:
    """Short stable hash of every knob (names the prepared dataset on disk)."""
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclasses.dataclass
class DomainData:
  """One domain: per-user sequences of 1-based item ids (0 is padding)."""

  name: str
  user_keys: list[str]
  item_keys: list[str]  # item id i (1-based) has key item_keys[i - 1]
  sequences: list[np.ndarray]  # int64 [len_u], chronological
  timestamps: list[np.ndarray]  # int64 [len_u], seconds, non-decreasing
  item_text: list[str] = dataclasses.field(default_factory=list)  # item id i has text item_text[i - 1]


def _pair_noise(rows: np.ndarray, cols: np.ndarray, salt: int) -> np.ndarray:
  """Gumbel noise for item pairs, a pure function of the global ids (stable across domains)."""
  x = (rows.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
       + cols.astype(np.uint64)[None, :] * np.uint64(0xBF58476D1CE4E5B9)
       + np.uint64(salt) * np.uint64(0x94D049BB133111EB))
  # splitmix64 finaliser
  x ^= x >> np.uint64(30)
  x *= np.uint64(0xBF58476D1CE4E5B9)
  x ^= x >> np.uint64(27)
  x *= np.uint64(0x94D049BB133111EB)
  x ^= x >> np.uint64(31)
  u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
  u = np.clip(u, 1e-12, 1 - 1e-12)
  return -np.log(-np.log(u))


def _successors(latents, pop, global_ids, num_successors, noise_salt, fresh_mix, rng):
  """Top-`num_successors` items j != i by similarity + popularity + stable pair noise."""
  n = latents.shape[0]
  k = min(num_successors, n - 1)
  out = np.empty((n, k), np.int64)
  chunk = max(1, 2_000_000 // n)
  for start in range(0, n, chunk):
    rows = np.arange(start, min(n, start + chunk))
    noise = _pair_noise(global_ids[rows], global_ids, noise_salt)
    if fresh_mix > 0:  # domain-specific noise: transitions move with the shift
      noise = (1 - fresh_mix) * noise + fresh_mix * rng.gumbel(size=noise.shape)
    score = 3.0 * latents[rows] @ latents.T + 0.5 * pop[None, :] + noise
    score[np.arange(len(rows)), rows] = -np.inf
    top = np.argpartition(-score, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(score, top, 1), axis=1)
    out[rows] = np.take_along_axis(top, order, 1)
  return out


def _normalise(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sample_sequences(user_latents, item_latents, pop, succ, spec, rng):
  """Vectorised over users: returns list of int arrays of 0-based item indices."""
  num_users, num_items = user_latents.shape[0], item_latents.shape[0]
  extra = rng.geometric(1.0 / max(1.0, spec.mean_seq_len - spec.min_seq_len + 1), size=num_users) - 1
  lengths = np.minimum(spec.min_seq_len + extra, spec.max_seq_len)
  pref_logits = spec.preference_strength * user_latents @ item_latents.T + pop[None, :]
  weights = np.log(np.linspace(1.0, 0.25, succ.shape[1]))  # first successor most likely
  seen = np.zeros((num_users, num_items), bool)
  seqs = np.zeros((num_users, lengths.max()), np.int64)
  users = np.arange(num_users)
  for t in range(lengths.max()):
    active = users[lengths > t]
    pref = pref_logits[active] + rng.gumbel(size=(len(active), num_items))
    pref[seen[active]] = -np.inf
    choice = pref.argmax(1)
    if t > 0:
      cand = succ[seqs[active, t - 1]]  # [A, S]
      trans = weights[None, :] + rng.gumbel(size=cand.shape)
      trans[seen[active[:, None], cand]] = -np.inf
      ok = np.isfinite(trans).any(1) & (rng.random(len(active)) < spec.transition_prob)
      choice = np.where(ok, cand[np.arange(len(active)), trans.argmax(1)], choice)
    seqs[active, t] = choice
    seen[active, choice] = True
  return [seqs[u, : lengths[u]] for u in range(num_users)]


def _timestamps(lengths, rng):
  start = 1_600_000_000 + rng.integers(0, 365 * 86400, size=len(lengths))
  out = []
  for s, n in zip(start, lengths):
    gaps = rng.exponential(86400.0, size=n).astype(np.int64)
    out.append(s + np.cumsum(gaps))
  return out


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70


def topic_word(topic: int, j: int) -> str:
  """Word j of topic `topic`'s vocabulary: the topic's two-syllable stem, a dash, j's suffix."""
  n = len(_SYLLABLES)
  stem = _SYLLABLES[topic % n] + _SYLLABLES[(topic // n * 17 + topic * 31 + 7) % n]
  return f"{stem}-{_SYLLABLES[(j * 23 + 5) % n]}{_SYLLABLES[(j // n * 13 + j * 7 + 2) % n]}"


def item_texts(topic_of: np.ndarray, spec: SyntheticSpec) -> list[str]:
  """Texts of items with topics `topic_of` [n] (indexed by global item id), drawn from the text stream."""
  rng = np.random.default_rng([spec.seed, 0x7E47])
  n = len(topic_of)
  own = rng.random((n, spec.text_words)) < spec.text_signal
  topics = np.where(own, topic_of[:, None], rng.integers(0, spec.num_topics, size=(n, spec.text_words)))
  words = rng.integers(0, spec.text_vocab, size=(n, spec.text_words))
  return [" ".join(topic_word(int(t), int(j)) for t, j in zip(topics[i], words[i])) for i in range(n)]


def generate(spec: SyntheticSpec) -> dict[str, DomainData]:
  """Draws the source and target domains. Same spec -> bit-identical output."""
  rng = np.random.default_rng(spec.seed)
  d = spec.latent_dim
  topics = _normalise(rng.normal(size=(spec.num_topics, d)))

  def new_items(n):
    t = rng.integers(0, spec.num_topics, size=n)
    return _normalise(topics[t] + 0.2 * rng.normal(size=(n, d)))

  def new_users(n):
    a, b = rng.integers(0, spec.num_topics, size=(2, n))
    mix = rng.random((n, 1))
    return _normalise(mix * topics[a] + (1 - mix) * topics[b] + 0.3 * rng.normal(size=(n, d)))

  def zipf_bias(n):
    ranks = rng.permutation(n) + 1
    return -spec.popularity_skew * np.log(ranks)

  # ---- source domain
  ns_i, ns_u = spec.num_source_items, spec.num_source_users
  src_item_ids = np.arange(ns_i)  # global item ids
  src_items = new_items(ns_i)
  src_pop = zipf_bias(ns_i)
  src_users = new_users(ns_u)
  src_user_ids = np.arange(ns_u)
  src_succ = _successors(src_items, src_pop, src_item_ids, spec.num_successors, 1, 0.0, rng)

  # ---- target domain: shared items/users first, then new ones
  s = spec.shift
  nt_i, nt_u = spec.num_target_items, spec.num_target_users
  n_shared_i = int(round(spec.item_overlap * nt_i))
  shared_i = np.sort(rng.choice(ns_i, size=n_shared_i, replace=False)) if n_shared_i else np.zeros(0, np.int64)
  n_new_i = nt_i - n_shared_i
  tgt_item_ids = np.concatenate([shared_i, ns_i + np.arange(n_new_i)])
  moved = _normalise((1 - s) * src_items[shared_i] + s * new_items(n_shared_i)) if n_shared_i else np.zeros((0, d))
  tgt_items = np.concatenate([moved, new_items(n_new_i)])
  tgt_pop = np.concatenate([(1 - s) * src_pop[shared_i] + s * zipf_bias(nt_i)[:n_shared_i],
                            zipf_bias(n_new_i)]) if nt_i else zipf_bias(0)
  tgt_succ = _successors(tgt_items, tgt_pop, tgt_item_ids, spec.num_successors, 1, s, rng)

  n_shared_u = int(round(spec.user_overlap * nt_u))
  shared_u = np.sort(rng.choice(ns_u, size=n_shared_u, replace=False)) if n_shared_u else np.zeros(0, np.int64)
  tgt_user_ids = np.concatenate([shared_u, ns_u + np.arange(nt_u - n_shared_u)])
  moved_u = _normalise((1 - s) * src_users[shared_u] + s * new_users(n_shared_u)) if n_shared_u else np.zeros((0, d))
  tgt_users = np.concatenate([moved_u, new_users(nt_u - n_shared_u)])

  # item text, by global id (source items, then the target's new ones): the nearest topic's words
  text = item_texts(np.concatenate([src_items, tgt_items[n_shared_i:]]).dot(topics.T).argmax(1), spec)

  out = {}
  for name, users, user_ids, items, item_ids, pop, succ in (
      ("source", src_users, src_user_ids, src_items, src_item_ids, src_pop, src_succ),
      ("target", tgt_users, tgt_user_ids, tgt_items, tgt_item_ids, tgt_pop, tgt_succ)):
    seqs = _sample_sequences(users, items, pop, succ, spec, rng)
    out[name] = DomainData(
        name=name,
        user_keys=[f"u{u:06d}" for u in user_ids],
        item_keys=[f"i{i:06d}" for i in item_ids],
        item_text=[text[i] for i in item_ids],
        sequences=[q + 1 for q in seqs],  # 1-based ids, 0 = padding
        timestamps=_timestamps([len(q) for q in seqs], rng),
    )
  return out
