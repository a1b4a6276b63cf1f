"""Tests of the exact reconstruction (`jaxnorm.construct`).

Its problem generators (`Rng`, `make_problem`, `ball_and_sphere`, `rel_err`,
`at_threshold`) are shared with tests/test_krylov.py and tests/test_construct_batch.py.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxnorm import construct
from jaxnorm import krylov
from jaxnorm.models import NormMLP


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous setting."""
  previous = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


class Rng:
  """Deterministic normals from `jax.random.key(seed)` as numpy arrays.

  Every draw is a power-of-two-sized float32 `jax.random.normal`, so only a
  handful of shapes are ever compiled; the tests then work in numpy.
  """

  def __init__(self, seed):
    self.key, self.count = jax.random.key(seed), 0

  def normal(self, shape, dtype=np.float64):
    size = int(np.prod(shape))
    self.count += 1
    n = 1 << max(10, (size - 1).bit_length())
    draw = jax.random.normal(jax.random.fold_in(self.key, self.count), (n,), jnp.float32)
    return np.asarray(draw, np.float64)[:size].reshape(shape).astype(dtype)

  def uniform(self, shape, dtype=np.float64):
    return special.ndtr(self.normal(shape)).astype(dtype)


def make_problem(seed, dims, widths, dtype, keep_prob=1.0, bias_std=0.3):
  """A random target `dims` and a frozen He-normal network with hidden widths `widths`."""
  rng = Rng(seed)
  target, frozen = [], []
  for i, m in enumerate(widths):
    d_in, d_out = dims[i], dims[i + 1]
    target.append(((rng.normal((d_out, d_in)) / np.sqrt(d_in)).astype(dtype),
                   (bias_std * rng.normal((d_out,))).astype(dtype)))
    for shape in ((m, d_in), (d_out, m)):
      w = rng.normal(shape) * np.sqrt(2.0 / shape[1] / keep_prob)
      if keep_prob < 1:
        w = np.where(rng.uniform(shape) < keep_prob, w, 0.0)
      frozen.append(w.astype(dtype))
  return target, frozen


def ball_and_sphere(seed, n, dim, radius, dtype=np.float64):
  """`n` points uniform in the ball of `radius` and `n` points on its sphere."""
  rng = Rng(seed)
  g = rng.normal((2 * n, dim))
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  scale = rng.uniform((n, 1)) ** (1.0 / dim)
  return np.concatenate([u[:n] * scale * radius, u[n:] * radius]).astype(dtype)


def target_np(target, x):
  """The target network in float64 numpy: the reference."""
  h = np.asarray(x, np.float64)
  for k, (w, b) in enumerate(target):
    h = h @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
    if k < len(target) - 1:
      h = np.maximum(h, 0)
  return h


def rel_err(y, target, x):
  """max |y - f(x)| / max |f(x)|, with `y` the frozen network's output."""
  y_target = target_np(target, x)
  return float(np.max(np.abs(np.asarray(y, np.float64) - y_target)) / np.max(np.abs(y_target)))


def at_threshold(dims):
  return [dims[i] * dims[i + 1] for i in range(len(dims) - 1)]


SHAPES = [(3, 4), (4, 3, 5), (3, 5, 2, 4), (2, 6, 3)]   # depths 1, 2, 3; non-square


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
@pytest.mark.parametrize("dims", SHAPES)
def test_exact_float64_at_minimum_width(x64, dims, solver):
  del x64
  target, frozen = make_problem(0, dims, at_threshold(dims), np.float64)
  rec = construct.reconstruct(target, frozen, radius=2.0, solver=solver)
  x = ball_and_sphere(1, 200, dims[0], 2.0)
  assert rec.gammas[0].dtype == jnp.float64
  assert rel_err(rec.apply(x), target, x) <= 1e-9
  assert len(rec.gammas) == len(rec.betas) == 2 * (len(dims) - 1)
  for i, block in enumerate(rec.blocks):
    assert block.exact and block.solver == solver and block.block == i + 1
    assert block.width == block.min_width == dims[i] * dims[i + 1]
    assert block.residual <= 1e-12
    if solver == "lstsq":
      assert block.rank == block.min_width and block.iterations is None
    else:
      assert block.iterations >= 1 and block.rank is None
    np.testing.assert_array_equal(rec.gammas[2 * i + 1], 1.0)   # gamma_{2i} = 1


