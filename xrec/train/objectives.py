"""Training objectives: a run minimises a weighted sum of named terms, each logged on its own.

A term is one function and its declaration:

  Term(name, streams, encoders, fn)
    streams   the batch streams it reads (today "target", the run's own domain; the pipeline
              provides each stream's batch deterministically per (seed, step))
    encoders  "causal" | "bidirectional" | "any": which encoders it applies to
    fn(ctx) -> (loss scalar, count)   ctx: TermContext (module, params, batches, rng, options);
              count: how many positions (or examples) the loss averages over, logged as
              "<term>/count" (0 on a step where the term had nothing to score)

`objective.terms` in the config is ((name, weight), ...); empty means the encoder's default:
full_softmax for causal encoders, cloze for bidirectional ones. The trainer calls
`Objective.loss(module, params, batches, rng)` and never changes when a term is added: a new
term is a function, one registry line below and its test.

Each stream batch has (xrec/data/pipeline.py TrainBatches):
  inputs  [batch, len]  the training window without its last item (right-aligned)
  targets [batch, len]  the next item at every position (0 = padding)
  items   [batch, len]  the training window itself (right-aligned), for cloze-style terms
  positions [shards, capacity]  where targets > 0, per 'data' block (when the run packs them:
                        TrainBatches.pack_targets); the next-item terms compute their loss there
  view_a, view_b [batch, len]  two augmented views (data.augment), when a term declares them in
                        `fields` (cl4srec)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from xrec.models import common, losses


@dataclasses.dataclass(frozen=True)
class TermContext:
  module: Any  # the model (meets xrec/models/base.py)
  params: Any
  batches: dict  # stream -> batch dict
  rng: jax.Array  # this term's randomness for this step (dropout, negatives, masks)
  num_items: int
  options: Any  # the term's config sub-dict (objective.<name>), or None
  sampling_probs: Any = None  # [vocab] item sampling distribution (sampled_softmax, popularity)
  progress: Any = 0.0  # step / num_steps in [0, 1] (schedules such as the Ganin lambda)
  teacher: Any = None  # Teacher: a frozen model whose outputs on the target batch are the "teacher" stream
  vocab_shards: int = 1  # devices the item table is split over on 'vocab' (chunk layout, label pick)

  def forward(self, inputs, stream: str = "target"):
    """(hidden, table, bias) of the module in training mode (dropout on); a multi-domain model
    answers as the stream's domain."""
    return self.forward_with(self.params, inputs, stream)

  def forward_with(self, params, inputs, stream: str = "target"):
    dropout_rng, _ = jax.random.split(self.rng)
    kwargs = {"domain": stream} if getattr(self.module, "domains", None) else {}
    return self.module.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": dropout_rng},
                             **kwargs)

  @property
  def term_rng(self):
    return jax.random.split(self.rng)[1]


@dataclasses.dataclass(frozen=True)
class Term:
  name: str
  streams: tuple[str, ...]
  encoders: str  # causal | bidirectional | any
  fn: Callable[[TermContext], tuple[jax.Array, jax.Array]]
  doc: str = ""
  options: dict = dataclasses.field(default_factory=dict)  # defaults of config.objective.<name>
  fields: tuple[str, ...] = ()  # batch fields it reads beyond inputs / targets / items (e.g. views)


def _next_item(loss_fn, stream="target", **extra):
  def fn(ctx: TermContext):
    batch = ctx.batches[stream]
    hidden, table, bias = ctx.forward(batch["inputs"], stream)
    targets = batch["targets"]
    if "positions" in batch:
      hidden, targets = predicted_positions(hidden, targets, batch["positions"])
    kwargs = {k: v(ctx) for k, v in extra.items()}
    return loss_fn(hidden, targets, table, bias, num_items=ctx.num_items, rng=ctx.term_rng, **kwargs)
  return fn


