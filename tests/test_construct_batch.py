"""Tests for jaxnorm.construct_batch: `reconstruct` for many seeds in one program."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnorm import construct
from jaxnorm import construct_batch
from tests.test_construct import at_threshold
from tests.test_construct import ball_and_sphere
from tests.test_construct import make_problem
from tests.test_construct import rel_err


@pytest.mark.parametrize("mode", ["radius", "data"])
def test_reconstruct_batch_matches_each_seed(mode):
  seeds, dims = 3, (3, 4, 2)
  widths = [2 * n for n in at_threshold(dims)]
  problems = [make_problem(20 + s, dims, widths, np.float32) for s in range(seeds)]
  target = [tuple(np.stack([p[0][i][j] for p in problems]) for j in range(2))
            for i in range(len(widths))]
  frozen = [np.stack([p[1][k] for p in problems]) for k in range(2 * len(widths))]
  x = ball_and_sphere(21, 100, dims[0], 1.0, np.float32)
  kwargs = dict(radius=1.0) if mode == "radius" else dict(data=x)
  rec = construct_batch.reconstruct_batch(target, frozen, **kwargs)
  y = rec.apply(x)
  assert y.shape == (seeds, 200, dims[-1])
  assert rec.blocks[0].residual.shape == (seeds,) and rec.blocks[0].exact.all()
  for s, (t_s, _) in enumerate(problems):
    assert rel_err(y[s], t_s, x) <= 1e-4
  # the network measured per seed, as `reconstruct` measures one
  assert rec.network_error.shape == (seeds,) and rec.exact.tolist() == [True] * seeds
  for s, (t_s, f_s) in enumerate(problems):
    one = construct.reconstruct(t_s, f_s, solver="cg", **kwargs)
    assert rec.network_error[s] == pytest.approx(one.network_error, rel=0.3, abs=2e-7)
    assert rec.network_error[s] <= rec.network_tol == 1e-4
  with pytest.raises(ValueError, match="leading seed axis"):
    construct_batch.reconstruct_batch(problems[0][0], problems[0][1], radius=1.0)


def test_a_seed_whose_rebuilt_norms_overflow_is_not_exact_and_nan_input_is_refused():
  dims, widths = (3, 4), [24]
  problems = [make_problem(30 + s, dims, widths, np.float32) for s in range(2)]
  target = [tuple(np.stack([p[0][0][j] for p in problems]) for j in range(2))]
  frozen = [np.stack([p[1][k] for p in problems]) for k in range(2)]
  target[0][0][1] *= 1e37                       # seed 1's target: shifts beyond float32
  rec = construct_batch.reconstruct_batch(target, frozen, radius=1e3, allow_inexact=True)
  assert rec.blocks[0].exact.tolist() == [True, False] and rec.exact.tolist() == [True, False]
  assert rec.network_error[0] <= 1e-4 and not rec.network_error[1] <= 1e-4


def test_a_seed_whose_network_misses_is_refused_or_kept_not_exact(monkeypatch):
  dims, widths = (3, 4), [24]
  problems = [make_problem(40 + s, dims, widths, np.float32) for s in range(2)]
  target = [tuple(np.stack([p[0][0][j] for p in problems]) for j in range(2))]
  frozen = [np.stack([p[1][k] for p in problems]) for k in range(2)]
  monkeypatch.setattr(construct, "NETWORK_TOL_FLOAT32", 1e-12)   # nothing float32 can meet
  with pytest.raises(ValueError, match=r"seeds \[0, 1\]: the rebuilt network is off by"):
    construct_batch.reconstruct_batch(target, frozen, radius=1.0)
  rec = construct_batch.reconstruct_batch(target, frozen, radius=1.0, allow_inexact=True)
  assert rec.blocks[0].exact.all() and not rec.exact.any()
  target[0][0][0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"target\[0\] weight must be finite"):
    construct_batch.reconstruct_batch(target, frozen, radius=1.0)


def test_seeds_where_cg_misses_are_rebuilt_by_lstsq():
  # At width exactly d_in d_out cg may not converge (here: cut to 3 iterations); those seeds'
  # blocks are solved again by dense lstsq, shifts and the next block's radius with them.
  seeds, dims = 3, (3, 4, 2)
  problems = [make_problem(50 + s, dims, at_threshold(dims), np.float32) for s in range(seeds)]
  target = [tuple(np.stack([p[0][i][j] for p in problems]) for j in range(2)) for i in range(2)]
  frozen = [np.stack([p[1][k] for p in problems]) for k in range(4)]
  rec = construct_batch.reconstruct_batch(target, frozen, radius=1.0, maxiter=3)
  assert all(b.solver == "cg (lstsq for seeds [0, 1, 2])" for b in rec.blocks)
  assert rec.exact.all() and all(b.exact.all() for b in rec.blocks)
  x = ball_and_sphere(51, 100, dims[0], 1.0, np.float32)
  y = rec.apply(x)
  for s, (t_s, f_s) in enumerate(problems):
    assert rel_err(y[s], t_s, x) <= 1e-4
    one = construct.reconstruct(t_s, f_s, radius=1.0, solver="lstsq")
    np.testing.assert_allclose(rec.blocks[1].input_radius[s], one.blocks[1].input_radius,
                               rtol=1e-5)