@pytest.mark.parametrize("dims", [(6, 8, 5), (5, 4)])
def test_float32_cg_overparameterized(dims):
  target, frozen = make_problem(2, dims, [2 * n for n in at_threshold(dims)], np.float32)
  rec = construct.reconstruct(target, frozen, radius=1.0, solver="cg")
  assert rec.gammas[0].dtype == jnp.float32
  x = ball_and_sphere(3, 200, dims[0], 1.0, np.float32)
  assert rel_err(rec.apply(x), target, x) <= 1e-4
  assert all(b.residual <= 1e-5 for b in rec.blocks)


def test_cg_gives_the_minimum_norm_solution(x64):
  del x64
  target, frozen = make_problem(4, (3, 4), [24], np.float64)   # 24 unknowns, 12 equations
  cg = construct.reconstruct(target, frozen, radius=1.0, solver="cg")
  ls = construct.reconstruct(target, frozen, radius=1.0, solver="lstsq")
  np.testing.assert_allclose(cg.gammas[0], ls.gammas[0], rtol=0, atol=1e-9)
  # Any other solution is longer: add a null-space direction of K.
  k = np.stack([np.outer(frozen[1][:, j], frozen[0][j]).ravel() for j in range(24)], axis=1)
  null = np.linalg.svd(k)[2][-1]
  assert np.linalg.norm(k @ null) < 1e-10
  assert np.linalg.norm(ls.gammas[0] + 0.1 * null) > np.linalg.norm(ls.gammas[0])


def test_domain_limit_exact_inside_not_far_outside(x64):
  """Exact on the ball and its sphere, but not at 10x the radius: the domain matters."""
  del x64
  dims, radius = (4, 3, 5), 1.5
  target, frozen = make_problem(5, dims, at_threshold(dims), np.float64)
  rec = construct.reconstruct(target, frozen, radius=radius, solver="lstsq")
  x = ball_and_sphere(6, 200, dims[0], radius)
  assert rel_err(rec.apply(x), target, x) <= 1e-9
  assert rel_err(rec.apply(10 * x), target, 10 * x) > 1e-2
  assert rec.blocks[0].input_radius == radius
  # R_1 = ||T'_1||_2 R_0 + ||c_1|| with T'_1 = T_1 (exact).
  expected = np.linalg.norm(target[0][0], 2) * radius + np.linalg.norm(target[0][1])
  np.testing.assert_allclose(rec.blocks[1].input_radius, expected, rtol=1e-10)


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_data_mode_exact_on_data_with_tighter_shifts(x64, solver):
  del x64
  dims = (3, 4, 2)
  target, frozen = make_problem(7, dims, at_threshold(dims), np.float64)
  data = 3.0 * Rng(8).normal((50, dims[0]))
  rec = construct.reconstruct(target, frozen, data=data, solver=solver)
  assert rel_err(rec.apply(data), target, data) <= 1e-9
  r0 = float(np.max(np.linalg.norm(data, axis=1)))
  assert rec.blocks[0].input_radius == pytest.approx(r0, rel=1e-12)
  ball = construct.reconstruct(target, frozen, data=None, radius=r0, solver=solver)
  # The data shifts are the tightest non-negative ones: never above the ball's.
  beta = np.asarray(rec.betas[0])
  assert np.all(beta >= 0) and np.all(beta <= np.asarray(ball.betas[0]) + 1e-12)
  assert rec.blocks[0].max_shift < ball.blocks[0].max_shift
  # Every unit of layer 1 is non-negative on the data, and touches 0 unless its shift is 0.
  pre = np.asarray(rec.gammas[0]) * (data @ frozen[0].T) + beta
  assert pre.min() >= -1e-12
  assert np.all(np.isclose(pre.min(0), 0, atol=1e-9) | (beta == 0))


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
@pytest.mark.parametrize("block", [1, 2])
def test_width_below_minimum_raises_naming_the_block(block, solver):
  dims = (3, 4, 2)
  widths = at_threshold(dims)
  widths[block - 1] -= 1
  target, frozen = make_problem(9, dims, widths, np.float32)
  need = dims[block - 1] * dims[block]
  with pytest.raises(ValueError, match=rf"block {block}: width m_{block} = {need - 1} "
                                       rf"is below the minimum .* = {need}"):
    construct.reconstruct(target, frozen, radius=1.0, solver=solver)


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_sparse_exact_above_threshold_error_below(x64, solver):
  del x64
  dims, keep_prob = (3, 3), 0.3
  target, frozen = make_problem(10, dims, [200], np.float64, keep_prob=keep_prob)
  assert 0.6 < np.mean(frozen[0] == 0) < 0.8 and 0.6 < np.mean(frozen[1] == 0) < 0.8
  rec = construct.reconstruct(target, frozen, radius=1.0, solver=solver)
  x = ball_and_sphere(11, 100, 3, 1.0)
  assert rel_err(rec.apply(x), target, x) <= 1e-9
  # Width 12 >= 9 = d*d, but with p = 0.3 some entry of T is covered by no column.
  target, frozen = make_problem(12, dims, [12], np.float64, keep_prob=keep_prob)
  pattern = r"block 1 \(width m_1 = 12, minimum 9\): the system is rank-deficient"
  if solver == "lstsq":
    pattern += r": rank \d < 9"
  with pytest.raises(ValueError, match=pattern):
    construct.reconstruct(target, frozen, radius=1.0, solver=solver)


