"""`reconstruct` for many independent networks (seeds) in one program, split over devices.

The seed axis of every array is batched with `jax.vmap` (matrix-free CGLS,
`jaxnorm.krylov`) and, given a seed mesh, split over its devices with
`jax.shard_map` — the batched reconstructions of `fit --init=construct` and
`distill` run this way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxnorm import krylov
from jaxnorm import sharding
from jaxnorm.construct import LSTSQ_MAX_ENTRIES
from jaxnorm.construct import BlockReport
from jaxnorm.construct import Reconstruction
from jaxnorm.construct import block_norms
from jaxnorm.construct import check_args
from jaxnorm.construct import check_width
from jaxnorm.construct import as_dense
from jaxnorm.construct import solver_failure
from jaxnorm.construct import working_dtype
from jaxnorm.construct import apply_frozen
from jaxnorm.construct import tolerances
from jaxnorm.construct import network_error
from jaxnorm.validate import ConfigError


def reconstruct_batch(target, frozen, *, radius=None, data=None, tol: float | None = None,
                      maxiter: int | None = None, allow_inexact: bool = False,
                      mesh: Mesh | None = None) -> Reconstruction:
  """`reconstruct` with `cg` for `S` independent networks (seeds) in one program.

  Every target and frozen array carries a leading seed axis `[S, ...]`; each
  block is one jitted `jax.vmap` of the CGLS solve and the shifts over that
  axis (the loop runs until the slowest seed has converged).

  Args:
    target: `[(T_i [S, d_i, d_{i-1}], c_i [S, d_i]), ...]`.
    frozen: `2 l` matrices `[S, m_i, d_{i-1}]`, `[S, d_i, m_i]`.
    radius: the ball `||x|| <= radius`, shared by all seeds.
    data: `[n, d_0]` shared by all seeds, or `[S, n, d_0]`.
    tol: as in `reconstruct`.
    maxiter: as in `reconstruct`.
    allow_inexact: as in `reconstruct`; otherwise any seed whose block is not
      exact raises.
    mesh: a seed mesh (`jaxnorm.sharding.seed_mesh`) to split the seeds over
      its devices (padded to a multiple of its size, the padding dropped);
      `None`: one device.

  Returns:
    A `Reconstruction` whose `gammas`, `betas` and `frozen` have the leading
    seed axis, whose `BlockReport` fields `residual`, `iterations`,
    `max_shift`, `input_radius`, `exact` are `[S]` numpy arrays (`rank` is
    None), whose `network_error` (measured as in `reconstruct`) and `exact`
    are `[S]` numpy arrays, and whose `apply(x)` maps shared inputs
    `[..., d_0]` to `[S, ..., d_L]`.
  """
  if not len(frozen) or np.ndim(as_dense(frozen[0])) != 3:
    raise ConfigError("reconstruct_batch needs frozen matrices with a leading seed axis [S, ...]")
  lead = (int(np.shape(as_dense(frozen[0]))[0]),)
  target, frozen, dims, widths = check_args(target, frozen, radius, data, "cg", tol, maxiter,
                                             lead=lead)
  for i, m in enumerate(widths):
    check_width(i, m, dims[i], dims[i + 1], allow_inexact)
  dtype = working_dtype([a for layer in target for a in layer] + list(frozen))
  seeds = lead[0]
  pad = 0 if mesh is None else sharding.padded_count(seeds, mesh) - seeds

  def padded(a):   # repeat the last seed
    a = jnp.asarray(a, dtype)
    return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a

  frozen = tuple(padded(w) for w in frozen)
  target = [(padded(w), padded(b)) for w, b in target]
  # cg aims at krylov.default_tol; a block is exact within tolerances(dtype).residual
  # (as in `reconstruct`)
  aim, tol = ((krylov.default_tol(dtype), tolerances(dtype).residual) if tol is None
              else (float(tol), float(tol)))
  r = None if radius is None else jnp.asarray(radius, dtype)
  h = None if data is None else (padded(data) if np.ndim(data) == 3 else jnp.asarray(data, dtype))
  gammas, betas, reports = [], [], []
  for i, (w_t, bias) in enumerate(target):
    w_in, w_out = frozen[2 * i], frozen[2 * i + 1]
    n = dims[i] * dims[i + 1]
    block = _batched_block(aim, krylov.default_maxiter(n) if maxiter is None else maxiter,
                           None if r is None or r.ndim == 0 else 0,
                           None if h is None or h.ndim == 2 else 0, mesh)
    r_in, h_in = r, h
    res, (beta1, beta2), r, h, (max_shift, in_radius) = block(w_in, w_out, w_t, bias, r, h)
    gamma = res.gamma
    residual, iterations, status, max_shift, in_radius = (np.array(a) for a in sharding.to_host(
        (res.residual, res.iterations, res.status, max_shift, in_radius), seeds))
    solver = "cg"
    retry = np.flatnonzero(~(residual <= tol))
    if retry.size and n <= widths[i] and n * widths[i] <= LSTSQ_MAX_ENTRIES:
      # a block that can be exact but that cg missed (e.g. width exactly d_in d_out: too
      # ill-conditioned for CGLS): dense lstsq for those seeds
      (gamma, beta1, beta2, r, h), fixed = _lstsq_seeds(
          retry, (w_in, w_out, w_t, bias, r_in, h_in), (gamma, beta1, beta2, r, h), mesh, dtype)
      for s, (res_s, shift_s, radius_s) in fixed.items():
        residual[s], max_shift[s], in_radius[s] = res_s, shift_s, radius_s
      solver = f"cg (lstsq for seeds {retry.tolist()})"
    finite = sharding.to_host(jnp.isfinite(gamma).all(1) & jnp.isfinite(beta1).all(1)
                              & jnp.isfinite(beta2).all(1), seeds)
    exact = (residual <= tol) & finite   # the rebuilt norms, checked, not assumed
    if not exact.all() and not allow_inexact:
      bad = np.flatnonzero(~exact)
      err = solver_failure(i, widths[i], n, "cg", float(residual[bad[0]]), tol,
                  iterations=int(iterations[bad[0]]), status=int(status[bad[0]]))
      raise ValueError(f"seeds {bad.tolist()}: {err}")
    ones = np.ones((seeds + pad, dims[i + 1]), dtype)   # split like the seeds (multi-host safe)
    gammas += [gamma, jnp.asarray(ones) if mesh is None else sharding.distribute(ones, mesh)]
    betas += [beta1, beta2]
    reports.append(BlockReport(i + 1, solver, widths[i], n, residual, None, iterations,
                               max_shift, in_radius, exact))
  # The network itself, measured per seed on the probe set, in the working dtype (on the host,
  # as `reconstruct` measures one: nothing to compile).
  t_h, f_h, g_h, b_h = sharding.to_host((target, frozen, gammas, betas), seeds)
  per_seed = data is not None and np.ndim(data) == 3
  error = np.array([network_error(
      [(w[s], c[s]) for w, c in t_h], [f[s] for f in f_h], [g[s] for g in g_h],
      [b[s] for b in b_h], radius=radius, data=np.asarray(data)[s] if per_seed else data,
      dtype=dtype) for s in range(seeds)])
  net_tol = tolerances(dtype).network
  blocks_exact = np.all([b.exact for b in reports], axis=0)
  off = np.flatnonzero(blocks_exact & ~(error <= net_tol))
  if off.size and not allow_inexact:
    raise ValueError(
        f"seeds {off.tolist()}: the rebuilt network is off by up to {np.max(error[off]):.3g} "
        f"(relative, on the probe inputs of the domain, {np.dtype(dtype)}) although "
        f"every block's system was solved to tol {tol:.3g}: the blocks are too ill-conditioned "
        f"for {np.dtype(dtype)}; widen the frozen layers, use float64, or pass allow_inexact=True")
  if pad:
    gammas, betas, frozen = ([a[:seeds] for a in arrays] for arrays in (gammas, betas, frozen))
  return _BatchedReconstruction(tuple(gammas), tuple(betas), tuple(reports), tuple(frozen),
                                error, net_tol)


def _lstsq_seeds(seeds, inputs, outputs, mesh, dtype):
  """Re-solves one block of the given seeds with dense `lstsq` (float64) on the host.

  Args:
    seeds: the seed indices to redo.
    inputs: the block's `(w_in, w_out, target, bias, radius, data)` as given to the batched
      block (`radius`/`data` shared or per seed, `None` where unused).
    outputs: its batched `(gamma, beta1, beta2, next radius, next data)`.
    mesh: the seed mesh or None.
    dtype: the working dtype.

  Returns:
    The outputs with those seeds replaced (split like the seeds again), and
    `{seed: (residual, max |beta|, input radius)}`.
  """
  host = [None if a is None else np.array(sharding.to_host(a)) for a in inputs + outputs]
  (w_in, w_out, w_t, bias, r_in, h_in), outs = host[:6], host[6:]
  fixed = {}
  for s in seeds:
    gamma, realised, residual, _ = krylov.lstsq_min_norm(w_in[s], w_out[s], w_t[s], dtype)
    r_s = None if r_in is None else (r_in[s] if np.ndim(r_in) else r_in)
    h_s = None if h_in is None else (h_in[s] if np.ndim(h_in) == 3 else h_in)
    gamma64 = np.asarray(gamma, np.float64)
    (b1, b2), r_next, h_next, (shift, radius) = block_norms(
        np, w_in[s], w_out[s], gamma64, np.asarray(bias[s], np.float64), realised,
        None if r_s is None else float(r_s), None if h_s is None else np.asarray(h_s, np.float64))
    for k, v in enumerate((gamma64, b1, b2, r_next, h_next)):
      if v is not None:
        outs[k][s] = v
    fixed[int(s)] = (residual, float(shift), float(radius))
  put = (lambda a: jnp.asarray(a)) if mesh is None else (lambda a: sharding.distribute(a, mesh))
  return tuple(None if a is None else put(a.astype(dtype)) for a in outs), fixed


@functools.lru_cache(maxsize=32)
def _batched_block(tol, maxiter, r_axis, h_axis, mesh):
  """A jitted vmap over seeds of (cg solve, shifts) for one block, split over `mesh`."""

  # several CPU devices share XLA's thread pool: LAPACK one matrix at a time (see block_norms)
  several = (mesh is not None and mesh.local_mesh.size > 1
             and mesh.devices.flat[0].platform == "cpu")

  def one(w_in, w_out, t, bias, r, h):
    with jax.default_matmul_precision("highest"):   # shifts bound the real products, on any device
      res = krylov.solve_min_norm(w_in, w_out, t, tol=tol, maxiter=maxiter)
      return (res,) + block_norms(jnp, w_in, w_out, res.gamma, bias, res.realised, r, h,
                                  one_matrix_per_call=several)

  batched = jax.vmap(one, in_axes=(0, 0, 0, 0, r_axis, h_axis))
  if mesh is None:
    return jax.jit(batched)
  specs = tuple(P(sharding.SEED_AXIS) if axis == 0 else P()
                for axis in (0, 0, 0, 0, r_axis, h_axis))
  return jax.jit(jax.shard_map(batched, mesh=mesh, in_specs=specs,
                               out_specs=P(sharding.SEED_AXIS), check_vma=False))


class _BatchedReconstruction(Reconstruction):
  """A `Reconstruction` with a leading seed axis; `apply` maps over it."""

  def apply(self, x: jax.Array) -> jax.Array:
    """Runs every seed's network on the shared inputs `x` `[..., d_0]` -> `[S, ..., d_L]`."""
    return _apply_batch_jit(self.frozen, self.gammas, self.betas, x)


_apply_batch_jit = jax.jit(jax.vmap(apply_frozen, in_axes=(0, 0, 0, None)))
