"""The core of the ConfigDict shared by configs/*.py (xrec/defaults.py base_config() completes it
with the defaults each registry declares, so this module imports no registry), its validation, and
the door where it stops: `resolve_spec` turns a validated config into a run's typed pieces
(RunSpec; the last section of this file), which is all that the code below the door sees.

Every field that exists here can be overridden from the command line
(`--config.model.sasrec.num_layers=4`); configs are locked, so a misspelt field fails
before any work with the valid names.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any

import ml_collections


# logical axis -> mesh axis (None = replicated). The item table and the scoring
# over the catalogue are split on 'vocab' over 'model'.
DEFAULT_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("layers", None),
    ("length", None),
)


def copy_config(config):
  """A deep copy of a ConfigDict, locks and type safety kept. copy.deepcopy probes every node for
  __deepcopy__ and ml_collections answers each miss with a did-you-mean search over the node's keys
  (difflib), which made the copies 2.5-5x slower than this; a config holding FieldReferences (a
  user's config may link two fields) is deep-copied so that the link survives."""
  if _has_references(config):
    return copy.deepcopy(config)
  out = config.copy_and_resolve_references()
  _copy_mutable_leaves(out)  # it shares leaf values: a list in a copy must not be the original's
  return out


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes)


def _has_references(node) -> bool:
  return any(isinstance(v, ml_collections.FieldReference)
             or (isinstance(v, ml_collections.ConfigDict) and _has_references(v))
             for v in node.values(preserve_field_references=True))


def _copy_mutable_leaves(node) -> None:
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      _copy_mutable_leaves(value)
    elif not isinstance(value, _IMMUTABLE) and not (
        isinstance(value, tuple) and all(isinstance(v, _IMMUTABLE) for v in value)):
      with node.unlocked():
        node[key] = copy.deepcopy(value)


def core_config() -> ml_collections.ConfigDict:
  """The fields xrec itself defines; xrec/defaults.py base_config() adds the registries' own."""
  return copy_config(_core_prototype())


@functools.lru_cache(maxsize=1)
def _core_prototype() -> ml_collections.ConfigDict:
  return _core_fields()