def predicted_positions(hidden, targets, positions):
  """hidden [batch, len, embed] and targets [batch, len] at `positions` [shards, capacity] (each
  row: flat indices into one 'data' block of the batch, pipeline.target_positions): [shards,
  capacity, embed] and [shards, capacity]. Every position with a target is among them and the
  rest are padding (target 0), so a loss over them is the loss over the batch, while the output
  head (the [positions x catalogue] product, most of a step at the MovieLens shapes) skips the
  padding. Blocks follow the batch's 'data' split, so the gather stays on each device."""
  shards = positions.shape[0]
  take = jax.vmap(lambda x, p: x.at[p].get(indices_are_sorted=True, unique_indices=True))
  return (take(hidden.reshape(shards, -1, hidden.shape[-1]), positions),
          take(targets.reshape(shards, -1), positions))


def cloze(ctx: TermContext):
  """BERT4Rec's cloze objective: each valid position of the training window is replaced by the
  mask token with probability cloze.mask_prob (at least the last item of every sequence, so each
  example predicts something) and the full-softmax cross-entropy is taken at the masked ones.

  With probability cloze.prefix_prob a window is first cut at a random point (its newest d items
  dropped, d uniform in [0, n - 2], so >= 2 items stay): every prefix of a user's history then
  serves as a "predict the newest item" example, the task evaluation asks (the [MASK] appended
  after the history). Without it each user gives one such example per epoch, which a model
  memorises (tests/test_encoders.py shows the cut; experiments/model_zoo the effect)."""
  batch = ctx.batches["target"]
  items = batch["items"]
  cut_rng, mask_rng = jax.random.split(ctx.term_rng)
  if ctx.options.get("prefix_prob", 0.0) > 0:
    items = drop_newest(items, cut_rng, ctx.options.prefix_prob)
  valid = items > 0
  draw = jax.random.uniform(mask_rng, items.shape) < ctx.options.mask_prob
  last = jnp.arange(items.shape[1])[None, :] == items.shape[1] - 1  # right-aligned: the newest item
  masked = valid & (draw | last)
  mask_id = ctx.num_items + 1
  inputs = jnp.where(masked, mask_id, items)
  targets = jnp.where(masked, items, 0)
  hidden, table, bias = ctx.forward(inputs)
  return losses.full_softmax(hidden, targets, table, bias, num_items=ctx.num_items, vocab_shards=ctx.vocab_shards)


def drop_newest(items, rng, prob: float):
  """Right-aligned windows [batch, len]: with probability `prob` a row drops its newest d items
  (d uniform in [0, n - 2] for a row of n items) and stays right-aligned; other rows are kept."""
  length = items.shape[1]
  n = (items > 0).sum(axis=1)
  cut_rng, keep_rng = jax.random.split(rng)
  drop = jax.random.randint(cut_rng, n.shape, 0, jnp.maximum(n - 1, 1))
  drop = jnp.where(jax.random.uniform(keep_rng, n.shape) < prob, drop, 0)
  index = jnp.arange(length)[None, :] - drop[:, None]
  return jnp.where(index >= 0, jnp.take_along_axis(items, jnp.clip(index, 0), axis=1), 0)


def cl4srec(ctx: TermContext):
  """CL4SRec's contrastive term (Xie et al., 2022): two augmented views of each training sequence
  (data.augment) are encoded, and each view's last hidden state must pick its partner among the
  2N - 1 other views of the batch (NT-Xent over cosine similarities / cl4srec.temperature)."""
  batch = ctx.batches["target"]
  n = batch["view_a"].shape[0]
  rng_a, rng_b = jax.random.split(ctx.rng)
  h_a = ctx.module.apply({"params": ctx.params}, batch["view_a"], deterministic=False, rngs={"dropout": rng_a},
                         method="encode")[:, -1]
  h_b = ctx.module.apply({"params": ctx.params}, batch["view_b"], deterministic=False, rngs={"dropout": rng_b},
                         method="encode")[:, -1]
  z = jnp.concatenate([h_a, h_b]).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
  sim = z @ z.T / ctx.options.temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -1e9, sim)  # a view is not its own candidate
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_probs = jax.nn.log_softmax(sim, axis=-1)
  return -log_probs[jnp.arange(2 * n), partner].mean(), jnp.asarray(2 * n, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen model for distillation: its module, params and, per student item id, the teacher's
  id of the same item (`id_map` [student vocab], 0 where the student id is no item or one the
  teacher does not know). The teacher reads the student's inputs in its own ids (an item it does
  not know is a blank, like padding) and scores the student's items it knows."""

  module: Any
  params: Any
  id_map: Any

  def inputs(self, inputs):
    """The student's inputs [batch, len] in the teacher's item ids."""
    return jnp.asarray(self.id_map)[inputs]

  def hidden(self, inputs):
    """The teacher's hidden states [batch, len, teacher embed]."""
    return self.module.apply({"params": self.params}, self.inputs(inputs), deterministic=True, method="encode")

  def logits(self, inputs):
    """Teacher scores of every student item at every position: [batch, len, student vocab] (fp32);
    the items it does not know (`known` False) get its padding row's score: mask them."""
    hidden, table, bias = self.module.apply({"params": self.params}, self.inputs(inputs), deterministic=True)
    scores = common.score_items(hidden, table, bias)
    return jax.lax.stop_gradient(scores[..., self.id_map])

  @property
  def known(self):
    """[student vocab] bool: the student's items the teacher knows."""
    return jnp.asarray(self.id_map) > 0


