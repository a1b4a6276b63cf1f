"""Minimum-norm solvers for the block systems of docs/design.md §2 (matrix-free CGLS, dense lstsq).

Block `i` of the construction solves `W_out diag(gamma) W_in = T` for `gamma`,
with `W_in = W_{2i-1}` `[m, d_in]`, `W_out = W_{2i}` `[d_out, m]`,
`T = T_i` `[d_out, d_in]`. Written as `K gamma = vec T`, column `j` of `K` is
`vec(W_out[:, j] W_in[j, :])` (a Khatri–Rao product): `d_out * d_in` rows and
`m` columns. `K` is never formed; both products cost `2 m d_out d_in` flops:

    K gamma = (W_out * gamma) @ W_in                   -> [d_out, d_in]
    K^T Y   = rowsum((W_out^T @ Y) * W_in)             -> [m]

The solver is CGLS (conjugate gradients on the normal equations
`K^T K gamma = K^T vec T`) started at `gamma = 0`. Its iterates stay in the row
space of `K`, so it converges to the minimum-norm least-squares solution: the
minimum-norm solution when the system is consistent, the least-squares best fit
when it is not. CGLS minimises the residual `||K gamma - vec T||` over the
Krylov space, so it stops at the earliest iteration a residual tolerance allows.
One iteration is one product with `K` and one with `K^T`, `4 m d_out d_in` flops.

Layout: both products run as row-major GEMMs. `K gamma` contracts over the
long axis `m`: one GEMM while the scaled copy `W_out * gamma` is at most
`_UNCHUNKED_BYTES`, else a `lax.scan` over chunks of `W_out` (`[d_out, mc]`)
times `W_in[c, :]` (both chunks together about `_CHUNK_BYTES`), which keeps
that copy in cache at the price of a larger program; `K^T y` is one GEMM
contracting the longer of `d_out`, `d_in`, then a row-wise dot (`W_in y^T`,
`[m, d_out]`, dotted with `W_out^T` when `d_in > d_out`). The two re-laid-out
copies of `W_out` are made once per solve, behind
`lax.optimization_barrier` so that XLA keeps that layout. No
preconditioner is used (why, and the measurements behind the layout, are in
WORKSPACE.md, "Implementation notes").

`solve_min_norm` is pure JAX: it runs under `jax.jit` and `jax.vmap` (e.g.
over a leading seed axis of `W_in`, `W_out` and `T`). `lstsq_min_norm` is the
dense numpy reference for small blocks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Relative residual ||K gamma - vec T|| / ||vec T|| that counts as exact.
DEFAULT_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# Stop status codes of `solve_min_norm`.
CONVERGED = 0      # true relative residual <= tol
STATIONARY = 1     # r (nearly) orthogonal to range(K): least-squares optimum, residual > tol
MAX_ITER = 2       # ran out of iterations (or of restarts)
_RESTARTS = 4      # restarts from the true residual allowed after the first pass


class KrylovResult(NamedTuple):
  """Result of `solve_min_norm` (arrays; batched under `vmap`).

  Attributes:
    gamma: `[m]` the solution.
    residual: true relative residual `||K gamma - vec T|| / ||vec T||`
      (recomputed from `gamma`, not the recursively updated one; 0 if `T = 0`).
    iterations: number of CGLS iterations run.
    status: `CONVERGED`, `STATIONARY` or `MAX_ITER`.
    realised: `K gamma = W_out diag(gamma) W_in`, `[d_out, d_in]`, the map the
      block actually computes (a by-product of the residual check).
  """

  gamma: jax.Array
  residual: jax.Array
  iterations: jax.Array
  status: jax.Array
  realised: jax.Array


def default_tol(dtype) -> float:
  """Default relative-residual tolerance: 1e-5 for float32, 1e-12 for float64.

  Args:
    dtype: the working floating dtype.

  Returns:
    The tolerance (1e-3 for lower precisions).
  """
  return DEFAULT_TOL.get(np.dtype(dtype), 1e-3)


def default_maxiter(n_rows: int) -> int:
  """Default iteration cap: `clip(4 * n_rows, 200, 2000)`.

  A well-conditioned block (`m >= 1.5 d_out d_in`) needs 25–60 iterations;
  the cap only matters near the threshold `m = d_out d_in`.
  """
  return int(min(max(4 * n_rows, 200), 2000))


def khatri_rao_matvec(w_in: jax.Array, w_out: jax.Array, gamma: jax.Array) -> jax.Array:
  """Returns `K gamma = W_out diag(gamma) W_in`, `[d_out, d_in]`, without forming `K`.

  The plain reference form; `solve_min_norm` uses faster layouts internally.
  """
  return (w_out * gamma) @ w_in


def khatri_rao_rmatvec(w_in: jax.Array, w_out: jax.Array, y: jax.Array) -> jax.Array:
  """Returns `K^T vec(y) = rowsum((W_out^T y) * W_in)`, `[m]`, without forming `K`."""
  return jnp.sum((w_out.T @ y) * w_in, axis=1)


def lstsq_min_norm(w_in, w_out, target, dtype=np.float64):
  """Dense reference solver: forms `K` and solves by SVD (LAPACK gelsd) in float64.

  `d_out d_in m` entries of memory and `O(d_out d_in m min(d_out d_in, m))` time:
  small blocks only. Not jittable.

  Args:
    w_in: `W_{2i-1}`, `[m, d_in]`.
    w_out: `W_{2i}`, `[d_out, m]`.
    target: `T_i`, `[d_out, d_in]`.
    dtype: dtype of the returned `gamma`.

  Returns:
    `(gamma, realised, residual, rank)`: the minimum-norm least-squares
    solution as a jax array of `dtype`; `K gamma` (after rounding `gamma` to
    `dtype`) and its relative residual in float64; the numerical rank of `K`.
  """
  w1, w2, t64 = (np.asarray(a, np.float64) for a in (w_in, w_out, target))
  k = (w2[:, None, :] * w1.T[None, :, :]).reshape(-1, w2.shape[1])  # col j: vec(w2[:, j] w1[j])
  gamma64, _, rank, _ = np.linalg.lstsq(k, t64.ravel(), rcond=None)
  gamma = np.asarray(gamma64, np.dtype(dtype))
  realised = (k @ gamma.astype(np.float64)).reshape(t64.shape)
  t_norm = np.linalg.norm(t64)
  residual = float(np.linalg.norm(realised - t64) / t_norm) if t_norm > 0 else 0.0
  return jnp.asarray(gamma), realised, residual, int(rank)


def _dot(a, b):
  return jnp.vdot(a, b).real


def solve_min_norm(w_in: jax.Array, w_out: jax.Array, target: jax.Array, *,
                   tol: float | None = None, maxiter: int | None = None,
                   stationary_tol: float | None = None) -> KrylovResult:
  """Minimum-norm (least-squares) `gamma` with `W_out diag(gamma) W_in = target`.

  Matrix-free CGLS, `4 m d_out d_in` flops per iteration; the dtype follows the
  inputs (float32 or float64). Jit- and vmap-compatible: `tol`, `maxiter` and
  `stationary_tol` are static, the arrays may carry leading batch axes under
  `jax.vmap`.

  Args:
    w_in: `W_{2i-1}`, `[m, d_in]`.
    w_out: `W_{2i}`, `[d_out, m]`.
    target: `T_i`, `[d_out, d_in]`.
    tol: stop when the relative residual `||K gamma - vec T|| / ||vec T||` is
      `<= tol`; default `default_tol(dtype)`.
    maxiter: iteration cap; default `default_maxiter(d_out * d_in)`.
    stationary_tol: also stop when the residual `r` is nearly orthogonal to
      the range of `K`, `||K^T r|| / ||r|| <= stationary_tol * ||K^T vec T|| /
      ||vec T||`: the least-squares optimum of an inconsistent (e.g.
      rank-deficient) system. A consistent system can only trip it if
      `sigma_min(K)` is below `stationary_tol` times a typical singular value.
      Default `sqrt(eps)` (3e-4 in float32, 1.5e-8 in float64).

  Returns:
    A `KrylovResult`. `status == CONVERGED` and `residual <= tol` means the
    block is reconstructed; otherwise `gamma` is the best fit found.
  """
  dtype = jnp.result_type(w_in, w_out, target)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(float)
  w_in, w_out, target = (jnp.asarray(a, dtype) for a in (w_in, w_out, target))
  if (w_in.ndim != 2 or w_out.ndim != 2 or target.ndim != 2 or w_out.shape[1] != w_in.shape[0]
      or target.shape != (w_out.shape[0], w_in.shape[1])):
    raise ValueError(f"need w_in [m, d_in], w_out [d_out, m], target [d_out, d_in]; got "
                     f"{w_in.shape}, {w_out.shape}, {target.shape}")
  tol = default_tol(dtype) if tol is None else float(tol)
  if maxiter is None:
    maxiter = default_maxiter(target.shape[0] * target.shape[1])
  if stationary_tol is None:
    stationary_tol = float(np.sqrt(jnp.finfo(dtype).eps))
  return _cgls(w_in, w_out, target, tol, int(maxiter), float(stationary_tol),
               (_CHUNK_BYTES, _UNCHUNKED_BYTES))


_CHUNK_BYTES = 4 << 20   # of W_out and W_in together per GEMM of `K gamma` (see WORKSPACE.md)
_UNCHUNKED_BYTES = 32 << 20   # up to this size of `W_out * gamma`, `K gamma` is one GEMM


def _chunk_size(m: int, d_out: int, d_in: int, itemsize: int, chunk_bytes: int,
                unchunked_bytes: int = 0) -> int:
  """Columns per chunk of `K gamma`: all `m` while the scaled copy of `W_out` is at most
  `unchunked_bytes`, else `W_out[:, c]` and `W_in[c, :]` within `chunk_bytes`."""
  if d_out * m * itemsize <= unchunked_bytes:
    return m
  return int(max(min(m, chunk_bytes // max((d_out + d_in) * itemsize, 1)), 1))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _cgls(w_in, w_out, target, tol, maxiter, stationary_tol, chunks):
  # Every product in full float32 (or float64) precision: an accelerator's default float32
  # matmul (TF32 on GPUs, bfloat16 passes on TPUs) cannot reach the residual tolerance.
  with jax.default_matmul_precision("highest"):
    return _cgls_traced(w_in, w_out, target, tol, maxiter, stationary_tol, chunks)


def _cgls_traced(w_in, w_out, target, tol, maxiter, stationary_tol, chunks):
  m, d_in = w_in.shape
  d_out = w_out.shape[0]
  mc = _chunk_size(m, d_out, d_in, w_in.dtype.itemsize, *chunks)
  nc = -(-m // mc)
  pad = nc * mc - m
  if pad:  # zero columns: they get gamma = 0 and change nothing else.
    w_in = jnp.pad(w_in, ((0, pad), (0, 0)))
    w_out = jnp.pad(w_out, ((0, 0), (0, pad)))
  # Two row-major copies of W_out made once, so that both products are plain
  # GEMMs; the barrier stops XLA from folding them back into transposed GEMMs.
  w_out_t, w_out_c = lax.optimization_barrier(
      (w_out.T, w_out.reshape(d_out, nc, mc).transpose(1, 0, 2)))
  w_in_c = w_in.reshape(nc, mc, d_in)

  def k_mul(g):      # K g = sum over chunks c of (W_out[:, c] * g[c]) @ W_in[c, :].
    if nc == 1:
      return (w_out_c[0] * g) @ w_in

    def step(acc, xs):
      a, b, gc = xs
      return acc + (a * gc) @ b, None
    acc0 = jnp.zeros((d_out, d_in), w_in.dtype)
    return lax.scan(step, acc0, (w_out_c, w_in_c, g.reshape(nc, 1, mc)))[0]

  def kt_mul(y):     # K^T y: one GEMM contracting the longer of d_out, d_in, then a row-wise dot.
    if d_in > d_out:   # [m, d_in] @ [d_in, d_out], dotted with W_out^T row by row
      return jnp.sum((w_in @ y.T) * w_out_t, axis=1)
    return jnp.sum((w_out_t @ y) * w_in, axis=1)   # [m, d_out] @ [d_out, d_in], with W_in

  b_sq = _dot(target, target)
  r_stop = tol ** 2 * b_sq
  stat = jnp.asarray(stationary_tol ** 2, b_sq.dtype)
  zero = jnp.zeros((), dtype=jnp.int32)

  def cgls(k, gamma, r, ref_sq):
    """CGLS from `gamma` with residual `r`, until the recursive residual passes tol."""
    s = kt_mul(r)
    s_sq, r_sq = _dot(s, s), _dot(r, r)
    # ||K^T b||^2 / ||b||^2 on the first pass: the scale of a typical singular value.
    ref_sq = jnp.where(ref_sq < 0, s_sq / jnp.where(r_sq > 0, r_sq, 1), ref_sq)

    def moving(s_sq, r_sq):  # ||K^T r|| / ||r|| > stationary_tol * ref
      return s_sq > stat * ref_sq * r_sq

    def cond(state):
      k, _, _, _, s_sq, r_sq = state
      return (k < maxiter) & (r_sq > r_stop) & moving(s_sq, r_sq)

    def body(state):
      k, gamma, r, p, s_sq, _ = state
      q = k_mul(p)
      q_sq = _dot(q, q)
      alpha = jnp.where(q_sq > 0, s_sq / jnp.where(q_sq > 0, q_sq, 1), 0).astype(gamma.dtype)
      gamma = gamma + alpha * p
      r = r - alpha * q
      s = kt_mul(r)
      s_sq_new = _dot(s, s)
      beta = jnp.where(s_sq > 0, s_sq_new / jnp.where(s_sq > 0, s_sq, 1), 0).astype(gamma.dtype)
      return k + 1, gamma, r, s + beta * p, s_sq_new, _dot(r, r)

    k, gamma, _, _, s_sq, r_sq = lax.while_loop(cond, body, (k, gamma, r, s, s_sq, r_sq))
    status = jnp.where(r_sq <= r_stop, CONVERGED,
                       jnp.where(moving(s_sq, r_sq), MAX_ITER, STATIONARY))
    return k, gamma, status.astype(jnp.int32), ref_sq

  # Outer loop: the recursive residual drifts from the true one in finite
  # precision; if the true residual is still above tol, restart from it.
  def outer_cond(state):
    k, _, _, _, res_sq, status, restarts, _ = state
    return (res_sq > r_stop) & (status == CONVERGED) & (k < maxiter) & (restarts < _RESTARTS)

  def outer_body(state):
    k, gamma, true_r, _, _, _, restarts, ref_sq = state
    k, gamma, status, ref_sq = cgls(k, gamma, true_r, ref_sq)
    realised = k_mul(gamma)
    true_r = target - realised
    return k, gamma, true_r, realised, _dot(true_r, true_r), status, restarts + 1, ref_sq

  gamma0 = jnp.zeros((w_in.shape[0],), target.dtype)
  state = (zero, gamma0, target, jnp.zeros_like(target), b_sq, zero + CONVERGED, zero,
           -jnp.ones_like(b_sq))
  k, gamma, _, realised, res_sq, status, _, _ = lax.while_loop(outer_cond, outer_body, state)
  status = jnp.where(res_sq <= r_stop, CONVERGED,
                     jnp.where(status == STATIONARY, STATIONARY, MAX_ITER)).astype(jnp.int32)
  residual = jnp.where(b_sq > 0, jnp.sqrt(res_sq / jnp.where(b_sq > 0, b_sq, 1)), 0)  # T = 0: 0
  return KrylovResult(gamma[:m], residual, k, status, realised)