def _core_fields() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"
  c.data.domain = "source"  # split of the dataset to train and evaluate on
  # the domain of the "source" batch stream (objective terms that read it: source_full_softmax,
  # domain_adversarial); a pretrain -> transfer experiment sets it to experiment.source_domain
  c.data.source_domain = ""
  # Few-shot: the fraction of the domain's users whose sequences TRAIN (nested by fraction_seed).
  # It never changes who is evaluated: see data.eval_population (xrec/data/pipeline.py).
  c.data.user_fraction = 1.0
  c.data.fraction_seed = 0
  # The users whose valid / test targets are scored, identical for every fraction, strategy and
  # seed: "all" (every user of the domain, each from its own history) | "unseen" (a fixed
  # eval_unseen_fraction of the users, drawn with eval_population_seed, never used for training).
  # Augmentation of training examples (xrec/data/augment.py), composable with any strategy:
  # with probability `prob` an example is built from one operation of `ops` (empty = off); the
  # ratios set each operation's strength. Contrastive terms (objective cl4srec) take two views.
  c.data.augment = ml_collections.ConfigDict(dict(
      ops=(), prob=0.5, crop=0.6, mask=0.3, reorder=0.3, substitute=0.2, insert=0.2))
  # Synthesis for scarce target data (ASReP-style, xrec/train/synthesis.py), composable with any
  # strategy: a finished run's model (`model`: its workdir, "" = train.init_from) generates up to
  # `num_items` pseudo-interactions (0 = off) for each training user whose training part has fewer
  # than `min_len` items, one at a time, stopping at the first whose probability under the model is
  # below `confidence`. direction "backward" prepends items before the history (the generator must
  # have been trained on time-reversed sequences, data.reverse=True, as ASReP pretrains; the
  # prepended items are part of the evaluation input too), "forward" appends continuations after
  # the training part (training windows only).
  c.data.synthesis = ml_collections.ConfigDict(dict(
      num_items=0, min_len=10, confidence=0.0, direction="backward", model=""))
  c.data.reverse = False  # every sequence time-reversed: the run learns to predict the previous item
  c.data.eval_population = "all"
  c.data.eval_unseen_fraction = 0.2
  c.data.eval_population_seed = 0
  c.data.data_dir = ""  # "" = $XREC_DATA_DIR or ~/.cache/xrec/datasets
  c.data.synthetic = ml_collections.ConfigDict(dict(
      scenario="cross_region",
      num_source_users=3000, num_target_users=3000,
      num_source_items=1000, num_target_items=1000,
      shift=0.2, popularity_skew=1.0,
      user_overlap=-1.0, item_overlap=-1.0,  # shares of target users / items in the source; < 0: the scenario's
      min_seq_len=5, mean_seq_len=20.0, max_seq_len=100, seed=0,
      # item text (xrec/data/synthetic.py): words per item, share from the item's own topic, words per topic
      text_words=6, text_signal=0.8, text_vocab=25))
  # Item text (xrec/data/text.py), read when a model represents items by their text: the item
  # features joined into one string per item, in this order ("" = every field the source has of
  # title, text, brand, categories, genres, attributes, description); `missing` is what an item
  # without any of them gets: "empty" (an empty string), "attributes" (every other feature the
  # source has for it) or "error".
  c.data.text = ml_collections.ConfigDict(dict(fields=(), missing="empty"))

  # Real sources (docs/datasets.md). data.name = "movielens" | "interactions".
  def interaction_files():  # data.files, and data.scenario.target_files for cross_app
    return ml_collections.ConfigDict(dict(
        format="sasrec",  # sasrec | s3rec | recbole | csv | jsonl
        path="",
        encoding="utf-8",
        delimiter=",",  # csv: ',' | '\\t' (or 'tab') for TSV | any single character
        header=True,  # csv: first line names the columns
        # column / field names (csv with header, recbole, jsonl) or 0-based indices (csv without header)
        user_column="user_id", item_column="item_id", rating_column="rating", timestamp_column="timestamp",
        timestamp_unit="s",  # s | ms | us | ns | iso
        on_malformed="raise",  # raise (error with file:line) | skip (counted in the statistics)
        # auto | file | shared: are user / item ids this file's own ("<file name>:<id>": the sasrec and
        # s3rec releases number every file 1..N) or raw keys shared with other files? auto = file for
        # sasrec / s3rec, shared for the rest (xrec/data/formats.py key_namespace). Named `keys` until
        # a ConfigDict's keys() method hid it from the command line (stage hashes keep that name)
        key_scope="auto",
        item_attributes_path="",  # optional item -> attributes file
        item_attributes_format="json",  # json ({"item": [attr, ...]}) | csv | jsonl
        item_attributes_key="item_id",  # csv / jsonl: column / field with the item key
        item_attributes_fields=(),  # csv / jsonl: kept columns / fields; empty = all but the key
        item_attributes_list_fields=(),  # csv: columns holding lists
        item_attributes_list_separator="|",
        item_attributes_delimiter=","))
  c.data.movielens = ml_collections.ConfigDict(dict(
      release="1m",  # 100k | 1m | 20m | 25m | latest-small
      manual_dir="",  # folder with ml-1m.zip or ml-1m/; "" = <data_dir>/manual
      download=True,  # download from GroupLens into manual_dir when absent (needs internet)
      verify_checksum=True))  # sha256 of the archive against the published one
  c.data.files = interaction_files()
  c.data.preprocess = ml_collections.ConfigDict(dict(
      min_rating=0.0,  # keep ratings >= min_rating (implicit positives); 0 = keep all
      # consecutive (drop a user's item repeated right after itself, e.g. a row written twice: it would
      # hand the model its leave-one-out target as its last input) | first | last (one row per
      # (user, item): the earliest / latest) | keep (every row); counted in the data statistics
      dedup="consecutive",
      user_core=0, item_core=0,  # k-core, iterated to a fixed point; 0 = off
      min_seq_len=3,  # leave-one-out needs >= 3
      max_seq_len=0))  # keep the most recent max_seq_len interactions per user; 0 = all
  c.data.scenario = ml_collections.ConfigDict(dict(
      kind="none",  # none (split 'main') | user_attribute | item_attribute | cross_app (splits source, target)
      attribute="",  # user: region (from zip) | gender | age | occupation | zip; item: genres | a file's field
      source_values=(), target_values=(),  # target_values empty = every other value
      multi_value_rule="drop",  # item with values on both sides: drop | first | source | target
      target_name="interactions",  # cross_app: the target source, interactions | movielens
      target_release="1m",  # cross_app with target_name=movielens
      target_files=interaction_files()))

  # The encoder (xrec/models, contract in xrec/models/base.py): fields every encoder reads, then one
  # sub-dict per encoder with its own fields (only model.<name> is read).
  c.model = ml_collections.ConfigDict()
  c.model.name = "sasrec"  # one of xrec.models.MODELS (README: the model table)
  c.model.max_len = 50
  c.model.embed_dim = 64
  c.model.dropout = 0.2
  c.model.tie_embeddings = True
  c.model.remat = False
  c.model.compute_dtype = "float32"  # "bfloat16": bf16 compute, fp32 params
  c.model.vocab_multiple = 128  # item table rows rounded up to this (even sharding on 'vocab')
  # The ID models' item table (and output table, untied) initialisation N(0, std^2); 0 =
  # 1/sqrt(embed_dim) (SASRec's reference code and SASRec+ use 0.02 with the same sqrt(embed_dim)
  # input scaling). The ID table of model.item_repr=text+id keeps 1/sqrt(embed_dim).
  c.model.item_init_std = 0.0
  # A learned per-item output bias [vocab] added to every score (popularity the encoder need not
  # learn); False: scores are the dot products alone, as in SASRec's and SASRec+'s code (no bias
  # param, nothing for a strategy to train or load there).
  c.model.output_bias = True
  # How items enter the encoder: "id" (an ID table), "text" (their text through a pretrained
  # sentence encoder and an adaptor: ID-free, any item with a text is scored) or "text+id" (both).
  c.model.item_repr = "id"
  # Item text (xrec/train/item_text.py): the sentence encoder, "wordllama" (installed with its
  # weights), a folder with config.json, model.safetensors and vocab.txt or a Hugging Face model
  # id found in its cache; dim: its width
  # (0 = set from the encoder); experts: of the mixture-of-experts whitening adaptor (UniSRec).
  # tune: "" = the encoder is frozen (its vectors cached once); "full" or "lora" = its top
  # tune_layers layers train end to end with the model (in full, or LoRA of rank lora_rank on the
  # attention's query and value; xrec/models/text_tower.py), the layers below are cached as token
  # states; BERT-family encoders only. tokens: token slots per item (0 = the catalogue's longest
  # text, capped by the encoder); arch (the encoder's shape) and buckets (length buckets of the
  # catalogue's rows sorted by token count): set by the trainer.
  c.model.text = ml_collections.ConfigDict(dict(encoder="", dim=0, experts=8, tune="", tune_layers=1, lora_rank=8,
                                                tokens=0, arch=(), buckets=()))
  # () = item tables as wide as embed_dim; else the embedding dims the item tables keep (a model
  # whose item tables were pruned by dims, prune.kind="dims": tables [vocab, len(item_columns)],
  # looked up into those dims of the model width, scored against those dims of the hidden states)
  c.model.item_columns = ()
  # model.<encoder>: each encoder's own fields, added by xrec/defaults.py from the model registry

  # What a run minimises (xrec/train/objectives.py): a weighted sum of named terms, each logged on
  # its own. terms = ((name, weight), ...); () = the encoder's default (full_softmax for causal
  # encoders, cloze for bidirectional ones). Per-term options in the sub-dicts.
  c.objective = ml_collections.ConfigDict()
  c.objective.terms = ()  # names: full_softmax | chunked_softmax | sampled_softmax | bce | cloze | ...
  # objective.<term>: each term's options, added by xrec/defaults.py from objectives.TERMS

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"  # cosine | constant (both after linear warmup)
  c.optim.warmup_fraction = 0.1  # linear warmup over this fraction of the step budget
  c.optim.end_lr_factor = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  # The budget in optimizer steps: train.num_steps, or (num_steps = 0) num_epochs over the training
  # users. Transfer stages of an experiment need num_steps: the same budget for every strategy and
  # fraction. Early stopping (early_stopping_patience) may end a run before its budget.
  c.train.num_epochs = 20.0
  c.train.num_steps = 0
  c.train.eval_every_steps = 500
  c.train.eval_at_start = True  # step 0 is a candidate for the best checkpoint
  # extra evaluations at these steps besides every eval_every_steps, e.g. (10, 20, 30, 40): places
  # the peak of a run that overfits before its first regular evaluation (fine-tuning on few users);
  # they may set the best checkpoint but do not count toward early_stopping_patience
  c.train.eval_at_steps = ()
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 2
  c.train.log_every_steps = 50
  c.train.best_metric = "ndcg@10"  # on the validation split, higher is better
  c.train.early_stopping_patience = 0  # regular evaluations without improvement; 0 = off
  c.train.resume_from = ""  # explicit resume: another run's workdir (state, optimizer, step)
  c.train.init_from = ""  # pretrained init: a workdir whose best params initialise this model
  c.train.stop_after_steps = 0  # > 0: stop this process after that many steps (simulates a kill)
  c.train.stop_at_step = 0  # > 0: stop this process at that step (a rung of tune.halving; resumable)
  c.train.progress_bar = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.ks = (1, 5, 10, 20, 50)
  c.eval.mask_history = True  # items the user had before the target are not ranked
  # a target the user already had (a repeat), under mask_history: "rank" it like any target, or
  # "exclude" it with the history (that user then scores a miss); xrec/evaluate/metrics.py
  c.eval.target_in_history = "rank"
  # Sampled-negative evaluation beside full ranking (papers that rank against N sampled items, e.g.
  # 999): N > 0 also ranks each target against N items the user never had, drawn "uniform" or by
  # "popularity" (training interactions), seeded per (negatives_seed, user, split); reported as
  # sampled_<metric>@K. 0 = off. Full ranking stays the headline.
  c.eval.negatives = 0
  c.eval.negatives_sampling = "uniform"
  c.eval.negatives_seed = 0

  # Transfer from a pretrained model (train.init_from) with a named strategy: xrec/transfer,
  # docs/transfer.md. The presets read only the fields below.
  c.transfer = ml_collections.ConfigDict()
  c.transfer.strategy = "scratch"  # scratch | zero_shot | full_finetune | linear_probe | frozen_encoder
  #   | embedding_transfer | partial_freeze | reuse_bottom | adapter | lora | prompt | bitfit | patch
  #   | l2sp | dann | shared_private | distill | prune | multi_domain | cross_user (docs/transfer.md)
  # transfer.<group>: per-strategy options, added by xrec/defaults.py from strategies.OPTIONS
  # options every loading strategy reads
  c.transfer.lr_mult = 1.0  # lr multiplier of pretrained params that train (few-shot: try < 1)
  c.transfer.new_lr_mult = 1.0  # lr multiplier of freshly initialised params (modules, new blocks)
  c.transfer.layerwise_decay = 1.0  # full_finetune: block i of n trains at decay**(n-1-i); 1 = off
  # adapter/lora/prompt/patch/bitfit: also train the item tables? "auto" = when the source knows
  # less than min_item_overlap of the target's interactions (a frozen table of unseen rows cannot
  # learn the target's items) | "always" | "never"
  c.transfer.train_item_embeddings = "auto"
  # share of the target's interactions on items the source has (by raw key) below which the
  # catalogues count as disjoint: zero_shot is reported n/a, PEFT presets train item tables ("auto"),
  # a distillation teacher that knows less of them is refused
  c.transfer.min_item_overlap = 0.5
  # target items absent from the source start as: random (fresh rows with the pretrained rows'
  # per-dimension mean and std) | mean (every unseen item the same mean row) | zero
  c.transfer.unseen_items = "random"
  c.transfer.source_subtree = ""  # load only this subtree of the pretrained params ("" = all)
  c.transfer.rename = ()  # extra (checkpoint path regex, model path replacement) rules
  c.transfer.dont_load = ()  # extra regexes of params that keep their fresh init

  # What one launch runs (xrec/train/experiment.py): "single" = one run in the workdir;
  # "pretrain_transfer" = pretrain on source_domain once, then one run per strategy on
  # target_domain (few-shot by data.user_fraction) initialised from it, and one table.
  c.experiment = ml_collections.ConfigDict(dict(
      mode="single", source_domain="source", target_domain="target",
      strategies=("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora"),
      # a display label of a study cell that other fields make a variant of its strategy (e.g.
      # "augment+cl4srec"); reports split rows by it with metrics() "row_detail": "experiment.variant".
      # Never part of a stage's hash (experiment.* is not).
      variant="",
      # > 0: a transfer cell fails (naming the value) when its pretraining's best validation
      # train.best_metric is below this floor, e.g. 0.9 x the converged single-domain quality of
      # the source model the study's README measured; 0 = no floor
      min_pretrain_valid=0.0))
  # The pretraining stage is this config on source_domain (all its users, no transfer options)
  # with these overrides on top: any field of the config, nested as in the config
  # (e.g. c.experiment.pretrain.model = {"sasrec": {"num_layers": 4}} pretrains a deeper model).
  c.experiment.pretrain = ml_collections.ConfigDict(dict(
      train=dict(num_steps=0, num_epochs=20.0, batch_size=128, eval_every_steps=100,
                 checkpoint_every_steps=100, early_stopping_patience=0),
      optim=dict(lr=1e-3, warmup_fraction=0.1)))
  # Tuned baselines: each trained strategy's learning rate is chosen on validation
  # (train.best_metric) from these grids, per cell, as cached candidate stages
  # (xrec/train/runner.py). Empty = not tuned. lr_mult (the pretrained params' multiplier) is tuned
  # only for presets where it is not redundant with optim.lr, i.e. where params at other
  # multipliers (fresh modules or blocks) train too.
  # seed: -1 = every seed tunes its own cell; s >= 0 = the grid runs on seed s's cell only and the
  # cells of the other seeds train the values chosen there (tune once: recorded in runs.jsonl
  # tuning.tuned_on_seed and in the report's caption).
  # halving = eta >= 2: successive halving of the grid (runner.run_candidates): every candidate trains
  # to train.num_steps / eta^rungs, the best 1/eta (by validation so far) go on to the next rung,
  # ..., the survivors to the whole budget (resumed, so their results equal uninterrupted runs);
  # 0 = every candidate trains the whole budget
  # extend_at_edge = k: when the best candidate's value is the smallest or largest of its grid, one
  # more candidate one step beyond that edge (the grid's outer ratio) trains the whole budget, up to
  # k times per cell (runner.extend_at_edge; recorded in tuning.extended); 0 = the grid as given
  c.tune = ml_collections.ConfigDict(dict(lr=(), lr_mult=(), seed=-1, halving=0, rungs=2, extend_at_edge=0))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
  c.sharding = ml_collections.ConfigDict(dict(rules=DEFAULT_RULES))
  return c