def _student_and_teacher(ctx: TermContext):
  """(student logits, teacher logits) [batch, len, vocab] over the real items the teacher knows
  (others -1e9: distillation acts on the catalogue both models share, the next-item terms train
  the rest), and the positions that count (targets > 0)."""
  if ctx.teacher is None:
    raise ValueError("distillation terms need a teacher: transfer.strategy=distill with transfer.distill.teacher")
  batch = ctx.batches["target"]
  hidden, table, bias = ctx.forward(batch["inputs"])
  student = common.score_items(hidden, table, bias)
  ids = jnp.arange(student.shape[-1])
  shared = (ids >= 1) & (ids <= ctx.num_items) & ctx.teacher.known
  student = jnp.where(shared, student, -1e9)
  teacher = jnp.where(shared, ctx.teacher.logits(batch["inputs"]), -1e9)
  return student, teacher, (batch["targets"] > 0).astype(jnp.float32)


def distill_logits(ctx: TermContext):
  """Logit distillation (Hinton et al., 2015): T^2 KL(softmax(teacher / T) || softmax(student / T))
  over the catalogue at every position, T = distill_logits.temperature. With a one-hot teacher and
  T = 1 it is the next-item cross-entropy."""
  student, teacher, weight = _student_and_teacher(ctx)
  t = ctx.options.temperature
  p_teacher = jax.nn.softmax(teacher / t, axis=-1)
  kl = jnp.sum(p_teacher * (jax.nn.log_softmax(teacher / t, axis=-1) - jax.nn.log_softmax(student / t, axis=-1)), -1)
  n = weight.sum()
  return (t * t) * (kl * weight).sum() / jnp.maximum(n, 1.0), n


def distill_hidden(ctx: TermContext):
  """Hidden-state matching (FitNets-style): the student's hidden states, through its learned
  projection head (`project`, added by transfer.strategy=distill), regress the teacher's (mean
  squared error over the valid positions)."""
  if ctx.teacher is None:
    raise ValueError("distillation terms need a teacher: transfer.strategy=distill with transfer.distill.teacher")
  inputs = ctx.batches["target"]["inputs"]
  student, _, _ = ctx.forward(inputs)
  projected = ctx.module.apply({"params": ctx.params}, student, method="project").astype(jnp.float32)
  teacher = jax.lax.stop_gradient(ctx.teacher.hidden(inputs)).astype(jnp.float32)
  # positions the teacher reads as items (an item it does not know is a blank there)
  weight = ((inputs > 0) & (ctx.teacher.inputs(inputs) > 0)).astype(jnp.float32)
  n = weight.sum()
  per_position = ((projected - teacher) ** 2).mean(-1)
  return (per_position * weight).sum() / jnp.maximum(n, 1.0), n


