"""Distilling a black-box target into a student MLP (to construct norms from).

Why: with its wide units in ReLU's linear regime, the frozen network *is* an
MLP of its own narrow widths (by default the target's) — block `i` computes
`relu(diag(gamma_{2i}) W_{2i} diag(gamma_{2i-1}) W_{2i-1} h + c_i)` — so fitting
its norms there is fitting a same-width student to the target, with the same
spurious local minima (a same-width ReLU teacher–student problem: measured for
target 8,8,8, ~30% of random starts reach the exact solution). In the student's
own coordinates (`sum_i d_i (d_{i-1} + 1)` numbers, 144 for 8,8,8 instead of
544 norms at width ratio 2) a Gauss–Newton step is ~14x cheaper, so many
restarts are affordable; the best student is then written into the norms by
the exact construction of docs/design.md §2 (`jaxnorm.reconstruct_batch`), which
needs only the frozen weights and the student — never the target's weights.
`widest_student` picks the student's widths from the blocks' widths alone
(for a target whose widths are unknown).

`linear_regime_norms` puts a network there from its frozen weights alone (the
shifts of docs/design.md §2 steps 2–3 with the target's bias set to zero).
`fit_student` (one seed; `vmap` it over seeds) runs `restarts` random students
on the same fixed batch: a short full-batch Adam phase, `SELECT_STEPS`
Levenberg–Marquardt steps, keeps the restart with the lowest loss and runs
the remaining Levenberg–Marquardt steps on it alone.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from jaxnorm import models
from jaxnorm import second_order
from jaxnorm import validate

EXPLORE_STEPS = 500      # full-batch Adam steps on every restart before Gauss–Newton
EXPLORE_LR = 1e-2        # peak learning rate of that phase (cosine decay)
SELECT_STEPS = 20        # LM steps on every restart before the best one is kept


def widest_student(d_in: int, d_out: int, hidden_widths: Sequence[int]) -> tuple[int, ...]:
  """The widest student that frozen blocks of these hidden widths realise exactly.

  Block `i` realises a layer `d_{i-1} -> d_i` exactly when `m_i >= d_{i-1} d_i`;
  knowing only `d_0`, `d_l` and the widths `m_i` (the budget), this grows the
  narrow widths `d_1 ... d_{l-1}` one unit at a time, the smallest first,
  while every block still holds its layer: balanced, and as wide as the
  budget allows.

  Args:
    d_in: `d_0`, the input dimension.
    d_out: `d_l`, the output dimension.
    hidden_widths: `[m_1, ..., m_l]`, the frozen blocks' hidden widths.

  Returns:
    `(d_1, ..., d_{l-1})` (empty for one block; all 1 where even that does
    not fit, e.g. `m_1 < d_0`: then no student is exact and the construction
    is a least-squares fit).
  """
  m = [int(v) for v in hidden_widths]
  ends = lambda s: [d_in, *s, d_out]
  fits = lambda s: all(w >= a * b for w, a, b in zip(m, ends(s)[:-1], ends(s)[1:]))
  s = [1] * (len(m) - 1)
  grown = fits(s)
  while grown:
    grown = False
    for i in sorted(range(len(s)), key=lambda i: (s[i], i)):
      trial = s[:i] + [s[i] + 1] + s[i + 1:]
      if fits(trial):
        s, grown = trial, True
        break
  return tuple(s)


def _predict(student, x_row):
  return models.apply_target(student, x_row)


def _explore(student, x, y, weight):
  tx = optax.adam(optax.cosine_decay_schedule(EXPLORE_LR, EXPLORE_STEPS))

  def loss_fn(p):
    return weight * jnp.sum((models.apply_target(p, x) - y) ** 2)

  def step(carry, _):
    p, opt_state = carry
    grads = jax.grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  (student, _), _ = jax.lax.scan(step, (student, tx.init(student)), None, length=EXPLORE_STEPS)
  return student


def fit_student(key: jax.Array, widths: Sequence[int], x: jax.Array, y: jax.Array, weight,
                restarts: int, steps: int):
  """Fits an MLP of the target's widths to `(x, y)`; best of `restarts` random starts.

  Args:
    key: a `jax.random.key` for the students' initial weights.
    widths: `[d_0, ..., d_l]`, the target's widths.
    x: the fixed inputs `[N, d_0]`.
    y: the target's outputs on them `[N, d_l]` (the only access to the target).
    weight: loss weight, `loss = weight * sum((student(x) - y)**2)`.
    restarts: random starts explored (static).
    steps: Levenberg–Marquardt steps in all (static); the first
      `min(SELECT_STEPS, steps)` run on every restart.

  Returns:
    `(student, loss)`: the best student `[(W[out, in], b[out]), ...]` and its
    loss on `(x, y)` (`inf` where every restart produced a non-finite loss).
  """
  validate.finite_if_concrete(x=x, y=y)
  select = min(SELECT_STEPS, steps)

  def start(k):
    student = _explore(models.init_target(k, widths), x, y, weight)
    student, state, _, loss = second_order.lm_fit(_predict, student, x, y, weight, select)
    return student, state, loss

  students, states, losses = jax.vmap(start)(jax.random.split(key, restarts))
  losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
  best = jnp.argmin(losses)
  pick = lambda tree: jax.tree.map(lambda a: a[best], tree)
  student, state, loss = pick(students), pick(states), losses[best]
  if steps > select:
    student, _, _, loss = second_order.lm_fit(_predict, student, x, y, weight, steps - select,
                                              state)
  return student, jnp.where(jnp.isfinite(loss), loss, jnp.inf)


def linear_regime_norms(trainable, frozen, x: jax.Array, radius=None):
  """Shifts that put every unit of each block's wide layer in ReLU's linear regime.

  Needs only the frozen weights (no target): for block `i` (`NormMLP` layers
  `k = 2i-2`, `2i-1`, 0-based), `beta_k = |gamma_k| ||W_k[:, j]|| R_{i-1}` keeps
  unit `j` non-negative wherever `||h_{i-1}|| <= R_{i-1}`, and
  `beta_{k+1} -= gamma_{k+1} (W_{k+1}^T beta_k)` cancels the constant it adds,
  so block `i` starts as `relu(A_i h + b_i)` with the biases it had before.

  Args:
    trainable: `{(f"norm_{k}", "scale" | "bias"): [width]}` of an affine `NormMLP`.
    frozen: `{(f"dense_{k}", "kernel"): [in, out]}`.
    x: sample inputs `[n, d_0]`; `R_{i-1}` is the largest `||h_{i-1}||` on them.
    radius: if given, `R_0` (the input ball's radius) instead of the sample's.

  Returns:
    The new `trainable` dict (scales unchanged).
  """
  trainable = dict(trainable)
  n_layers = sum(1 for path in frozen if path[-1] == "kernel")
  h = x
  for k in range(n_layers):
    w = frozen[(f"dense_{k}", "kernel")]
    scale, bias = (trainable[(f"norm_{k}", n)] for n in ("scale", "bias"))
    if k % 2 == 0 and k < n_layers - 1:
      r = radius if (k == 0 and radius is not None) else jnp.max(jnp.linalg.norm(h, axis=-1))
      bias = jnp.abs(scale) * jnp.linalg.norm(w, axis=0) * r
      nxt = (f"norm_{k + 1}", "bias")
      trainable[(f"norm_{k}", "bias")] = bias
      trainable[nxt] = trainable[nxt] - trainable[(f"norm_{k + 1}", "scale")] * (
          bias @ frozen[(f"dense_{k + 1}", "kernel")])
    z = (h @ w) * scale + bias
    h = jax.nn.relu(z) if k < n_layers - 1 else z
  return trainable