# Numeric fields and their valid ranges, checked in one place before any work (check_ranges):
# field -> (low, high, low inclusive, high inclusive, kind); None = unbounded; integer fields say "int".
# Every count has an upper bound: a step counter, a batch or a table past these overflows (int32 step
# counters, numpy seeds) or never finishes, after data were prepared and folders written. Every
# number must be finite (rates and multipliers have no other upper bound: a huge lr diverges, and
# divergence is caught at its first step).
MAX_COUNT = 2**31 - 1  # steps, intervals, K: the step counter is int32
MAX_SIZE = 2**24  # batch sizes, widths, lengths: far above any that fits a device
RANGES = {
    "seed": (0, 2**30, True, True, "int"),  # runs add offsets to it; numpy seeds stop at 2**32
    "data.user_fraction": (0.0, 1.0, False, True, "float"),
    "data.fraction_seed": (0, 2**30, True, True, "int"),
    "data.eval_population_seed": (0, 2**30, True, True, "int"),
    "model.max_len": (2, MAX_SIZE, True, True, "int"),
    "model.embed_dim": (1, MAX_SIZE, True, True, "int"),
    "model.dropout": (0.0, 1.0, True, False, "float"),
    "model.vocab_multiple": (1, MAX_SIZE, True, True, "int"),
    "model.item_init_std": (0.0, None, True, True, "float"),
    "model.sasrec.kernel_init_std": (0.0, None, True, True, "float"),
    "model.bert4rec.kernel_init_std": (0.0, None, True, True, "float"),
    "optim.lr": (0.0, None, False, True, "float"),
    "optim.warmup_fraction": (0.0, 1.0, True, False, "float"),
    "optim.end_lr_factor": (0.0, 1.0, True, True, "float"),
    "optim.b1": (0.0, 1.0, True, False, "float"),
    "optim.b2": (0.0, 1.0, True, False, "float"),
    "optim.weight_decay": (0.0, None, True, True, "float"),
    "optim.clip_norm": (0.0, None, True, True, "float"),  # 0 = no clipping
    "train.batch_size": (1, MAX_SIZE, True, True, "int"),
    "train.num_epochs": (0.0, 1e6, True, True, "float"),
    "train.num_steps": (0, MAX_COUNT, True, True, "int"),  # 0 = from num_epochs
    "train.eval_every_steps": (1, MAX_COUNT, True, True, "int"),
    "train.eval_at_steps": (1, MAX_COUNT, True, True, "int"),  # every step
    "train.checkpoint_every_steps": (1, MAX_COUNT, True, True, "int"),
    "train.keep_checkpoints": (1, 10**6, True, True, "int"),
    "train.log_every_steps": (1, MAX_COUNT, True, True, "int"),
    "train.early_stopping_patience": (0, MAX_COUNT, True, True, "int"),  # 0 = off
    "train.stop_after_steps": (0, MAX_COUNT, True, True, "int"),
    "train.stop_at_step": (0, MAX_COUNT, True, True, "int"),
    "eval.batch_size": (1, MAX_SIZE, True, True, "int"),
    "eval.ks": (1, MAX_COUNT, True, True, "int"),  # every K
    "eval.negatives": (0, MAX_SIZE, True, True, "int"),  # 0 = full ranking only
    "eval.negatives_seed": (0, 2**30, True, True, "int"),
    "tune.seed": (-1, 2**30, True, True, "int"),  # -1 = every seed tunes itself
    "tune.halving": (0, 2**10, True, True, "int"),  # 0 = off; else the eta of successive halving (>= 2)
    "tune.rungs": (1, 10, True, True, "int"),
    "tune.extend_at_edge": (0, 10, True, True, "int"),
    "objective.chunked_softmax.chunk_size": (1, MAX_COUNT, True, True, "int"),
    "objective.sampled_softmax.num_negatives": (1, MAX_SIZE, True, True, "int"),
    "objective.cloze.mask_prob": (0.0, 1.0, False, True, "float"),
    "objective.cloze.prefix_prob": (0.0, 1.0, True, True, "float"),
    "objective.cl4srec.temperature": (0.0, None, False, True, "float"),
    "objective.distill_logits.temperature": (0.0, None, False, True, "float"),
    "objective.distill_ranking.top_k": (1, MAX_SIZE, True, True, "int"),
    "transfer.lr_mult": (0.0, None, True, True, "float"),
    "experiment.min_pretrain_valid": (0.0, 1.0, True, True, "float"),
    "transfer.new_lr_mult": (0.0, None, True, True, "float"),
    "transfer.l2sp.alpha": (0.0, None, True, True, "float"),
    "transfer.l2sp.beta": (0.0, None, True, True, "float"),
}
# The tuning grids hold values of the fields they tune: each is checked with that field's range
# (a grid value out of range would fail every cell, or be skipped where the field is not tuned).
TUNED_FIELDS = {"tune.lr": "optim.lr", "tune.lr_mult": "transfer.lr_mult"}