def distill_ranking(ctx: TermContext):
  """Ranking distillation (after Tang & Wang, 2018): the teacher's top-K items at each position are
  the student's soft positives, weighted by 1/rank (normalised): - sum_k w_k log softmax(student)[k]."""
  student, teacher, weight = _student_and_teacher(ctx)
  k = int(ctx.options.top_k)
  scores, top = jax.lax.top_k(teacher, k)  # [batch, len, k]
  # 1/rank weights over the top items the teacher knows (fewer than K when it knows fewer items)
  w = (1.0 / jnp.arange(1, k + 1, dtype=jnp.float32)) * (scores > -1e8)
  w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-9)
  log_p = jnp.take_along_axis(jax.nn.log_softmax(student, axis=-1), top, axis=-1)
  loss = -(jnp.where(w > 0, log_p, 0.0) * w).sum(-1)
  n = weight.sum()
  return (loss * weight).sum() / jnp.maximum(n, 1.0), n


@jax.custom_vjp
def reverse_gradient(x, lam):
  """Identity forward; the gradient is multiplied by -lam on the way back (Ganin & Lempitsky)."""
  return x


def _reverse_fwd(x, lam):
  return x, lam


def _reverse_bwd(lam, g):
  return (-lam * g, jnp.zeros_like(lam))


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def ganin_lambda(progress, gamma: float = 10.0):
  """The DANN schedule: 2 / (1 + exp(-gamma p)) - 1, from 0 at the start to ~1 at the end."""
  return 2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0


def domain_adversarial(ctx: TermContext):
  """DANN's domain loss: the last hidden states of a target and a source batch pass a
  gradient-reversal layer (lambda = lambda_max * ganin_lambda(progress)) into the model's domain
  discriminator (`discriminate`, a head added by transfer.strategy=dann), trained with binary
  cross-entropy to tell source (1) from target (0). Reports the discriminator's accuracy
  (0.5 = the domains are confused) and lambda."""
  reps = []
  for i, stream in enumerate(("target", "source")):
    rng = jax.random.fold_in(ctx.rng, i)
    reps.append(ctx.module.apply({"params": ctx.params}, ctx.batches[stream]["inputs"], deterministic=False,
                                 rngs={"dropout": rng}, method="domain_features")[:, -1])
  lam = ctx.options.lambda_max * ganin_lambda(jnp.asarray(ctx.progress, jnp.float32), ctx.options.gamma)
  z = reverse_gradient(jnp.concatenate(reps).astype(jnp.float32), lam)
  logits = ctx.module.apply({"params": ctx.params}, z, method="discriminate").astype(jnp.float32)
  labels = jnp.concatenate([jnp.zeros(len(reps[0])), jnp.ones(len(reps[1]))])
  loss = jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  accuracy = jnp.mean(((logits > 0).astype(jnp.float32) == labels).astype(jnp.float32))
  return loss, jnp.asarray(len(labels), jnp.float32), {"domain_accuracy": accuracy, "lambda": lam}


def orthogonality(ctx: TermContext):
  """The difference loss of domain separation networks (Bousmalis et al., 2016): on each stream's
  batch, the last shared and private states (centred over the batch, each row L2-normalised)
  should be orthogonal: mean over both streams of mean((S^T P)^2). Needs a shared-private model
  (transfer.strategy=shared_private)."""
  if not hasattr(ctx.module, "shared_private"):
    raise ValueError("objective term 'orthogonality' needs a shared-private model: "
                     "transfer.strategy=shared_private")
  total = 0.0
  for i, stream in enumerate(("target", "source")):
    shared, private = ctx.module.apply({"params": ctx.params}, ctx.batches[stream]["inputs"], False, stream,
                                       rngs={"dropout": jax.random.fold_in(ctx.rng, i)}, method="shared_private")

    def unit(x):
      x = x[:, -1].astype(jnp.float32)
      x = x - x.mean(0, keepdims=True)
      return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    total = total + jnp.mean((unit(shared).T @ unit(private)) ** 2)
  n = ctx.batches["target"]["inputs"].shape[0] + ctx.batches["source"]["inputs"].shape[0]
  return total / 2, jnp.asarray(n, jnp.float32)


def _with_item_table(params, path: str, table):
  """A copy of the param tree with the leaf at `path` ('a/b') replaced."""
  *parents, leaf = path.split("/")
  out = dict(params)
  node = out
  for name in parents:
    node[name] = dict(node[name])
    node = node[name]
  node[leaf] = table
  return out


