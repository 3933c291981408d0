"""Does HESSO-CRIC's loss term change its final selection? (digits CNN, the study's schedule)

    python -m experiments.cric_selection --seed 0 --sparsities 0.5 0.7 0.9

The trajectory up to CRIC's termination step depends on saliency only (probes zero and restore,
cycles rank by saliency), so the loss mode (``value=`` / ``value_fn=``) and the loss criterion
enter only :func:`hesso_jax.optim._cric.final_selection`. This trains to the latest possible
termination step once per sparsity and re-runs the final ranking on the recorded state with:

* ``new``: the library's criterion (log ratio x mean saliency) on same-minibatch ratios,
* ``old``: v0.1's normalisation (the log-ratio term divided by its own norm) on ``value=`` ratios
  (with today's band costs, which take a running maximum over each space's trials),
* ``w=0``: no loss term (saliency only),

with the study's ``multiple_of=8`` and with ``multiple_of=1``, and prints removed groups per space.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from experiments import study as St
from experiments.sweep import comparable_cric_schedule
from hesso_jax.optim import _common as cm
from hesso_jax.optim import _cric as C
from hesso_jax.optim import _saliency as sal


def selection(state, loss_ratio, w: float, sp, ktab, R, m: int, *, old: bool = False) -> np.ndarray:
  """The final selection on ``state``'s recorded saliency with another loss term."""
  if not old:
    return np.asarray(C.final_selection(state.score_sum, state.score_count, loss_ratio, w, sp, ktab,
                                        R, m))
  n = state.score_count
  ms = jnp.where(n > 0, state.score_sum / jnp.maximum(n, 1), jnp.inf)
  final = ms + w * sal.normalize(C.loss_criterion(loss_ratio, ms, sp, ktab))
  final = jnp.where(jnp.isfinite(final), final, jnp.inf)
  G = sp.num_groups
  return np.asarray(cm.select_groups(final, jnp.ones((G,), bool), R, sp, jnp.zeros((G,), bool), m))


def main(seed: int, sparsities: list[float]) -> None:
  t = St.Task("digits_cnn", False, seed)
  sp = t.space_p
  sizes = [s.size for s in sp.prunable_spaces]
  ids = sp.space_ids()
  kw = comparable_cric_schedule(t.steps, len(sizes), max_cycle_period=5)
  sched = C.cric_schedule(sp, **{k: v for k, v in kw.items() if k != "tolerance"})
  trials = (0.25, 0.5, 0.75)
  ktab = np.array([[max(1, int(np.floor(n * tau))) for tau in trials] for n in sizes], np.int32)
  tx = hj.hesso_cric(t.base(t.steps), sp, target_group_sparsity=0.5, multiple_of=8, **kw)
  ratio_v = t.train(t.variables, tx, sched["cycles_start"], value_fn=False).opt_state.loss_ratio
  print(f"seed {seed}: space sizes {sizes}; value= loss ratios {np.round(ratio_v, 3).tolist()}")
  for s in sparsities:
    tx = hj.hesso_cric(t.base(t.steps), sp, target_group_sparsity=s, multiple_of=8, **kw)
    st = t.train(t.variables, tx, sched["latest_end"] + 1, value_fn=True).opt_state
    R = cm.target_num_groups(sp.num_groups, s)
    ratio = st.loss_ratio
    print(f"  s={s} end={int(st.end)} R={int(R)} ref_loss={float(st.ref_loss):.3g} "
          f"value_fn ratios {np.round(ratio, 3).tolist()}")
    for m in (8, 1):
      sels = {"new": selection(st, ratio, 1.0, sp, ktab, R, m),
              "old": selection(st, ratio_v, 1.0, sp, ktab, R, m, old=True),
              "w=0": selection(st, ratio, 0.0, sp, ktab, R, m)}
      if m == 8:
        assert (sels["new"] == np.asarray(st.redundant)).all(), "recomputed != recorded selection"
      for k, v in sels.items():
        counts = [int(v[ids == i].sum()) for i in range(len(sizes))]
        print(f"    multiple_of={m} {k:8s} removed per space {counts}  "
              f"same groups as new: {bool((v == sels['new']).all())}")


if __name__ == "__main__":
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
  a = ap.parse_args()
  main(a.seed, a.sparsities)