def _describe_range(low, high, low_in, high_in, kind) -> str:
  left = "[" if low_in else "("
  right = "]" if high_in else ")"
  if high is None:
    return f"{'an integer' if kind == 'int' else 'a number'} {'>=' if low_in else '>'} {low} (finite)"
  return f"{'an integer' if kind == 'int' else 'a number'} in {left}{low}, {high}{right}"


def _in_range(v, low, high, low_in, high_in, kind) -> bool:
  if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
    return False
  if kind == "int" and not float(v).is_integer():
    return False
  return ((v >= low if low_in else v > low) if low is not None else True) and (
      (v <= high if high_in else v < high) if high is not None else True)


def _get(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def check_ranges(config) -> None:
  """Every field of RANGES (those the config has) and every value of the tuning grids (with the range
  of the field it tunes) holds a finite value of its type in its range; every other number of the
  config is finite and at most MAX_COUNT in size. Otherwise a ValueError names each field, the value
  and the valid range."""
  problems = []
  checks = [(field, field, bounds) for field, bounds in RANGES.items()]
  checks += [(grid, field, RANGES[field]) for grid, field in TUNED_FIELDS.items()]
  for name, tuned, (low, high, low_in, high_in, kind) in checks:
    try:
      node = _get(config, name)
    except (KeyError, AttributeError):
      continue
    values = node if isinstance(node, (tuple, list)) else (node,)
    if name == "eval.ks" and not values:
      problems.append("eval.ks=(): at least one K is needed")
    for v in values:
      if not _in_range(v, low, high, low_in, high_in, kind):
        what = f" (each value as {tuned})" if name != tuned else ""
        problems.append(f"{name}={node!r}: must be {_describe_range(low, high, low_in, high_in, kind)}{what}")
        break
  checked = set(RANGES) | set(TUNED_FIELDS)
  for field, value in dotted(config).items():
    if field in checked or field.startswith("sharding."):
      continue
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, (int, float)) and not isinstance(v, bool) and (
          not math.isfinite(v) or abs(v) > MAX_COUNT):
        problems.append(f"{field}={value!r}: must be a finite number of at most {MAX_COUNT} in size")
        break
  if problems:
    raise ValueError("invalid config values:\n  " + "\n  ".join(problems))