def adversarial_examples(ctx: TermContext):
  """Adversarial training examples on the target (as in adversarial personalized ranking, He et
  al., 2018): the item table (its role, so the input embeddings and the output table of any
  encoder) and/or the sequence representations (the hidden states that score the next item),
  per adversarial_examples.perturb, are perturbed by the projected-gradient ascent of the
  next-item loss on this batch: adversarial_examples.steps steps of size epsilon / steps, each
  item row's (each position's) perturbation projected on the L2 ball of radius epsilon * (that
  row's / state's norm); the loss at the perturbed point is the term. The perturbation is a
  constant for the update (the model learns to be robust to it)."""
  path = ctx.module.roles().item_table
  batch = ctx.batches["target"]
  table = ctx.params
  for name in path.split("/"):
    table = table[name]
  perturb = tuple(ctx.options.perturb)
  clean_hidden = ctx.module.apply({"params": ctx.params}, batch["inputs"], deterministic=True)[0]
  radius = {"items": ctx.options.epsilon * jnp.linalg.norm(table, axis=-1, keepdims=True),
            "sequence": ctx.options.epsilon * jax.lax.stop_gradient(
                jnp.linalg.norm(clean_hidden.astype(jnp.float32), axis=-1, keepdims=True))}

  def loss_at(delta, params=ctx.params, forward=None):
    tree = _with_item_table(params, path, table + delta["items"])
    if forward is None:
      hidden, out_table, bias = ctx.module.apply({"params": tree}, batch["inputs"], deterministic=True)
    else:
      hidden, out_table, bias = forward(tree, batch["inputs"])
    hidden = hidden + delta["sequence"].astype(hidden.dtype)
    return losses.full_softmax(hidden, batch["targets"], out_table, bias, num_items=ctx.num_items,
                               vocab_shards=ctx.vocab_shards)

  delta = {"items": jnp.zeros_like(table), "sequence": jnp.zeros(clean_hidden.shape, jnp.float32)}
  for _ in range(int(ctx.options.steps)):
    g = jax.grad(lambda d: loss_at(d)[0])(delta)
    for kind in perturb:
      step = g[kind] / jnp.maximum(jnp.linalg.norm(g[kind], axis=-1, keepdims=True), 1e-12)
      moved = delta[kind] + radius[kind] / ctx.options.steps * step
      norm = jnp.linalg.norm(moved, axis=-1, keepdims=True)
      delta[kind] = moved * jnp.minimum(1.0, radius[kind] / jnp.maximum(norm, 1e-12))
  delta = jax.lax.stop_gradient(delta)
  loss, count = loss_at(delta, forward=ctx.forward_with)
  report = {}
  if "items" in perturb:
    report["perturbation_norm"] = jnp.linalg.norm(delta["items"]) / jnp.maximum(jnp.linalg.norm(table), 1e-12)
  if "sequence" in perturb:
    report["sequence_perturbation_norm"] = (jnp.linalg.norm(delta["sequence"])
                                            / jnp.maximum(jnp.linalg.norm(clean_hidden.astype(jnp.float32)), 1e-12))
  return loss, count, report


