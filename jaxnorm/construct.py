"""Exact reconstruction of a target ReLU network by tuning only the norms (docs/design.md §2).

Array level, math layout `W[out, in]`. A target of depth `l` is a list of
`(T_i [d_i, d_{i-1}], c_i [d_i])`; the frozen network has `2 l` weight matrices,
`W_{2i-1}` `[m_i, d_{i-1}]` and `W_{2i}` `[d_i, m_i]` (sparse networks are
dense arrays with zeros). Frozen layer `k` computes `gamma_k * (W_k h) + beta_k`,
with a ReLU after every layer but the last. Block `i` (layers `2i-1, 2i`) is
given:

1. `gamma_{2i-1}`: the minimum-norm solution of `W_{2i} diag(gamma) W_{2i-1} = T_i`
   (`lstsq`: dense SVD of the Khatri–Rao system in float64; `cg`: matrix-free
   CGLS, `jaxnorm.krylov`);
2. `beta_{2i-1}`: the shift that keeps every unit of layer `2i-1` non-negative
   on the domain, so the ReLU between the two layers is the identity there —
   `|gamma_j| ||W_{2i-1}[j, :]|| R_{i-1}` on the ball of radius `R_{i-1}`, or
   the smallest non-negative shift that does it on a finite data set;
3. `gamma_{2i} = 1`, `beta_{2i} = c_i - W_{2i} beta_{2i-1}`;
4. `R_i = ||T'_i||_2 R_{i-1} + ||c_i||`, where `T'_i = W_{2i} diag(gamma) W_{2i-1}`
   is the block as realised (`= T_i` to within `tol` when the block is exact;
   data are likewise propagated through the realised blocks, which keeps the
   shifts valid for `allow_inexact` fits too).

The result is exact on the domain only: far outside the ball (or away from the
data) units of layer `2i-1` go negative and the network no longer matches.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import krylov
from jaxnorm.validate import ConfigError

SOLVERS = ("auto", "lstsq", "cg")
# `auto` forms the dense system (d_i * d_{i-1} rows, m_i columns) up to this many
# entries; LAPACK's SVD on a 2-core CPU takes ~0.1 s at 1e6 and ~30 s at 5e6.
LSTSQ_AUTO_ENTRIES = 1_000_000
# `lstsq` refuses systems larger than this (1.6 GB in float64).
LSTSQ_MAX_ENTRIES = 200_000_000


class BlockReport(NamedTuple):
  """How block `i` (frozen layers `2i-1`, `2i`) was reconstructed.

  Attributes:
    block: the block index `i`, 1-based as in docs/design.md §1.
    solver: `"lstsq"` or `"cg"` (the solver of the returned norms; `auto`
      reports `"lstsq"` for a block where `cg` missed and `lstsq` took over,
      with `iterations` of the `cg` attempt).
    width: `m_i`, the hidden width of the block.
    min_width: `d_i * d_{i-1}`, the smallest width that can be exact.
    residual: relative residual `||K gamma - vec T_i|| / ||vec T_i||` of the
      returned `gamma` (computed in float64 for `lstsq`).
    rank: rank of the system (`lstsq`), else None.
    iterations: CGLS iterations (`cg`), else None.
    max_shift: largest `|beta|` of the block (both layers).
    input_radius: `R_{i-1}` (radius mode) or the largest input norm over the
      data (data mode).
    exact: `residual <= tol` (and full rank for `lstsq`).
  """

  block: int
  solver: str
  width: int
  min_width: int
  residual: float
  rank: int | None
  iterations: int | None
  max_shift: float
  input_radius: float
  exact: bool


# What counts as exact, relative to what the working dtype can reach: float32's thresholds (a
# block's relative residual 1e-5, the rebuilt network's relative error 1e-4: what rounding
# through a few wide layers reaches there) scaled by sqrt(eps / eps_float32) for other dtypes —
# a solve's error grows with its condition number, and blocks conditioned up to ~1/sqrt(eps)
# are accepted in every dtype (float64: 4.3e-10 and 4.3e-9).
RESIDUAL_TOL_FLOAT32 = 1e-5
NETWORK_TOL_FLOAT32 = 1e-4


PROBE_POINTS = 512   # probe inputs of a ball domain: half on the sphere, half inside


class Tolerances(NamedTuple):
  """What counts as exact in a dtype (see `tolerances`).

  Attributes:
    residual: the relative residual up to which a block's system is solved exactly.
    network: the measured relative error up to which a rebuilt network is exact.
  """
  residual: float
  network: float


def tolerances(dtype) -> Tolerances:
  """The exactness thresholds of `dtype`: float32's scaled by `sqrt(eps(dtype) / eps(float32))`.

  Args:
    dtype: the working floating dtype.

  Returns:
    `Tolerances` to two digits: (1e-5, 1e-4) for float32, (4.3e-10, 4.3e-9)
    for float64.
  """
  ratio = float(np.finfo(np.dtype(dtype)).eps) / float(np.finfo(np.float32).eps)
  scaled = lambda tol: float(f"{tol * math.sqrt(ratio):.2g}")
  return Tolerances(scaled(RESIDUAL_TOL_FLOAT32), scaled(NETWORK_TOL_FLOAT32))


class Reconstruction(NamedTuple):
  """Norm parameters that make the frozen network compute the target.

  Attributes:
    gammas: `2 l` scale vectors, one per frozen layer.
    betas: `2 l` shift vectors.
    blocks: one `BlockReport` per block.
    frozen: the frozen weights, as arrays of the working dtype.
    network_error: the rebuilt network's measured relative error
      `||net(x) - target(x)|| / ||target(x)||` on the probe set (points on
      the domain's sphere and inside it, or the data), both computed in the
      working dtype; None where not measured.
    network_tol: the `network_error` up to which the network counts as exact.
  """

  gammas: tuple[jax.Array, ...]
  betas: tuple[jax.Array, ...]
  blocks: tuple[BlockReport, ...]
  frozen: tuple[jax.Array, ...]
  network_error: Optional[float] = None
  network_tol: Optional[float] = None

  @property
  def exact(self):
    """Every block's system solved to `tol` and the network measured within `network_tol`.

    A bool; per seed, `[S]`, for `reconstruct_batch`'s result (whose fields are per seed).
    """
    if self.network_error is None:
      return False
    ok = np.all([b.exact for b in self.blocks], axis=0) & (
        np.asarray(self.network_error) <= self.network_tol)
    return ok if np.ndim(ok) else bool(ok)

  def apply(self, x: jax.Array) -> jax.Array:
    """Runs the frozen network with these norms on `x` `[..., d_0]` (jitted)."""
    return _apply_jit(self.frozen, self.gammas, self.betas, x)


def apply_frozen(frozen: Sequence[jax.Array], gammas: Sequence[jax.Array],
                 betas: Sequence[jax.Array], x: jax.Array) -> jax.Array:
  """Evaluates the frozen network `z_k = gamma_k * (W_k h) + beta_k`, ReLU between.

  Args:
    frozen: weights `W_1 … W_L`, math layout `[out, in]`.
    gammas: per-unit scales, `gammas[k]` `[out_k]`.
    betas: per-unit shifts, `betas[k]` `[out_k]`.
    x: inputs `[..., d_0]`.

  Returns:
    Outputs `[..., d_L]`; ReLU after every layer but the last.
  """
  h = x
  for k, (w, g, b) in enumerate(zip(frozen, gammas, betas)):
    h = g * (h @ w.T) + b
    if k < len(frozen) - 1:
      h = jax.nn.relu(h)
  return h


_apply_jit = jax.jit(apply_frozen)


def as_dense(a):
  """An array from `a`; sparse matrices (`.todense()`) are densified."""
  if hasattr(a, "todense") and not isinstance(a, (np.ndarray, jax.Array)):
    a = np.asarray(a.todense())
  return a


def _shape(lead, *dims):
  return "[" + ", ".join(str(d) for d in (*lead, *dims)) + "]"


def _real(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _all_finite(a) -> bool:
  """Whether every entry of `a` is finite: reduced where the array lives when that is an
  accelerator or other processes' devices (one bool comes back), else with numpy on the host
  (nothing to compile)."""
  if isinstance(a, jax.Array) and (not a.is_fully_addressable
                                   or any(d.platform != "cpu" for d in a.devices())):
    return not jnp.issubdtype(a.dtype, jnp.inexact) or bool(jnp.all(jnp.isfinite(a)))
  a = np.asarray(a)
  return not np.issubdtype(a.dtype, np.inexact) or bool(np.isfinite(a).all())


def check_args(target, frozen, radius, data, solver, tol, maxiter, lead=()):
  """Validates everything before any compute; returns (target, frozen, dims, widths)."""
  if solver not in SOLVERS:
    raise ConfigError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
  if (radius is None) == (data is None):
    raise ConfigError("give exactly one of radius= (a ball) or data= (a finite data set), "
                      f"got radius={radius!r} and data={'None' if data is None else 'an array'}")
  if radius is not None and not 0 <= _real(radius) < math.inf:
    raise ConfigError(f"radius must be a finite number >= 0, got {radius!r}")
  if tol is not None and not 0 < _real(tol) < 1:
    raise ConfigError(f"tol must be a number in (0, 1), got {tol!r}")
  if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral)
                              or maxiter < 1):
    raise ConfigError(f"maxiter must be a positive integer, got {maxiter!r}")
  nl = len(lead)
  target = [tuple(layer) if isinstance(layer, (tuple, list)) else layer for layer in target]
  if not target:
    raise ConfigError("target must have at least one (weight, bias) layer")
  dims = []
  for k, layer in enumerate(target):
    if not isinstance(layer, tuple) or len(layer) != 2:
      raise ConfigError(f"target[{k}] must be a (weight, bias) pair, got {type(layer).__name__}")
    ws, bs = np.shape(layer[0]), np.shape(layer[1])
    if len(ws) != 2 + nl or ws[:nl] != lead or bs != ws[:nl + 1]:
      raise ConfigError(f"target[{k}]: weight must be {_shape(lead, 'out', 'in')} and bias "
                        f"{_shape(lead, 'out')}, got shapes {ws} and {bs}")
    if dims and ws[nl + 1] != dims[-1]:
      raise ConfigError(f"target shapes don't chain: target[{k}] weight {ws} takes "
                        f"{ws[nl + 1]} inputs but target[{k - 1}] gives {dims[-1]} outputs")
    if not dims:
      dims.append(ws[nl + 1])
    dims.append(ws[nl])
    for name, a in (("weight", layer[0]), ("bias", layer[1])):
      if not _all_finite(a):
        raise ConfigError(f"target[{k}] {name} must be finite (found NaN or inf)")
  frozen = [as_dense(w) for w in frozen]
  for j, w in enumerate(frozen):
    if not _all_finite(w):
      raise ConfigError(f"frozen[{j}] must be finite (found NaN or inf)")
  if len(frozen) != 2 * len(target):
    raise ConfigError(f"a target of depth {len(target)} needs 2*{len(target)} = "
                      f"{2 * len(target)} frozen matrices, got {len(frozen)}")
  widths = []
  for i in range(len(target)):
    d_in, d_out = dims[i], dims[i + 1]
    s1, s2 = np.shape(frozen[2 * i]), np.shape(frozen[2 * i + 1])
    if len(s1) != 2 + nl or s1[:nl] != lead or s1[nl + 1] != d_in or s1[nl] < 1:
      raise ConfigError(f"frozen[{2 * i}] (W_{2 * i + 1}, block {i + 1}) must be "
                        f"{_shape(lead, f'm_{i + 1}', d_in)}, got shape {s1}")
    m = s1[nl]
    if s2 != (*lead, d_out, m):
      raise ConfigError(f"frozen[{2 * i + 1}] (W_{2 * i + 2}, block {i + 1}) must be "
                        f"{_shape(lead, d_out, m)} to chain with frozen[{2 * i}] {s1} and "
                        f"target[{i}], got shape {s2}")
    widths.append(m)
  if data is not None:
    ds = np.shape(data)
    if len(ds) not in (2, 2 + nl) or ds[-1] != dims[0] or (len(ds) == 2 + nl and ds[:nl] != lead):
      raise ConfigError(f"data must be [n, {dims[0]}]"
                        + (f" or {_shape(lead, 'n', dims[0])}" if nl else "") + f", got shape {ds}")
    if ds[-2] < 1:
      raise ConfigError("data must hold at least one point")
    if not np.all(np.isfinite(np.asarray(data))):
      raise ConfigError("data must be finite (found NaN or inf)")
  if solver == "lstsq":
    for i, m in enumerate(widths):
      if dims[i] * dims[i + 1] * m > LSTSQ_MAX_ENTRIES:
        raise ConfigError(f"block {i + 1}: the dense system has {dims[i] * dims[i + 1] * m:.3g} "
                          f"entries > {LSTSQ_MAX_ENTRIES:.3g}; use solver='cg'")
  return target, frozen, tuple(int(d) for d in dims), tuple(int(m) for m in widths)


def check_width(i, m, d_in, d_out, allow_inexact):
  """Refuses (`ConfigError`) a block narrower than `d_in * d_out` unless inexact is allowed."""
  if m < d_in * d_out and not allow_inexact:
    raise ConfigError(f"block {i + 1}: width m_{i + 1} = {m} is below the minimum "
                      f"d_{i + 1}*d_{i} = {d_out}*{d_in} = {d_in * d_out} for an exact "
                      f"reconstruction (pass allow_inexact=True for a least-squares fit)")


def working_dtype(arrays):
  """The floating dtype the construction computes in for these arrays."""
  dtype = jnp.result_type(*arrays)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(float)
  return dtype


def _unit_range(xp, w_in, h):
  """Per-unit min and max of `h @ w_in.T` over the rows of `h`, ~4M entries at a time."""
  n, m = h.shape[0], w_in.shape[0]
  chunk = max(1, min(n, (1 << 22) // max(m, 1)))
  h = h.astype(w_in.dtype)   # the same product, in the same dtype, as the network computes
  if xp is np:
    lo, hi = np.full(m, np.inf), np.full(m, -np.inf)
    for start in range(0, n, chunk):
      a = h[start:start + chunk] @ w_in.T
      lo, hi = np.minimum(lo, a.min(0)), np.maximum(hi, a.max(0))
    return lo, hi
  nb = -(-n // chunk)
  h = jnp.concatenate([h, jnp.broadcast_to(h[:1], (nb * chunk - n, h.shape[1]))])  # repeats a row

  def one(hc):
    a = hc @ w_in.T
    return a.min(0), a.max(0)

  lo, hi = jax.lax.map(one, h.reshape(nb, chunk, -1))
  return lo.min(0), hi.max(0)


def _row_norms(w: np.ndarray) -> np.ndarray:
  """`np.linalg.norm(w, axis=1)`, the same sums, a few MB of rows at a time (no `[m, d_in]`
  temporary: its first touch cost 0.4 s at 73,728 x 576)."""
  step = max(1, (4 << 20) // max(w.shape[1] * w.itemsize, 1))
  return np.concatenate([np.sqrt(np.add.reduce(c * c, axis=1))
                         for c in (w[i:i + step] for i in range(0, w.shape[0], step))])


@jax.custom_batching.sequential_vmap
def _spectral_norm(a):
  """`jnp.linalg.norm(a, 2)`, one matrix per LAPACK call under `vmap`."""
  return jnp.linalg.norm(a, 2)


def block_norms(xp, w_in, w_out, gamma, bias, realised, radius, h, *, one_matrix_per_call=False):
  """Steps 2–4 for one block, with `xp` = numpy (host) or jax.numpy (vmappable).

  The big matrices stay in the working dtype; on the host the small vectors
  are float64. `one_matrix_per_call` (jax.numpy under `vmap` over several CPU
  devices) computes the spectral norm one matrix per LAPACK call, since
  jaxlib's batched CPU kernels block a thread of XLA's shared pool on their
  parts (docs/design.md, "One CPU device per core"); it may round the result
  differently in the last bit, so one device keeps the batched call.

  Returns:
    `(beta_{2i-1}, beta_{2i}), next radius, next data, (max |beta|, input radius)`.
  """
  if h is None:
    norms = _row_norms(w_in) if xp is np else xp.linalg.norm(w_in, axis=1)
    beta1 = xp.abs(gamma) * norms.astype(gamma.dtype) * radius
    spectral = _spectral_norm(realised) if one_matrix_per_call else xp.linalg.norm(realised, 2)
    next_radius = spectral * radius + xp.linalg.norm(bias)
    in_radius, next_h = radius, None
  else:
    lo, hi = _unit_range(xp, w_in, h)
    beta1 = xp.maximum(0, -xp.where(gamma >= 0, gamma * lo, gamma * hi))
    next_h = xp.maximum(h @ realised.T + bias, 0)
    in_radius, next_radius = xp.max(xp.linalg.norm(h, axis=1)), None
  beta2 = bias - (w_out @ beta1.astype(w_out.dtype)).astype(bias.dtype)
  max_shift = xp.maximum(xp.max(xp.abs(beta1)), xp.max(xp.abs(beta2)))
  return (beta1, beta2), next_radius, next_h, (max_shift, in_radius)


def solver_failure(i, m, n, solver, residual, tol, rank=None, iterations=None, status=None):
  """The one-line `ValueError` for a block whose solve did not reach `tol` (to raise)."""
  what = f"block {i + 1} (width m_{i + 1} = {m}, minimum {n})"
  if rank is not None and rank < n:
    why = f"the system is rank-deficient: rank {rank} < {n}"
  elif status == krylov.STATIONARY:
    why = "the system is rank-deficient (least-squares optimum reached)"
  elif status == krylov.MAX_ITER:
    why = (f"cg did not converge in {iterations} iterations (rank-deficient or ill-conditioned; "
           "raise maxiter or use solver='lstsq')")
  else:
    why = "the solve is not accurate enough"
  return ValueError(f"{what}: {why}; relative residual {residual:.3g} > tol {tol:.3g} "
                    f"({solver}); pass allow_inexact=True to keep the least-squares fit")


def reconstruct(target, frozen, *, radius=None, data=None, solver: str = "auto",
                tol: float | None = None, maxiter: int | None = None,
                allow_inexact: bool = False, measure: bool = True) -> Reconstruction:
  """Norm parameters with which the frozen network equals the target on a domain.

  Not jittable (it validates, picks solvers and raises on values); the `cg`
  block solve inside is jitted, and `reconstruct_batch` vmaps it over seeds.

  Args:
    target: `[(T_i [d_i, d_{i-1}], c_i [d_i]), ...]`, depth `l >= 1`.
    frozen: the `2 l` frozen matrices `W_{2i-1}` `[m_i, d_{i-1}]`,
      `W_{2i}` `[d_i, m_i]` (zeros for pruned weights; `.todense()`-able
      sparse matrices are densified).
    radius: the domain is the ball `||x|| <= radius`.
    data: the domain is this finite set of inputs `[n, d_0]`. Exactly one of
      `radius` and `data` must be given.
    solver: `"lstsq"` (dense SVD in float64, reports the rank), `"cg"`
      (matrix-free CGLS in the working dtype) or `"auto"` (`lstsq` when the
      system has at most `LSTSQ_AUTO_ENTRIES` entries, else `cg`, and
      `lstsq` after all when `cg` misses `tol` and the system has at most
      `LSTSQ_MAX_ENTRIES`: `auto` never refuses a block `lstsq` can build).
    tol: a block counts as exact when its relative residual is `<= tol`;
      also the `cg` stopping rule. Default: exact within `tolerances(dtype).residual`
      (1e-5 float32, 4.3e-10 float64), `cg` solving towards
      `krylov.default_tol(dtype)` (1e-5, 1e-12). The network is exact when
      also its measured error is within `tolerances(dtype).network`.
    maxiter: `cg` iteration cap, default `krylov.default_maxiter`.
    allow_inexact: keep the least-squares fit of blocks that cannot be exact
      (width below `d_i d_{i-1}`, rank-deficient) instead of raising.
    measure: measure the rebuilt network on the probe set (else `network_error`
      is None and `exact` False: for a caller that measures a larger network
      built from these blocks, as `reconstruct_conv` does).

  Returns:
    A `Reconstruction`; the working dtype is that of the target and frozen
    arrays (float64 only with `jax_enable_x64`).

  Raises:
    ValueError: bad arguments (before any compute), or a block that is not
      exact (naming it, its width, the minimum width and the rank) unless
      `allow_inexact`.
  """
  target, frozen, dims, widths = check_args(target, frozen, radius, data, solver, tol, maxiter)
  for i, m in enumerate(widths):
    check_width(i, m, dims[i], dims[i + 1], allow_inexact)
  dtype = working_dtype([a for layer in target for a in layer] + list(frozen))
  frozen = tuple(jnp.asarray(w, dtype) for w in frozen)
  # cg aims at krylov.default_tol (stricter in float64); a block is exact within
  # tolerances(dtype).residual
  aim, tol = ((krylov.default_tol(dtype), tolerances(dtype).residual) if tol is None
              else (float(tol), float(tol)))
  r = None if radius is None else float(radius)
  h = None if data is None else np.asarray(data, np.float64)
  gammas, betas, reports = [], [], []
  for i, (w_t, bias) in enumerate(target):
    w_t = jnp.asarray(w_t, dtype)
    w_in, w_out = frozen[2 * i], frozen[2 * i + 1]
    m, n = widths[i], dims[i] * dims[i + 1]
    use = solver if solver != "auto" else ("lstsq" if n * m <= LSTSQ_AUTO_ENTRIES else "cg")
    rank = iterations = status = None
    if use == "cg":
      res = krylov.solve_min_norm(w_in, w_out, w_t, tol=aim, maxiter=maxiter)
      gamma, residual = res.gamma, float(res.residual)
      iterations, status = int(res.iterations), int(res.status)
      realised = res.realised
      exact = residual <= tol
      if not exact and solver == "auto" and n * m <= LSTSQ_MAX_ENTRIES:
        use = "lstsq"   # e.g. width exactly d_in d_out: too ill-conditioned for CGLS
    if use == "lstsq":   # realised: the block as computed, T' = K gamma
      gamma, realised, residual, rank = krylov.lstsq_min_norm(w_in, w_out, w_t, dtype)
      exact = rank >= n and residual <= tol
    if not exact and not allow_inexact:
      raise solver_failure(i, m, n, use, residual, tol, rank, iterations, status)
    # Shifts on the host (cheap next to the solve, and nothing to compile).
    small = [np.asarray(a, np.float64) for a in (gamma, bias, realised)]
    (beta1, beta2), r, h, (max_shift, in_radius) = block_norms(
        np, np.asarray(w_in), np.asarray(w_out), *small, r, h)
    if not (np.isfinite(residual) and _all_finite(gamma) and np.isfinite(beta1).all()
            and np.isfinite(beta2).all()):   # e.g. overflow: the block as rebuilt is unusable
      raise ValueError(f"block {i + 1}: the rebuilt norms are not finite (residual {residual}); "
                       f"the target or frozen weights are too large for {np.dtype(dtype)}")
    np_dtype = np.dtype(dtype)   # convert on the host: no per-shape compiles
    gammas += [gamma, jnp.asarray(np.ones(dims[i + 1], np_dtype))]
    betas += [jnp.asarray(beta1.astype(np_dtype)), jnp.asarray(beta2.astype(np_dtype))]
    reports.append(BlockReport(i + 1, use, m, n, residual, rank, iterations,
                               float(max_shift), float(in_radius), bool(exact)))
  net_tol = tolerances(dtype).network
  if not measure:
    return Reconstruction(tuple(gammas), tuple(betas), tuple(reports), frozen, None, net_tol)
  error = network_error(target, frozen, gammas, betas, radius=radius, data=data, dtype=dtype)
  if not error <= net_tol and not allow_inexact:
    raise ValueError(
        f"the rebuilt network is off by {error:.3g} (relative, on {PROBE_POINTS} probe inputs of "
        f"the domain, {np.dtype(dtype)}) although every block's system was solved to tol "
        f"{tol:.3g}: the blocks are too ill-conditioned for {np.dtype(dtype)}; widen the frozen "
        f"layers, use float64, or pass allow_inexact=True")
  return Reconstruction(tuple(gammas), tuple(betas), tuple(reports), frozen, float(error),
                        net_tol)


def probe_inputs(d_in: int, *, radius=None, data=None, seed: int = 0) -> np.ndarray:
  """The probe set on which a rebuilt network is measured (float64, on the host).

  Args:
    d_in: the input dimension.
    radius: a ball domain: `PROBE_POINTS // 2` points on its sphere and as
      many uniform inside it.
    data: a finite domain `[n, d_in]` (or `[S, n, d_in]`): its first 4096 points.
    seed: seed of the ball's probe points.

  Returns:
    `[n, d_in]` (or `[S, n, d_in]` for per-seed data).
  """
  if data is not None:
    data = np.asarray(data, np.float64)
    return data[..., :4096, :]
  rng = np.random.default_rng(seed)
  half = PROBE_POINTS // 2
  g = rng.normal(size=(2 * half, d_in))
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  g[half:] *= rng.uniform(size=(half, 1)) ** (1.0 / d_in)   # uniform in the ball
  return float(radius) * g


PROBE_CHUNK = 1 << 23   # activations of a wide layer evaluated at a time by `network_error`


def _host_network(x, frozen, gammas, betas):
  """The rebuilt network on the host (numpy), ReLU between layers. Each block's wide layer runs
  `PROBE_CHUNK // len(x)` units at a time, each chunk's share of the next layer summed: no
  `[n, m]` activation is formed (one chunk, as for every width up to 16,384 at 512 probes, is
  exactly the plain product)."""
  h = x
  step = max(1, PROBE_CHUNK // max(len(x), 1))
  for k in range(0, len(frozen), 2):
    (w1, w2), (g1, g2), (b1, b2) = frozen[k:k + 2], gammas[k:k + 2], betas[k:k + 2]
    y = None
    for s in range(0, w1.shape[0], step):
      u = np.maximum(g1[s:s + step] * (h @ w1[s:s + step].T) + b1[s:s + step], 0)
      part = u @ w2[:, s:s + step].T
      y = part if y is None else y + part
    h = g2 * y + b2
    if k + 2 < len(frozen):
      h = np.maximum(h, 0)
  return h


def network_error(target, frozen, gammas, betas, *, radius=None, data=None, dtype=np.float32,
                  seed: int = 0) -> float:
  """Measured relative error of a rebuilt network against its target on a probe set.

  Args:
    target: `[(T_i, c_i), ...]`.
    frozen: the frozen matrices.
    gammas: the rebuilt scales.
    betas: the rebuilt shifts.
    radius: a ball domain: `PROBE_POINTS // 2` points on its sphere and as
      many uniform inside it.
    data: a finite domain: its points (the first 4096).
    dtype: the working dtype (both networks run in it).
    seed: seed of the probe points.

  Returns:
    `||net(x) - target(x)||_F / ||target(x)||_F` (the absolute error where
    the target is 0 on the probe set).
  """
  x = probe_inputs(np.shape(frozen[0])[1], radius=radius, data=data, seed=seed)
  dt = np.dtype(dtype)   # on the host, in the working dtype (no compile per shape)
  cast = lambda a: np.asarray(a).astype(dt, copy=False)
  x = x.astype(dt)
  want = x
  for k, (w, b) in enumerate(target):
    want = want @ cast(w).T + cast(b)
    if k < len(target) - 1:
      want = np.maximum(want, 0)
  got = _host_network(x, [cast(a) for a in frozen], [cast(a) for a in gammas],
                      [cast(a) for a in betas])
  want, got = want.astype(np.float64), got.astype(np.float64)
  scale = np.linalg.norm(want)
  err = np.linalg.norm(got - want)
  return float(err / scale) if scale > 0 else float(err)