def model_config(model_cfg, fields: dict) -> ml_collections.ConfigDict:
  """A copy of the model piece (config.model) with `fields` (e.g. a strategy's model fields) set."""
  cfg = copy_config(model_cfg)
  with cfg.unlocked():
    cfg.update(fields)
  return cfg


def with_overrides(config, overrides: dict[str, Any], what: str = "field"):
  """A copy of `config` with dotted fields set (`{"train.num_steps": 100}`); an unknown field fails
  with the valid names at the level where it went wrong."""
  c = copy_config(config)
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node, walked = c, []
    for name in parents + [leaf]:
      if not hasattr(node, "keys") or name not in node:
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        where = ".".join(walked) or "the config"
        raise ValueError(f"{what} {field!r}: {where} has no field {name!r}; valid: {valid}")
      if name != leaf:
        node = node[name]
      walked.append(name)
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)  # sweeps may write lists where the config holds tuples
    with c.unlocked():
      try:
        node[leaf] = value
      except TypeError as e:
        raise TypeError(f"{what} {field!r}: {e}") from e
  return c


def dotted(tree, prefix: str = "") -> dict[str, Any]:
  """A nested ConfigDict / dict -> {"a.b.c": leaf} (the form `with_overrides` takes)."""
  out = {}
  items = tree.items() if hasattr(tree, "items") else []
  for key, value in items:
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(dotted(value, name + "."))
    else:
      out[name] = value
  return out