TERMS: dict[str, Term] = {t.name: t for t in (
    Term("full_softmax", ("target",), "causal",
         _next_item(losses.full_softmax, vocab_shards=lambda c: c.vocab_shards),
         "next-item cross-entropy over the whole catalogue"),
    Term("chunked_softmax", ("target",), "causal", _next_item(
        losses.chunked_softmax, chunk_size=lambda c: c.options.chunk_size, vocab_shards=lambda c: c.vocab_shards),
         "full_softmax computed in vocab chunks: never holds [batch, len, vocab] (million-item catalogues)",
         {"chunk_size": 2048}),
    Term("sampled_softmax", ("target",), "causal", _next_item(
        losses.sampled_softmax, num_negatives=lambda c: c.options.num_negatives,
        sampling_probs=lambda c: c.sampling_probs),
         "next-item softmax over shared sampled negatives, logQ-corrected",
         # sampling: uniform | popularity (negatives drawn by training counts, logQ-corrected)
         {"num_negatives": 256, "sampling": "uniform"}),
    Term("bce", ("target",), "causal", _next_item(losses.bce_one_negative),
         "the original SASRec loss: BCE on the target vs one uniform negative"),
    Term("source_full_softmax", ("source",), "causal",
         _next_item(losses.full_softmax, stream="source", vocab_shards=lambda c: c.vocab_shards),
         "next-item cross-entropy on the source stream (its items in the model's vocabulary)"),
    Term("distill_logits", ("target", "teacher"), "causal", distill_logits,
         "soft targets of a teacher model (transfer.strategy=distill)", {"temperature": 2.0}),
    Term("distill_hidden", ("target", "teacher"), "causal", distill_hidden,
         "the student's projected hidden states regress the teacher's (transfer.strategy=distill)"),
    Term("distill_ranking", ("target", "teacher"), "causal", distill_ranking,
         "the teacher's top-K items as weighted positives (transfer.strategy=distill)", {"top_k": 10}),
    Term("adversarial_examples", ("target",), "causal", adversarial_examples,
         "next-item loss at a PGD-perturbed item table and sequence representations (adversarial examples)",
         # radius relative to each row's / state's norm; 1 step = FGSM; perturb: items and/or sequence
         {"epsilon": 0.1, "steps": 1, "perturb": ("items", "sequence")}),
    Term("domain_adversarial", ("target", "source"), "any", domain_adversarial,
         "DANN: a domain discriminator through gradient reversal (needs transfer.strategy=dann)",
         {"gamma": 10.0, "lambda_max": 1.0}),
    Term("orthogonality", ("target", "source"), "any", orthogonality,
         "shared and private states kept orthogonal (needs transfer.strategy=shared_private)"),
    Term("cloze", ("target",), "bidirectional", cloze, "BERT4Rec's masked-item prediction",
         # mask_prob: share of positions masked (plus the newest one); prefix_prob: share of
         # windows cut at a random point first (see cloze)
         {"mask_prob": 0.2, "prefix_prob": 1.0}),
    Term("cl4srec", ("target",), "any", cl4srec, "contrast two augmented views of each sequence",
         {"temperature": 0.5}, fields=("view_a", "view_b")),
)}


@dataclasses.dataclass(frozen=True)
class Objective:
  terms: tuple[tuple[Term, float], ...]
  options: dict  # term name -> its config sub-dict

  @property
  def streams(self) -> tuple[str, ...]:
    return tuple(sorted({s for t, _ in self.terms for s in t.streams}))

  @property
  def names(self) -> list[str]:
    return [t.name for t, _ in self.terms]

  @property
  def fields(self) -> tuple[str, ...]:
    """Batch fields the terms read beyond inputs / targets / items (the pipeline provides them)."""
    return tuple(sorted({f for t, _ in self.terms for f in t.fields}))

  def loss(self, module, params, batches: dict, rng, num_items: int, sampling_probs=None, progress=0.0,
           teacher=None, vocab_shards: int = 1):
    """(weighted total, {name: value}) for one step: each term's loss under its name, how many
    positions it averaged over as "<term>/count", and the extra values a term reports (e.g.
    domain_accuracy) as "<term>/<name>"; each term gets its own rng."""
    total, parts = 0.0, {}
    for i, (term, weight) in enumerate(self.terms):
      ctx = TermContext(module, params, batches, jax.random.fold_in(rng, i), num_items,
                        self.options.get(term.name), sampling_probs, progress, teacher, vocab_shards)
      value, count, *extra = term.fn(ctx)
      parts[term.name] = value
      parts[f"{term.name}/count"] = jnp.asarray(count, jnp.float32)
      for k, v in (extra[0] if extra else {}).items():
        parts[f"{term.name}/{k}"] = v
      total = total + weight * value
    return total, parts


