"""The benchmark's hand-written JAX baseline: jaxnorm's Adam fit, written without jaxnorm.

The same work per step as `jaxnorm.fit_seeds` with `optimizer="adam"` and
`norm="affine"` (and as the torch peers), written the way a JAX user writes an
ensemble by hand: every seed's arrays stacked on a leading axis, each layer a
batched `einsum`, `jax.grad` of the summed per-seed relative MSEs with respect
to the norms only (the frozen kernels are arguments, never differentiated),
Adam with the cosine learning rate written out, inputs drawn inside the step
(uniform in the ball), and a `lax.scan` over the steps of a chunk in one
`jax.jit` with the state's buffers donated. No divergence guard, no
checkpointing, no sharding: what is left is the math, which is what this
baseline is for.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

B1, B2, EPS = 0.9, 0.999, 1e-8   # Adam's defaults (optax and torch alike)


class Result(NamedTuple):
  """A hand-written fit of S seeds.

  Attributes:
    seconds: wall time, init and held-out evaluation included.
    steps_seconds: wall time of the steps alone (the chunks, each synced).
    loss_curve: mean training relative MSE of each chunk, `[S, n_chunks]`.
    rel_mse: held-out relative MSE per seed, `[S]`.
    norms: the trained `{"scales": [[S, w], ...], "biases": [...]}` (numpy).
  """
  seconds: float
  steps_seconds: float
  loss_curve: np.ndarray
  rel_mse: np.ndarray
  norms: dict


def _ball(key, shape, radius):
  k_dir, k_rad = jax.random.split(key)
  g = jax.random.normal(k_dir, shape)
  u = jax.random.uniform(k_rad, shape[:-1] + (1,))
  return g / jnp.linalg.norm(g, axis=-1, keepdims=True) * (radius * u ** (1.0 / shape[-1]))


@functools.partial(jax.jit, static_argnames=("spec", "num_seeds"))
def init(spec, num_seeds: int, seed: int = 0) -> dict[str, Any]:
  """S seeds' frozen kernels (He-normal), targets and held-out inputs, stacked (one program).

  Args:
    spec: a `jaxnorm.FitSpec` (adam, affine norms, inputs in the ball).
    num_seeds: S.
    seed: the RNG seed.

  Returns:
    `{"kernels": [[S, in, out], ...], "scales", "biases": [[S, out], ...],
    "targets": [(W[S, out, in], b[S, out]), ...], "eval_x": [S, n, d_0]}`.
  """
  key = jax.random.key(seed)
  widths, t_widths = spec.network_widths, spec.target_widths
  kernels, targets = [], []
  for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    kernels.append(jax.random.normal(jax.random.fold_in(key, k), (num_seeds, a, b))
                   * math.sqrt(2.0 / a))
  for k, (a, b) in enumerate(zip(t_widths[:-1], t_widths[1:])):
    kw, kb = jax.random.split(jax.random.fold_in(key, 1000 + k))
    targets.append((jax.random.normal(kw, (num_seeds, b, a)) * math.sqrt(2.0 / a),
                    0.1 * jax.random.normal(kb, (num_seeds, b))))
  return {"kernels": kernels,
          "scales": [jnp.ones((num_seeds, b)) for b in widths[1:]],
          "biases": [jnp.zeros((num_seeds, b)) for b in widths[1:]],
          "targets": targets,
          "eval_x": _ball(jax.random.fold_in(key, 2000), (num_seeds, spec.eval_size, widths[0]),
                          spec.radius)}


def _net(kernels, scales, biases, x):
  last = len(kernels) - 1
  for k, w in enumerate(kernels):
    x = jnp.einsum("sbi,sio->sbo", x, w) * scales[k][:, None] + biases[k][:, None]
    if k < last:
      x = jax.nn.relu(x)
  return x


def _target(targets, x):
  last = len(targets) - 1
  for k, (w, b) in enumerate(targets):
    x = jnp.einsum("sbi,soi->sbo", x, w) + b[:, None]
    if k < last:
      x = jax.nn.relu(x)
  return x


def _rel_mse(out, y, var):
  return jnp.mean((out - y) ** 2, axis=(1, 2)) / (var + 1e-12)


@functools.partial(jax.jit, static_argnames=("spec", "length"), donate_argnums=(0,))
def _chunk(state, frozen, key, start, inputs, *, spec, length):
  """`length` Adam steps from step `start`; returns the state and each seed's mean loss."""
  num_seeds = frozen["var"].shape[0]

  def step(state, t):
    norms, m, v = state
    if inputs is None:
      x = _ball(jax.random.fold_in(key, t), (num_seeds, spec.batch_size, spec.target_widths[0]),
                spec.radius)
    else:
      x = inputs[t - start]
    y = _target(frozen["targets"], x)

    def loss(norms):
      per = _rel_mse(_net(frozen["kernels"], norms["scales"], norms["biases"], x), y,
                     frozen["var"])
      return per.sum(), per

    grads, per = jax.grad(loss, has_aux=True)(norms)
    lr = spec.learning_rate
    if spec.schedule == "cosine":
      lr = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, spec.steps) / spec.steps))
    count = (t + 1).astype(jnp.float32)
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, grads)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, grads)
    c1, c2 = 1 - B1 ** count, 1 - B2 ** count
    norms = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + EPS), norms, m, v)
    return (norms, m, v), per

  state, per = lax.scan(step, state, start + jnp.arange(length))
  return state, per.mean(0)