def _flag_name(arg: str) -> str | None:
  """`--config.a.b=1` / `-config.a.b` / `--noconfig.a.b` -> "config.a.b"; any other argument -> None."""
  if not arg.startswith("-") or arg in ("-", "--"):
    return None
  name = arg.lstrip("-").split("=", 1)[0]
  if name.startswith("noconfig."):
    name = name[2:]
  return name if name.startswith("config.") else None


def last_flag_wins(argv: list[str]) -> list[str]:
  """argv with every --config.FIELD override but the last of each field removed. ml_collections
  appends the values of a tuple field given twice (`--config.eval.ks='(1,5)' --config.eval.ks='(10,)'`
  gives (1, 5, 10)); a scalar field keeps its last value. Here the last value wins for every field.
  An override without "=" takes the next argument as its value unless that is another flag (a bare
  boolean)."""
  groups, i = [], 0  # (field or None, [its arguments])
  while i < len(argv):
    name = _flag_name(argv[i]) if i else None  # argv[0] is the program
    takes_next = name is not None and "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("--")
    groups.append((name, argv[i:i + 1 + takes_next]))
    i += 1 + takes_next
  last = {name: k for k, (name, _) in enumerate(groups) if name}
  return [a for k, (name, args) in enumerate(groups) if name is None or last[name] == k for a in args]


