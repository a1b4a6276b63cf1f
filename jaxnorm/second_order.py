"""Levenberg–Marquardt for small parameter vectors on a fixed batch.

The norm parameters of a frozen network (a few hundred to a few thousand per
seed) and a target-shaped student MLP are small enough for a dense
Gauss–Newton system: with `r` the residuals of the `N` fixed inputs and `J`
their Jacobian (`N d_out` rows, `P` columns), one step solves

    (J^T J + lambda D) delta = -J^T r,   D = diag(J^T J) + floor

by Cholesky and keeps the step only if the loss goes down (Nielsen's damping
update: `lambda` shrinks after a good step, grows geometrically after rejected
ones). `J` is built one example at a time (`vmap` of `jacrev` over the
examples: `d_out` backward passes each), so the examples must not interact
(no batch statistics). Everything is pure JAX: `vmap` over seeds (and over
restarts), `lax.scan` over steps.

Cost per step: `2 N d_out P^2` flops for `J^T J` (dominant), `P^3 / 3` for the
Cholesky factor: ~1.2 GFLOP at `N = 256`, `d_out = 8`, `P = 544`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnorm import validate

# Damping is kept in [MIN_DAMPING, MAX_DAMPING]; D is floored at DIAG_FLOOR * max(diag J^T J)
# so that a column of zeros (a dead unit) leaves the system positive definite.
MIN_DAMPING = 1e-9
MAX_DAMPING = 1e9
DIAG_FLOOR = 1e-6


class LMState(NamedTuple):
  """Damping state of one Levenberg–Marquardt run.

  Attributes:
    damping: `lambda`, the current damping factor (scalar).
    growth: `nu`, the factor `lambda` grows by after the next rejected step.
  """
  damping: jax.Array
  growth: jax.Array


def lm_init(damping: float = 1e-3) -> LMState:
  """The damping state a run starts from.

  Args:
    damping: initial `lambda` (relative to `diag(J^T J)`).

  Returns:
    An `LMState` of float32 scalars.
  """
  return LMState(jnp.asarray(damping, jnp.float32), jnp.asarray(2.0, jnp.float32))


Predict = Callable[[Any, jax.Array], jax.Array]


def residual_jacobian(predict: Predict, params, x: jax.Array, y: jax.Array):
  """Residuals and their Jacobian with respect to the flattened `params`.

  Args:
    predict: `predict(params, x_row) -> [d_out]` for one input row.
    params: a pytree of float arrays.
    x: inputs `[N, d_in]`.
    y: targets `[N, d_out]`.

  Returns:
    `(r [N d_out], J [N d_out, P], unravel)`, `unravel` mapping a flat
    `[P]` vector back to the structure of `params`.
  """
  theta, unravel = ravel_pytree(params)

  def out_twice(th, xi):
    out = predict(unravel(th), xi)
    return out, out

  jac, out = jax.vmap(jax.jacrev(out_twice, has_aux=True), in_axes=(None, 0))(theta, x)
  return (out - y).reshape(-1), jac.reshape(-1, theta.size), unravel


@jax.custom_batching.sequential_vmap
def _damped_solve(jtj, damping, scale, grad):
  """`-(jtj + damping diag(scale))^{-1} grad` by Cholesky, one system per LAPACK call.

  Under `vmap` (seeds, restarts) this runs as a loop over the systems
  (`sequential_vmap`) rather than one batched LAPACK call. jaxlib's CPU kernels
  split a batch over XLA's intra-op thread pool and block a pool thread until
  the parts are done; when every pool thread does so at once (one batched call
  per CPU device, with one device per core) none is left to run the parts and
  the program never returns. A single system takes the kernel's serial path.
  """
  chol = jax.scipy.linalg.cho_factor(jtj + damping * jnp.diag(scale))
  return -jax.scipy.linalg.cho_solve(chol, grad)


def lm_step(predict: Predict, params, x: jax.Array, y: jax.Array, weight, state: LMState):
  """One Levenberg–Marquardt step on `loss = weight * sum((predict(params, x) - y)**2)`.

  Args:
    predict: `predict(params, x_row) -> [d_out]` for one input row; rows must
      be independent (the Jacobian is built row by row).
    params: the current parameters (a pytree of float arrays).
    x: the fixed inputs `[N, d_in]`.
    y: their targets `[N, d_out]`.
    weight: positive scalar (e.g. `1 / (N d_out var(y))` for a relative MSE).
    state: the damping state.

  Returns:
    `(params, state, loss)`: the new parameters (unchanged if the step was
    rejected), the new damping state, and the loss at the parameters passed in.
  """
  r, jac, unravel = residual_jacobian(predict, params, x, y)
  sw = jnp.sqrt(weight)
  r, jac = r * sw, jac * sw
  loss = r @ r
  jtj = jac.T @ jac
  grad = jac.T @ r
  diag = jnp.diagonal(jtj)
  scale = diag + DIAG_FLOOR * jnp.max(diag)
  delta = _damped_solve(jtj, state.damping, scale, grad)
  theta, _ = ravel_pytree(params)
  candidate = theta + delta
  r_new = (jax.vmap(predict, in_axes=(None, 0))(unravel(candidate), x) - y).reshape(-1) * sw
  new_loss = r_new @ r_new
  predicted = -(2.0 * grad @ delta + delta @ (jtj @ delta))   # ||r||^2 - ||r + J delta||^2
  rho = (loss - new_loss) / jnp.maximum(predicted, jnp.finfo(predicted.dtype).tiny)
  accept = (new_loss < loss) & jnp.isfinite(new_loss) & jnp.all(jnp.isfinite(delta))
  damping = jnp.where(accept, state.damping * jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3),
                      state.damping * state.growth)
  growth = jnp.where(accept, 2.0, jnp.minimum(2.0 * state.growth, 1e3))
  new_state = LMState(jnp.clip(damping, MIN_DAMPING, MAX_DAMPING).astype(jnp.float32),
                      growth.astype(jnp.float32))
  return unravel(jnp.where(accept, candidate, theta)), new_state, loss


def lm_fit(predict: Predict, params, x: jax.Array, y: jax.Array, weight, steps: int,
           state: LMState | None = None):
  """`steps` Levenberg–Marquardt steps under `lax.scan`.

  Args:
    predict: as in `lm_step`.
    params: the starting parameters.
    x: the fixed inputs `[N, d_in]`.
    y: their targets `[N, d_out]`.
    weight: as in `lm_step`.
    steps: number of steps (static).
    state: damping state to continue from (default `lm_init()`).

  Returns:
    `(params, state, losses [steps], final_loss)`.
  """
  validate.finite_if_concrete(x=x, y=y)
  state = lm_init() if state is None else state

  def body(carry, _):
    p, s = carry
    p, s, loss = lm_step(predict, p, x, y, weight, s)
    return (p, s), loss

  (params, state), losses = jax.lax.scan(body, (params, state), None, length=steps)
  out = jax.vmap(predict, in_axes=(None, 0))(params, x)
  return params, state, losses, weight * jnp.sum((out - y) ** 2)