@jax.jit
def _evaluate(frozen, norms, eval_x):
  out = _net(frozen["kernels"], norms["scales"], norms["biases"], eval_x)
  return _rel_mse(out, _target(frozen["targets"], eval_x), frozen["var"])


@jax.jit
def _variance(targets, eval_x):
  return jnp.mean(jnp.var(_target(targets, eval_x), axis=1), axis=-1)


def fit(spec, num_seeds: int, *, seed: int = 0, arrays: Optional[dict] = None,
        inputs: Optional[np.ndarray] = None) -> Result:
  """Fits S seeds' norms for `spec.steps` Adam steps, timed end to end.

  Args:
    spec: a `jaxnorm.FitSpec` (the bench's: adam, affine norms, inputs in the ball).
    num_seeds: S.
    seed: the RNG seed of `init` and of the inputs.
    arrays: an explicit start in `init`'s layout (e.g. jaxnorm's, to compare step by step).
    inputs: explicit batches `[steps, S, batch, d_0]` instead of drawn ones.

  Returns:
    A `Result`.
  """
  start = time.perf_counter()
  a = init(spec, num_seeds, seed) if arrays is None else jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float32), arrays)
  frozen = {"kernels": a["kernels"], "targets": a["targets"],
            "var": _variance(a["targets"], a["eval_x"])}
  norms = {"scales": list(a["scales"]), "biases": list(a["biases"])}
  norms = jax.tree.map(jnp.array, norms)   # copies: the chunks donate them
  state = (norms, jax.tree.map(jnp.zeros_like, norms), jax.tree.map(jnp.zeros_like, norms))
  key = jax.random.fold_in(jax.random.key(seed), 1)
  chunk = spec.chunk_steps or spec.steps
  curve, steps_seconds, done = [], 0.0, 0
  while done < spec.steps:
    length = min(chunk, spec.steps - done)
    xs = None if inputs is None else jnp.asarray(inputs[done:done + length], jnp.float32)
    t0 = time.perf_counter()
    state, per = _chunk(state, frozen, key, jnp.int32(done), xs, spec=spec, length=length)
    curve.append(np.asarray(per))   # the curve comes back every chunk, as jaxnorm's does
    steps_seconds += time.perf_counter() - t0
    done += length
  rel_mse = np.asarray(_evaluate(frozen, state[0], a["eval_x"]))
  return Result(time.perf_counter() - start, steps_seconds, np.stack(curve, axis=1), rel_mse,
                jax.tree.map(np.asarray, state[0]))