# --- the door: a run's typed pieces -------------------------------------------------------------
# A run's typed pieces, resolved once from a study cell's ConfigDict at the door of a stage.
#
# `resolve_spec(config) -> RunSpec` is called by `xrec.train.loop.train_and_evaluate` after `validate`
# (names and ranges checked) and after a zoo name in train.init_from became a folder. Below that
# door no function sees the ConfigDict: each takes the piece it needs,
#
#   spec.data        -> xrec/data (load_domain, the text of items, synthesis)
#   spec.model       -> xrec/models (models.build, with a strategy's fields: model_fields)
#   spec.objective   -> xrec/train/objectives.assemble
#   spec.optim       -> xrec/train/optimizer
#   spec.eval        -> xrec/evaluate (Evaluator, protocol)
#   spec.transfer    -> xrec/transfer (apply.prepare) and the strategy's runtime hooks
#   spec.train       -> the budget and the loop (a typed, frozen `Train`: steps, evaluation cadence,
#                       checkpoints, early stopping, what to load)
#   spec.seed, spec.mesh, spec.rules
#
# The ConfigDict pieces are copies (locked: a misspelt field fails with the valid names); `Train` is
# a frozen dataclass, so the loop cannot change its own budget. A runtime hook that sizes the model
# before it exists (xrec/train/hooks: configure) returns dotted fields, which `RunSpec.replace`
# applies by resolving again. `recorded` is the whole configuration as a dict, for results.json.

PIECES = ("data", "model", "objective", "optim", "eval", "transfer", "mesh")


