"""One seed's fitting programs: init, a step of each method, the divergence guard, evaluation.

Everything here acts on a single seed's `FitState`; `jaxnorm.fit` batches it
over seeds (`vmap` or `lax.map`) and compiles it. The target is only ever
evaluated (`models.apply_target(state.target, x)`), never read: the methods
see the fixed batch `(fit_x, fit_y)` or fresh samples, nothing else.

Full-batch methods (`lbfgs`, `lm`, `distill`) evaluate the network in
inference mode: for BatchNorm that is the affine map given by the (constant)
running statistics, which is also what the held-out evaluation uses.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnorm import distill
from jaxnorm import domain
from jaxnorm import freeze
from jaxnorm import models
from jaxnorm import second_order

FULL_BATCH = ("lbfgs", "lm", "distill")   # fit a fixed batch of `fit_size` inputs


class FitState(NamedTuple):
  """One seed's state (a leading seed axis is added when batched)."""
  trainable: Any      # {path: leaf}, the normalization leaves
  frozen: Any         # {path: leaf}, everything else; passed through untouched
  batch_stats: Any    # BatchNorm running statistics ({} for other kinds)
  opt_state: Any      # optimizer state for `trainable` only
  step: jax.Array
  data_key: jax.Array
  target: Any         # [(W, b), ...] this seed's target (only ever *evaluated* on inputs)
  target_var: jax.Array  # variance of the target's outputs on the held-out set
  eval_x: jax.Array   # held-out inputs
  fit_x: Any          # the fixed batch [fit_size, d_0] (full-batch methods; else None)
  fit_y: Any          # the target's outputs on it (else None)
  diverged: jax.Array  # bool: loss or parameters went non-finite; frozen since


def make_optimizer(spec) -> optax.GradientTransformation:
  """The optax optimizer that `spec` names: `adam` (with its schedule) or `lbfgs`.

  Args:
    spec: a `FitSpec`.

  Returns:
    The optax transformation (`lm` and `distill` use `second_order.LMState`).
  """
  if spec.optimizer == "lbfgs":
    return optax.lbfgs(memory_size=20)
  if spec.schedule == "cosine":
    lr = optax.cosine_decay_schedule(spec.learning_rate, spec.steps)
  else:
    lr = spec.learning_rate
  return optax.adam(lr)


def init_opt_state(spec, trainable):
  """The optimizer state of `trainable` for `spec.optimizer`."""
  if spec.optimizer in ("lm", "distill"):
    return second_order.lm_init()
  return make_optimizer(spec).init(trainable)


def apply(model, spec, params, batch_stats, x, train):
  """The network's outputs (and BatchNorm statistics, updated when `train`)."""
  variables = {"params": params}
  if spec.norm == "batchnorm":
    variables["batch_stats"] = batch_stats
    if train:
      out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
      return out, updates["batch_stats"]
  return model.apply(variables, x), batch_stats


def seed_keys(spec, seed_id):
  """Keys of seed `seed_id`: (frozen net, target, data stream, held-out set)."""
  return jax.random.split(jax.random.fold_in(jax.random.key(spec.seed), seed_id), 4)


def _fit_keys(data_key):
  """(fixed batch, students) keys, disjoint from the `fold_in(data_key, step)` stream."""
  return jax.random.split(data_key)


def init_seed(spec, seed_id, fixed_target) -> FitState:
  """Draws seed `seed_id`'s frozen network, target, held-out set and fixed batch."""
  model = spec.model()
  k_net, k_target, k_data, k_eval = seed_keys(spec, seed_id)
  d_in = spec.target_widths[0]
  variables = model.init(k_net, jnp.zeros((1, d_in)))
  params = variables["params"]
  trainable, frozen = freeze.partition(params, freeze.norm_mask(params))
  target = fixed_target if fixed_target is not None else models.init_target(
      k_target, spec.target_widths)
  eval_x = domain.sample_inputs(k_eval, spec.eval_size, d_in, spec.radius,
                                spec.input_distribution)
  target_var = jnp.var(models.apply_target(target, eval_x), axis=0).mean()
  fit_x = fit_y = None
  if spec.optimizer in FULL_BATCH:
    fit_x = domain.sample_inputs(_fit_keys(k_data)[0], spec.fit_size, d_in, spec.radius,
                                 spec.input_distribution)
    fit_y = models.apply_target(target, fit_x)
  return FitState(trainable, frozen, variables.get("batch_stats", {}),
                  init_opt_state(spec, trainable), jnp.zeros((), jnp.int32), k_data, target,
                  target_var, eval_x, fit_x, fit_y, jnp.zeros((), bool))


