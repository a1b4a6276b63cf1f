"""Tests for jaxnorm.krylov: the matrix-free minimum-norm CGLS solver and its dense reference."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from jaxnorm import krylov
from tests.test_construct import Rng


def test_solve_min_norm_vmaps_over_seeds():
  d_in, d_out, m, seeds = 4, 3, 24, 3
  rng = Rng(19)
  w_in = rng.normal((seeds, m, d_in), np.float32) * np.sqrt(2 / d_in)
  w_out = rng.normal((seeds, d_out, m), np.float32) * np.sqrt(2 / m)
  t = rng.normal((seeds, d_out, d_in), np.float32)
  batched = jax.vmap(lambda a, b, c: krylov.solve_min_norm(a, b, c, tol=1e-6))(w_in, w_out, t)
  assert batched.gamma.shape == (seeds, m)
  for s in range(seeds):
    one = krylov.solve_min_norm(w_in[s], w_out[s], t[s], tol=1e-6)
    np.testing.assert_allclose(batched.gamma[s], one.gamma, atol=1e-5)
    assert batched.residual[s] <= 1e-6 and batched.status[s] == krylov.CONVERGED
    np.testing.assert_allclose(krylov.khatri_rao_matvec(w_in[s], w_out[s], one.gamma), t[s],
                               atol=1e-5)
    np.testing.assert_allclose(krylov.khatri_rao_rmatvec(w_in[s], w_out[s], t[s]),
                               np.einsum("aj,jb,ab->j", w_out[s], w_in[s], t[s]), rtol=1e-5)


def test_chunked_and_padded_product_is_the_same(monkeypatch):
  """`K gamma` runs in chunks of columns, zero-padded to a multiple: same answer.

  (d_in < d_out here: `K^T y` contracts over d_out; the float64 tests below have
  d_in > d_out, the other layout.)"""
  rng = Rng(23)
  w_in, w_out, t = (rng.normal(s, np.float32) for s in ((26, 2), (3, 26), (3, 2)))
  monkeypatch.setattr(krylov, "_CHUNK_BYTES", (3 + 2) * 4 * 7)   # 7 columns: 4 chunks, 2 padded
  monkeypatch.setattr(krylov, "_UNCHUNKED_BYTES", 0)
  assert krylov._chunk_size(26, 3, 2, 4, krylov._CHUNK_BYTES) == 7
  assert krylov._chunk_size(26, 3, 2, 4, krylov._CHUNK_BYTES, 3 * 26 * 4) == 26   # one GEMM
  solve = functools.partial(krylov.solve_min_norm, tol=1e-6)
  assert "length=4" in str(jax.make_jaxpr(solve)(w_in, w_out, t))   # the chunk scan
  chunked = solve(w_in, w_out, t)
  assert chunked.gamma.shape == (26,) and chunked.residual <= 1e-6
  np.testing.assert_allclose(chunked.gamma, krylov.lstsq_min_norm(w_in, w_out, t)[0], atol=1e-5)
  with pytest.raises(ValueError, match=r"need w_in \[m, d_in\]"):
    krylov.solve_min_norm(w_in, w_out[:, :5], t)


@pytest.mark.parametrize("m,status", [(20, krylov.CONVERGED),     # 20 unknowns, 12 equations
                                      (7, krylov.STATIONARY)])    # 7 unknowns, 12 equations
def test_solve_min_norm_is_numpy_lstsq_in_float64(enable_x64, m, status):
  """Consistent: the minimum-norm solution; inconsistent: the least-squares fit. Both lstsq's."""
  del enable_x64
  d_out, d_in = 3, 4
  rng = np.random.default_rng(m)
  w_in, w_out, t = (rng.normal(size=s) for s in ((m, d_in), (d_out, m), (d_out, d_in)))
  k = np.stack([np.outer(w_out[:, j], w_in[j]).ravel() for j in range(m)], axis=1)
  expected = np.linalg.lstsq(k, t.ravel(), rcond=None)[0]
  res = krylov.solve_min_norm(w_in, w_out, t)
  assert res.gamma.dtype == np.float64 and int(res.status) == status
  np.testing.assert_allclose(res.gamma, expected, rtol=0, atol=1e-7)
  np.testing.assert_allclose(res.realised, (k @ expected).reshape(d_out, d_in), rtol=0,
                             atol=1e-7)
  fit = np.linalg.norm(k @ expected - t.ravel()) / np.linalg.norm(t)
  np.testing.assert_allclose(float(res.residual), fit, rtol=1e-6, atol=1e-12)
  if status == krylov.CONVERGED:
    assert float(res.residual) <= krylov.default_tol(np.float64)
  else:
    assert float(res.residual) > 0.1   # 7 columns cannot span the 12-dimensional target


def test_default_maxiter_is_four_per_equation_within_200_and_2000():
  assert [krylov.default_maxiter(n) for n in (1, 50, 51, 100, 499, 500, 501, 10**6)] == [
      200, 200, 204, 400, 1996, 2000, 2000, 2000]