@dataclasses.dataclass(frozen=True)
class Train:
  """config.train, typed: the run's budget, evaluation and checkpoint cadence, model selection and
  what it starts from."""

  batch_size: int
  num_epochs: float
  num_steps: int  # > 0: the budget in steps (num_epochs ignored)
  eval_every_steps: int
  eval_at_steps: tuple
  eval_at_start: bool
  checkpoint_every_steps: int
  keep_checkpoints: int
  log_every_steps: int
  best_metric: str
  early_stopping_patience: int
  resume_from: str
  init_from: str
  stop_after_steps: int
  stop_at_step: int
  progress_bar: bool

  @classmethod
  def of(cls, train_cfg) -> Train:
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    cast = {"int": int, "float": float, "bool": bool, "str": str, "tuple": lambda v: tuple(sorted({int(s) for s in v}))}
    return cls(**{name: cast[kind](train_cfg[name]) for name, kind in kinds.items()})

  def total_steps(self, steps_per_epoch: float, num_users: int) -> int:
    """The budget in optimizer steps; a budget shorter than one evaluation interval is an error
    (early stopping and model selection need evaluations inside the budget)."""
    every = self.eval_every_steps
    if self.num_steps > 0:
      if self.num_steps < every:
        raise ValueError(f"train.num_steps={self.num_steps} is below one evaluation interval "
                         f"(train.eval_every_steps={every}); use train.num_steps >= {every} or lower "
                         "train.eval_every_steps")
      return self._check_eval_at(self.num_steps)
    steps = max(1, math.ceil(self.num_epochs * steps_per_epoch))
    over = f"train.num_epochs={self.num_epochs:g} over {num_users} training users (batch {self.batch_size})"
    if steps > MAX_COUNT:
      raise ValueError(f"{over} is {steps:,} steps, above the {MAX_COUNT:,} a run can count; lower train.num_epochs")
    if steps < every:
      raise ValueError(f"{over} is {steps} steps, below one evaluation interval (train.eval_every_steps={every}); "
                       f"set train.num_steps >= {every} (a budget in steps) or lower train.eval_every_steps")
    return self._check_eval_at(steps)

  def _check_eval_at(self, steps: int) -> int:
    beyond = [s for s in self.eval_at_steps if s > steps]
    if beyond:
      raise ValueError(f"train.eval_at_steps={self.eval_at_steps} has steps beyond the budget of {steps} steps "
                       f"({beyond}); valid: steps 1..{steps}")
    return steps

  def stop_at(self, start_step: int) -> int | None:
    """The step this process stops at before the budget (a simulated kill, a tuning rung), if any."""
    stops = [start_step + self.stop_after_steps] if self.stop_after_steps > 0 else []
    stops += [self.stop_at_step] if self.stop_at_step > 0 else []
    return min(stops, default=None)

  def at(self, step: int, num_steps: int) -> tuple[bool, bool, bool]:
    """(evaluate, log, checkpoint) after `step` of `num_steps` (the last step does all three)."""
    last = step == num_steps
    return (step % self.eval_every_steps == 0 or last or step in self.eval_at_steps,
            step % self.log_every_steps == 0 or last,
            step % self.checkpoint_every_steps == 0 or last)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run's pieces (module docstring)."""

  seed: int
  data: ml_collections.ConfigDict
  model: ml_collections.ConfigDict
  objective: ml_collections.ConfigDict
  optim: ml_collections.ConfigDict
  eval: ml_collections.ConfigDict
  transfer: ml_collections.ConfigDict
  mesh: ml_collections.ConfigDict
  rules: tuple
  train: Train
  _config: ml_collections.ConfigDict = dataclasses.field(repr=False, compare=False)

  @property
  def recorded(self) -> dict:
    """The whole configuration (results.json "config")."""
    return self._config.to_dict()

  def replace(self, overrides: dict[str, Any]) -> RunSpec:
    """The spec with dotted fields set (`{"model.text.dim": 384}`); an unknown field fails with the
    valid names."""
    return resolve_spec(with_overrides(self._config, overrides)) if overrides else self


def resolve_spec(config) -> RunSpec:
  """The pieces of a validated config (copies: the caller's config is never changed)."""
  config = copy_config(config)
  config.lock()
  pieces = {name: config[name] for name in PIECES}
  return RunSpec(seed=int(config.seed), rules=tuple(tuple(r) for r in config.sharding.rules),
                 train=Train.of(config.train), _config=config, **pieces)