def test_allow_inexact_returns_the_least_squares_fit(x64):
  del x64
  dims = (3, 4, 2)
  target, frozen = make_problem(13, dims, [8, 8], np.float64)   # block 1 needs 12
  fits = [construct.reconstruct(target, frozen, radius=1.0, solver=s, allow_inexact=True)
          for s in ("lstsq", "cg")]
  for rec in fits:
    assert not rec.blocks[0].exact and rec.blocks[0].residual > 1e-2
    assert rec.blocks[1].exact
  assert fits[0].blocks[0].rank == 8
  # Both solvers find the same (unique minimum-norm) least-squares fit.
  np.testing.assert_allclose(fits[0].blocks[0].residual, fits[1].blocks[0].residual, rtol=1e-6)
  np.testing.assert_allclose(fits[0].gammas[0], fits[1].gammas[0], atol=1e-6)
  x = ball_and_sphere(14, 50, 3, 1.0)
  assert rel_err(fits[0].apply(x), target, x) > 1e-3


def test_cg_that_cannot_converge_raises_unless_allowed():
  target, frozen = make_problem(15, (4, 4), [32], np.float32)
  with pytest.raises(ValueError, match="block 1 .*did not converge in 2 iterations"):
    construct.reconstruct(target, frozen, radius=1.0, solver="cg", maxiter=2)
  rec = construct.reconstruct(target, frozen, radius=1.0, solver="cg", maxiter=2,
                              allow_inexact=True)
  assert rec.blocks[0].iterations == 2 and rec.blocks[0].residual > 1e-5


def test_auto_falls_back_to_lstsq_where_cg_misses(x64, monkeypatch):
  del x64
  # A ratio-1 block that `auto` hands to cg first (as it does above LSTSQ_AUTO_ENTRIES); cg
  # misses in 2 iterations, and lstsq, which fits in its cap, builds it exactly.
  monkeypatch.setattr(construct, "LSTSQ_AUTO_ENTRIES", 0)
  target, frozen = make_problem(3, (4, 5), [20], np.float64)
  rec = construct.reconstruct(target, frozen, radius=1.0, solver="auto", maxiter=2)
  block = rec.blocks[0]
  assert block.exact and block.solver == "lstsq" and block.iterations == 2 and block.rank == 20
  x = ball_and_sphere(2, 100, 4, 1.0)
  assert rel_err(rec.apply(x), target, x) <= 1e-9
  monkeypatch.setattr(construct, "LSTSQ_MAX_ENTRIES", 0)   # too big for lstsq: cg's verdict
  with pytest.raises(ValueError, match="did not converge in 2 iterations"):
    construct.reconstruct(target, frozen, radius=1.0, solver="auto", maxiter=2)


