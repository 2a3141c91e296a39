"""Runtime hooks: what a transfer strategy or a data option needs while a run trains, beyond the
surgery its `Strategy` declares (xrec/transfer/strategies.py). The training loop
(xrec/train/loop.py) knows no strategy: it builds the hooks a run wants (`active`) and calls each,
in registry order, at fixed points of its recipe:

  point         when                                  method (every one optional)
  configure     before the model is built             configure(run) -> {config field: value}
                                                        (the loop applies them: run.spec.replace)
  data          after the model is built              prepare_data(run)          (may replace run.domain)
  streams       what the objective may read           provides: stream names it adds (e.g. "teacher")
  state         the train state exists                init_state(run, state) -> pytree carried in the train
                                                        state under `state_key` (sharded like the params,
                                                        checkpointed and restored with them)
                                                      frozen(run, state) -> constants under
                                                        state["frozen"][name] (replicated, never
                                                        checkpointed: rebuilt on every start)
  loaded        after the load priority               after_init(run, state) -> state
  in the step   inside the jitted update              objective_inputs(state) -> extra objective inputs
                                                      penalty(params, state) -> (loss, {stat: value})
                                                      after_update(params, state) -> params
  between       after each step, on the host          after_step(run, step, state) -> state
  best          validation                            min_best_step(run): earlier steps are no candidates
  results       results.json                          results(run, final) -> {section: {key: value}}

A strategy names the hooks it runs with in `strategies.RUNTIME` (preset -> hook names); a data
hook says itself when a config wants it (`wanted`). Adding a hook: its module here with one class,
one line in HOOKS, a test (docs/architecture.md, "Runtime hooks").
"""

from __future__ import annotations

from xrec.train.hooks import cross_user, distill, domains, item_text, l2sp, prune, synthesis
from xrec.train.hooks.base import Final, Hook, Run, merge_results  # noqa: F401 (the protocol)

# name -> hook class, in the order the loop calls them
HOOKS: dict[str, type[Hook]] = {h.name: h for h in (
    item_text.ItemText, distill.Distill, cross_user.CrossUser, synthesis.Synthesis, prune.Prune,
    domains.Domains, l2sp.L2SP)}


def active(spec, runtime: tuple[str, ...]) -> list[Hook]:
  """The hooks a run with `spec` (xrec.config.RunSpec) and a strategy naming `runtime` hooks runs,
  fresh instances; a runtime name that no hook has is an error."""
  unknown = [n for n in runtime if n not in HOOKS]
  if unknown:
    raise ValueError(f"runtime hook(s) {unknown} are not registered; registered: {sorted(HOOKS)}")
  return [cls() for cls in HOOKS.values() if cls.wanted(spec, runtime)]