def rel_mse(out, y, target_var):
  """Mean squared error relative to the target's output variance."""
  return jnp.mean((out - y) ** 2) / (target_var + 1e-12)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def _step(spec, state: FitState):
  """One step of `spec.optimizer`; returns (state, loss at the parameters passed in)."""
  model = spec.model()

  def predict(trainable, x):
    return apply(model, spec, freeze.combine(trainable, state.frozen), state.batch_stats, x,
                 train=False)[0]

  if spec.optimizer == "adam":
    tx = make_optimizer(spec)

    def loss_fn(trainable, x, y):
      out, batch_stats = apply(model, spec, freeze.combine(trainable, state.frozen),
                               state.batch_stats, x, train=True)
      return rel_mse(out, y, state.target_var), batch_stats

    x = domain.sample_inputs(jax.random.fold_in(state.data_key, state.step), spec.batch_size,
                             spec.target_widths[0], spec.radius, spec.input_distribution)
    y = models.apply_target(state.target, x)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, x, y)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
  elif spec.optimizer == "lbfgs":
    tx = make_optimizer(spec)

    def loss_fn(trainable):
      return rel_mse(predict(trainable, state.fit_x), state.fit_y, state.target_var)

    loss, grads = optax.value_and_grad_from_state(loss_fn)(state.trainable,
                                                          state=state.opt_state)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable, value=loss,
                                   grad=grads, value_fn=loss_fn)
    trainable, batch_stats = optax.apply_updates(state.trainable, updates), state.batch_stats
  else:   # lm, distill: Levenberg–Marquardt on the norms
    weight = 1.0 / (state.fit_y.size * (state.target_var + 1e-12))
    trainable, opt_state, loss = second_order.lm_step(
        predict, state.trainable, state.fit_x, state.fit_y, weight, state.opt_state)
    batch_stats = state.batch_stats
  return state._replace(trainable=trainable, batch_stats=batch_stats, opt_state=opt_state,
                        step=state.step + 1), loss


def run_chunk(spec, length: int, state: FitState):
  """`length` guarded steps of one seed; returns (state, mean loss over the chunk).

  The mean is NaN for a seed that diverged in or before the chunk.
  A step whose loss or new parameters are non-finite is undone and the seed
  marked diverged; a diverged seed is never updated again (its last finite
  parameters are kept), whatever the other seeds do.
  """

  def step(state: FitState, _):
    new, loss = _step(spec, state)
    ok = ~state.diverged & jnp.isfinite(loss) & _all_finite(new.trainable)
    keep = lambda a, b: jax.tree.map(lambda u, v: jnp.where(ok, u, v), a, b)
    state = state._replace(trainable=keep(new.trainable, state.trainable),
                           batch_stats=keep(new.batch_stats, state.batch_stats),
                           opt_state=keep(new.opt_state, state.opt_state), step=new.step,
                           diverged=~ok)
    return state, jnp.where(ok, loss, jnp.nan)

  state, losses = jax.lax.scan(step, state, None, length=length)
  return state, losses.mean()


def evaluate(spec, state: FitState):
  """Held-out relative MSE of one seed."""
  out, _ = apply(spec.model(), spec, freeze.combine(state.trainable, state.frozen),
                 state.batch_stats, state.eval_x, train=False)
  return rel_mse(out, models.apply_target(state.target, state.eval_x), state.target_var)


def linear_start(spec, state: FitState) -> FitState:
  """`init="linear"`: linear-regime shifts (no target evaluation)."""
  x = state.fit_x
  if x is None:   # the radii come from the network's own activations on a sample
    x = domain.sample_inputs(_fit_keys(state.data_key)[0], spec.fit_size,
                             spec.target_widths[0], spec.radius, spec.input_distribution)
  radius = spec.radius if spec.input_distribution == "ball" else None
  return state._replace(
      trainable=distill.linear_regime_norms(state.trainable, state.frozen, x, radius))


def fit_students(spec, state: FitState):
  """`distill`'s first phase: the best target-shaped student on the fixed batch."""
  weight = 1.0 / (state.fit_y.size * (state.target_var + 1e-12))
  return distill.fit_student(_fit_keys(state.data_key)[1], spec.target_widths, state.fit_x,
                             state.fit_y, weight, spec.restarts, spec.student_steps)