def fitting_term(name: str, causal: bool, encoder: str = "") -> Term:
  """TERMS[name] if it fits an encoder of that kind (causal or bidirectional), else an error naming
  the terms that do."""
  if name not in TERMS:
    raise ValueError(f"Unknown objective term {name!r}; valid: {sorted(TERMS)}")
  term = TERMS[name]
  kind = "causal" if causal else "bidirectional"
  if term.encoders not in ("any", kind):
    fits = sorted(n for n, t in TERMS.items() if t.encoders in ("any", kind))
    raise ValueError(f"objective term {name!r} needs a {term.encoders} encoder; {encoder or 'this encoder'} "
                     f"is {kind}: terms that apply: {fits}")
  return term


def assemble(objective_cfg, causal: bool, available_streams=("target",), encoder: str = "",
          extra_terms=()) -> Objective:
  """The objective of `objective_cfg` for an encoder (causal or bidirectional), plus the terms a
  transfer strategy adds (`extra_terms`); unknown names, a term that does not fit the encoder,
  and a stream the data cannot provide are errors."""
  pairs = [tuple(p) for p in objective_cfg.terms]
  if not pairs:
    pairs = [("full_softmax" if causal else "cloze", 1.0)]
  pairs += [tuple(p) for p in extra_terms]
  terms = []
  for pair in pairs:
    if len(pair) != 2:
      raise ValueError(f"objective.terms entries are (name, weight) pairs; got {pair!r}")
    name, weight = pair
    term = fitting_term(name, causal, encoder)
    missing = [s for s in term.streams if s not in available_streams]
    if missing:
      hint = (" (the source stream needs data.source_domain, set by a pretrain -> transfer experiment)"
              if "source" in missing else " (the teacher stream needs transfer.strategy=distill)"
              if "teacher" in missing else "")
      raise ValueError(f"objective term {name!r} reads the stream(s) {missing}, which this run does not "
                       f"provide; available: {list(available_streams)}{hint}")
    if not float(weight) > 0:
      raise ValueError(f"objective term {name!r} has weight {weight!r}; weights must be > 0")
    terms.append((term, float(weight)))
  if len({t.name for t, _ in terms}) != len(terms):
    raise ValueError(f"objective.terms names a term twice: {[t.name for t, _ in terms]}")
  options = {name: objective_cfg.get(name) for name in TERMS}
  sampled = objective_cfg.get("sampled_softmax")
  if sampled is not None and sampled.sampling not in ("uniform", "popularity"):
    raise ValueError(f"Unknown objective.sampled_softmax.sampling {sampled.sampling!r}; "
                     "valid: ['popularity', 'uniform']")
  cloze_cfg = objective_cfg.get("cloze")
  if cloze_cfg is not None and not 0.0 < cloze_cfg.mask_prob < 1.0:
    raise ValueError(f"objective.cloze.mask_prob={cloze_cfg.mask_prob!r} must be in (0, 1)")
  if cloze_cfg is not None and not 0.0 <= cloze_cfg.get("prefix_prob", 0.0) <= 1.0:
    raise ValueError(f"objective.cloze.prefix_prob={cloze_cfg.prefix_prob!r} must be in [0, 1]")
  adv = objective_cfg.get("adversarial_examples")
  if adv is not None and (not adv.epsilon > 0 or int(adv.steps) < 1):
    raise ValueError(f"objective.adversarial_examples needs epsilon > 0 and steps >= 1; got epsilon="
                     f"{adv.epsilon!r}, steps={adv.steps!r}")
  if adv is not None and (not tuple(adv.perturb) or set(adv.perturb) - {"items", "sequence"}):
    raise ValueError(f"objective.adversarial_examples.perturb={tuple(adv.perturb)!r}: a non-empty subset of "
                     "['items', 'sequence']")
  distill = objective_cfg.get("distill_logits")
  if distill is not None and not distill.temperature > 0:
    raise ValueError(f"objective.distill_logits.temperature={distill.temperature!r} must be > 0")
  ranking = objective_cfg.get("distill_ranking")
  if ranking is not None and int(ranking.top_k) < 1:
    raise ValueError(f"objective.distill_ranking.top_k={ranking.top_k!r} must be >= 1")
  cl_cfg = objective_cfg.get("cl4srec")
  if cl_cfg is not None and not cl_cfg.temperature > 0:
    raise ValueError(f"objective.cl4srec.temperature={cl_cfg.temperature!r} must be > 0")
  return Objective(tuple(terms), options)