def test_the_network_itself_is_measured_and_exact_means_the_network(x64, monkeypatch):
  del x64
  dims = (3, 5, 2)
  target, frozen = make_problem(4, dims, at_threshold(dims), np.float64)
  rec = construct.reconstruct(target, frozen, radius=2.0)
  assert rec.exact and rec.network_error <= 1e-9 and rec.network_tol == 4.3e-9
  spoiled = list(rec.gammas)
  spoiled[0] = spoiled[0] * (1 + 1e-6)
  err = construct.network_error(target, rec.frozen, spoiled, rec.betas, radius=2.0,
                                dtype=np.float64)
  assert 1e-8 < err < 1e-4   # a real measurement: a 1e-6 change of the norms shows
  # Blocks solved to tol but a network off by more than the dtype allows: refused, or kept
  # (and not called exact) with allow_inexact.
  monkeypatch.setattr(construct, "NETWORK_TOL_FLOAT32", 1e-30)
  with pytest.raises(ValueError, match="the rebuilt network is off by .* although every block"):
    construct.reconstruct(target, frozen, radius=2.0)
  kept = construct.reconstruct(target, frozen, radius=2.0, allow_inexact=True)
  assert all(b.exact for b in kept.blocks) and not kept.exact


def _bad(kind):
  target, frozen = make_problem(16, (3, 4, 2), [12, 8], np.float32)
  kwargs = dict(radius=1.0)
  if kind == "both":
    kwargs["data"] = np.zeros((5, 3))
  elif kind == "neither":
    kwargs = {}
  elif kind == "chain":
    target[1] = (np.zeros((2, 5)), np.zeros(2))
  elif kind == "bias":
    target[0] = (target[0][0], np.zeros(3))
  elif kind == "count":
    frozen = frozen[:3]
  elif kind == "frozen_in":
    frozen[2] = np.zeros((8, 3))
  elif kind == "frozen_out":
    frozen[1] = np.zeros((4, 11))
  elif kind == "data_dim":
    kwargs = dict(data=np.zeros((5, 4)))
  elif kind == "data_nan":
    kwargs = dict(data=np.full((5, 3), np.nan))
  elif kind == "weight_nan":
    target[1] = (np.where(np.arange(8).reshape(2, 4) == 3, np.nan, target[1][0]), target[1][1])
  elif kind == "bias_inf":
    target[0] = (target[0][0], np.full(4, np.inf))
  elif kind == "frozen_nan":
    frozen[3] = np.full_like(frozen[3], np.nan)
  elif kind == "radius":
    kwargs = dict(radius=-1.0)
  elif kind == "solver":
    kwargs["solver"] = "qr"
  elif kind == "tol":
    kwargs["tol"] = 0.0
  elif kind == "empty":
    target, frozen = [], []
  return target, frozen, kwargs


@pytest.mark.parametrize("kind,message", [
    ("both", "exactly one of radius= .* or data="),
    ("neither", "exactly one of radius= .* or data="),
    ("chain", r"target\[1\] weight \(2, 5\) takes 5 inputs but target\[0\] gives 4"),
    ("bias", r"target\[0\]: weight must be .*got shapes \(4, 3\) and \(3,\)"),
    ("count", r"depth 2 needs 2\*2 = 4 frozen matrices, got 3"),
    ("frozen_in", r"frozen\[2\] \(W_3, block 2\) must be \[m_2, 4\], got shape \(8, 3\)"),
    ("frozen_out", r"frozen\[1\] \(W_2, block 1\) must be \[4, 12\].*got shape \(4, 11\)"),
    ("data_dim", r"data must be \[n, 3\], got shape \(5, 4\)"),
    ("data_nan", "data must be finite"),
    ("weight_nan", r"target\[1\] weight must be finite"),
    ("bias_inf", r"target\[0\] bias must be finite"),
    ("frozen_nan", r"frozen\[3\] must be finite"),
    ("radius", "radius must be a finite number >= 0, got -1.0"),
    ("solver", "unknown solver 'qr'"),
    ("tol", r"tol must be a number in \(0, 1\), got 0.0"),
    ("empty", "target must have at least one"),
])
@pytest.mark.parametrize("solver", ["cg", "lstsq"])
def test_bad_arguments_raise_before_compute(kind, message, solver):
  target, frozen, kwargs = _bad(kind)
  kwargs.setdefault("solver", solver)
  with pytest.raises(ValueError, match=message):
    construct.reconstruct(target, frozen, **kwargs)


def test_matches_the_flax_norm_mlp():
  """The norms, written into `NormMLP(norm="affine")`, give the same function."""
  dims = (3, 4, 2)
  widths = [2 * n for n in at_threshold(dims)]
  target, frozen = make_problem(17, dims, widths, np.float32)
  rec = construct.reconstruct(target, frozen, radius=1.0)
  model = NormMLP((3, widths[0], 4, widths[1], 2), norm="affine")
  params = {f"dense_{k}": {"kernel": w.T} for k, w in enumerate(rec.frozen)}
  params.update({f"norm_{k}": {"scale": g, "bias": b}
                 for k, (g, b) in enumerate(zip(rec.gammas, rec.betas))})
  x = ball_and_sphere(18, 100, 3, 1.0, np.float32)
  y = rec.apply(x)
  np.testing.assert_allclose(model.apply({"params": params}, x), y, rtol=1e-5, atol=1e-5)
  assert rel_err(y, target, x) <= 1e-4


def test_zero_target_and_default_tolerances(x64):
  del x64
  target, frozen = make_problem(22, (2, 3), [6], np.float64)
  target = [(np.zeros_like(target[0][0]), target[0][1])]
  for solver in ("lstsq", "cg"):
    rec = construct.reconstruct(target, frozen, radius=1.0, solver=solver)
    assert rec.blocks[0].residual == 0 and not np.any(rec.gammas[0])
  assert krylov.default_tol(jnp.float32) == 1e-5 and krylov.default_tol(jnp.float64) == 1e-12
  # acceptance relative to the dtype: float32's thresholds scaled by sqrt(eps / eps_float32)
  assert construct.tolerances(jnp.float32) == (1e-5, 1e-4)
  assert construct.tolerances(jnp.float64) == (4.3e-10, 4.3e-9)
  assert construct.tolerances(jnp.float16).residual == 0.00091   # 1e-5 sqrt(2**-10 / 2**-23)


def test_float64_accepts_a_block_the_dtype_solves_as_well_as_it_can(x64, monkeypatch):
  # lstsq's residual on an ill-conditioned block can exceed cg's aim (1e-12) and still give a
  # network exact to float64's standard: such a block is exact (it was refused at a 1e-12 cut).
  del x64
  dims = (3, 5, 2)
  target, frozen = make_problem(4, dims, at_threshold(dims), np.float64)
  real = krylov.lstsq_min_norm

  def rougher(*args):   # the same solve, reported 1e-11 off (above 1e-12, within 4.3e-10)
    gamma, realised, residual, rank = real(*args)
    return gamma, realised, max(residual, 1e-11), rank

  monkeypatch.setattr(krylov, "lstsq_min_norm", rougher)
  rec = construct.reconstruct(target, frozen, radius=2.0, solver="lstsq")
  assert rec.exact and all(b.residual == 1e-11 and b.exact for b in rec.blocks)
  with pytest.raises(ValueError, match="relative residual 1e-11 > tol 1e-12"):
    construct.reconstruct(target, frozen, radius=2.0, solver="lstsq", tol=1e-12)


def test_norms_that_overflow_are_refused_not_called_exact():
  target, frozen = make_problem(21, (3, 4), [24], np.float32)
  target = [(w * 1e37, b) for w, b in target]            # shifts beyond float32's range
  with pytest.raises(ValueError, match="block 1: the rebuilt norms are not finite"):
    construct.reconstruct(target, frozen, radius=1e3)


def test_vmapped_block_norms_can_take_one_matrix_per_lapack_call_and_match_one_at_a_time():
  """Over several CPU devices, the spectral norm of the realised layer, batched over seeds, is one
  matrix per LAPACK call (jaxlib's batched CPU kernels can deadlock XLA's pool)."""
  rng = np.random.default_rng(0)
  s, d, m = 3, 4, 20
  args = (rng.normal(size=(s, m, d)), rng.normal(size=(s, d, m)), rng.normal(size=(s, m)),
          rng.normal(size=(s, d)), rng.normal(size=(s, d, d)))
  args = tuple(jnp.asarray(a, jnp.float32) for a in args)
  one = lambda w_in, w_out, g, b, r: construct.block_norms(jnp, w_in, w_out, g, b, r, 1.5, None,
                                                          one_matrix_per_call=True)
  batched = jax.jit(jax.vmap(one))
  hlo = batched.lower(*args).as_text()
  calls = [l for l in hlo.splitlines() if "custom_call @lapack_" in l]
  shapes = [t for l in calls for t in re.findall(r"tensor<([^>]*)>", l)]
  assert calls and all(t.count("x") <= 2 for t in shapes), shapes
  out = batched(*args)
  for i in range(s):
    single = jax.jit(one)(*(a[i] for a in args))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(single)):   # sums may round apart
      np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-6)
