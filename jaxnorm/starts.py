"""Start phases for affine `NormMLP` fits: where the norms begin before the first step.

A start is a callable `start(run, state) -> state` that `jaxnorm.fit` runs once
on the batched state before the first step (`fit(..., start=...)`); methods
may have one too (`methods.Distill.prepare` calls `distill` here). All three
rely on `NormMLP`'s layout (`dense_{k}/kernel`, `norm_{k}/scale|bias`) and on a
`Regression` task with inputs drawn from a domain:

* `LinearRegime()`: shifts that put every unit of each block's wide layer in
  ReLU's linear regime, from the frozen weights alone
  (`jaxnorm.distill.linear_regime_norms`);
* `Construct()`: the exact reconstruction of each seed's MLP target
  (`jaxnorm.reconstruct_batch`; least squares where a block is narrower than
  `d_in * d_out`). An oracle: it reads the target's weights; needs a ball;
* `distill(method, run, state)`: fit students of the network's narrow widths
  to the fixed batch, construct the norms from the best, mark the seeds where
  that failed.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxnorm import construct_batch
from jaxnorm import distill as distill_lib
from jaxnorm import extract as extract_lib
from jaxnorm import models
from jaxnorm import sharding
from jaxnorm import validate


def _check_mlp(what: str, run, need_ball: bool) -> int:
  info = run.model_info.get("norm_mlp")
  if info is None or info[0] != "affine":
    raise validate.ConfigError(f"{what} needs an affine NormMLP with an even number of layers; "
                               f"got {run.model_info.get('description')}")
  task = run.task
  if getattr(task, "kind", None) in (None, "data", "classification"):
    raise validate.ConfigError(f"{what} needs a Regression task with inputs from a domain")
  if need_ball and task.inputs != "ball":
    raise validate.ConfigError(f"{what} is exact on a ball: it needs inputs='ball', got "
                               f"{task.inputs!r}")
  return len(run.model_info["widths"]) - 1


def constructed_norms(run, state, layers, data=None):
  """Per-seed norms that realise `layers` `[(W[S, out, in], b[S, out]), ...]` (batched `cg`).

  Args:
    run: the fit's `engine.Run`.
    state: the batched state (its frozen kernels are used).
    layers: one MLP per seed, in math layout with a leading seed axis.
    data: optional points `[S, n, d_0]` on which to be exact instead of the
      task's ball.

  Returns:
    `(trainable, report)`: the trainable dict `{(f"norm_{k}", "scale" | "bias"): [S, width]}`
    and the construction's verdicts (`construction_report`), also kept in `run.notes`.
  """
  n_layers = len(run.model_info["widths"]) - 1
  frozen = [jnp.swapaxes(state.frozen[(f"dense_{k}", "kernel")], 1, 2) for k in range(n_layers)]
  domain_arg = {"radius": run.task.radius} if data is None else {"data": data}
  rec = construct_batch.reconstruct_batch(layers, frozen, allow_inexact=True, mesh=run.mesh,
                                          **domain_arg)
  seeds = run.seeds or state.step.shape[0]
  report = construction_report(rec, seeds, "the ball" if data is None else "the scaled batch")
  for block in report["blocks"]:   # the blocks' own verdicts, per seed (padding seeds left out)
    log = logging.info if block["exact_seeds"] == seeds else logging.warning
    log("construction block %d (width %d, min %d): %d/%d seeds exact (relative residual median "
        "%.3g, max %.3g)", block["block"], block["width"], block["min_width"],
        block["exact_seeds"], seeds, np.median(block["residual"]), np.max(block["residual"]))
  error = np.asarray(report["network_error"])
  log = logging.info if report["exact_seeds"] == seeds else logging.warning
  log("constructed network: %d/%d seeds exact (measured relative error on %s: median %.3g, max "
      "%.3g; exact within %.3g)", report["exact_seeds"], seeds, report["probe"],
      np.median(error), np.max(error), report["network_tol"])
  if run.notes is not None:
    run.notes["construction"] = report
  trainable = {}
  for k in range(n_layers):
    trainable[(f"norm_{k}", "scale")] = rec.gammas[k]
    trainable[(f"norm_{k}", "bias")] = rec.betas[k]
  if set(trainable) != set(state.trainable):
    raise validate.ConfigError("the constructed norms do not match the model's trainable leaves "
                               "(train the norms only: trainable='norm')")
  return trainable, report


def construction_report(rec, seeds: int, probe: str) -> dict:
  """A batched `Reconstruction`'s verdicts as JSON-able lists over the first `seeds` seeds.

  Args:
    rec: the result of `jaxnorm.reconstruct_batch`.
    seeds: seeds to report (padding seeds beyond them left out).
    probe: where the network was measured, in words.

  Returns:
    `{"network_error": [S], "network_tol", "exact": [S], "exact_seeds", "probe",
    "blocks": [{"block", "width", "min_width", "residual": [S], "exact": [S],
    "exact_seeds"}, ...]}`.
  """
  floats = lambda a: [float(v) for v in np.asarray(a)[:seeds]]
  bools = lambda a: [bool(v) for v in np.asarray(a)[:seeds]]
  blocks = [{"block": int(b.block), "width": int(b.width), "min_width": int(b.min_width),
             "residual": floats(b.residual), "exact": bools(b.exact),
             "exact_seeds": int(np.sum(np.asarray(b.exact)[:seeds]))} for b in rec.blocks]
  exact = bools(rec.exact)
  return {"network_error": floats(rec.network_error), "network_tol": float(rec.network_tol),
          "exact": exact, "exact_seeds": int(sum(exact)), "probe": probe, "blocks": blocks}


def _seed_targets(run, state):
  """Each seed's target MLP with a leading seed axis."""
  if run.task.kind == "random_mlp":
    return state.task["target"]
  seeds = state.step.shape[0]
  return [(jnp.broadcast_to(w, (seeds,) + w.shape), jnp.broadcast_to(b, (seeds,) + b.shape))
          for w, b in run.consts]


@dataclasses.dataclass(frozen=True)
class Construct:
  """Start from the exact construction of each seed's MLP target (an oracle)."""

  def __call__(self, run, state):
    _check_mlp("start=Construct()", run, need_ball=True)
    if run.task.target_widths is None:
      raise validate.ConfigError("start=Construct() reads the target's weights: it needs an MLP "
                                 "target ([(W, b), ...] or RandomMLP)")
    narrow = tuple(run.model_info["widths"][0::2])
    if tuple(run.task.target_widths) != narrow:
      raise validate.ConfigError(
          f"start=Construct() rebuilds the target in the network's narrow widths {list(narrow)}; "
          f"the target has widths {list(run.task.target_widths)}")
    trainable, _ = constructed_norms(run, state, _seed_targets(run, state))
    return state._replace(trainable=trainable)


@dataclasses.dataclass(frozen=True)
class LinearRegime:
  """Start with every wide unit in ReLU's linear regime (no target evaluation)."""

  def __call__(self, run, state):
    _check_mlp("start=LinearRegime()", run, need_ball=False)
    task = run.task

    def start(consts, s):
      del consts
      x = s.task.get("fit_x")
      if x is None:   # the radii come from the network's own activations on a sample
        x = task.draw(jax.random.split(s.data_key)[0], task.fit_size)
      radius = task.radius if task.inputs == "ball" else None
      return s._replace(
          trainable=distill_lib.linear_regime_norms(s.trainable, s.frozen, x, radius))

    return run.map(start)(state)


# The students of the last few `distill` starts (a few kB per seed each).
_STUDENTS: collections.OrderedDict = collections.OrderedDict()
_STUDENTS_KEPT = 4


def distill(method, run, state):
  """`methods.Distill`'s start: students, then norms constructed from the best of each seed.

  The construction holds on the task's ball (`"ball"` inputs), or on the fixed
  batch scaled by `method.gaussian_margin` (Gaussian inputs). A seed whose
  student or construction is non-finite keeps its norms and is marked diverged.

  Args:
    method: the `Distill` method (restarts, student steps).
    run: the fit's `engine.Run`.
    state: the batched state after init.

  Returns:
    The state with constructed norms.
  """
  _check_mlp("Distill", run, need_ball=False)
  # The student has the frozen network's narrow widths [d_0, d_1, ..., d_l]: the shape its
  # norms can realise. The target's own widths are never read (it may be any function).
  widths = tuple(run.model_info["widths"][0::2])

  def students(consts, s):
    del consts
    weight = run.task.residual_weight(s.task, s.task["fit_y"])
    return distill_lib.fit_student(jax.random.split(s.data_key)[1], widths, s.task["fit_x"],
                                   s.task["fit_y"], weight, method.restarts, method.student_steps)

  t0 = time.perf_counter()
  seeds = run.seeds or state.step.shape[0]
  read = _read_from_queries(method, run, state, widths, seeds) if method.queries else None
  if read is not None and all(layers is not None for layers in read["layers"]):
    layers, loss = _stack_read(read, state.step.shape[0]), read["loss"]
  else:
    layers, loss = _students(method, run, state, widths, students)
    loss = np.array(loss, np.float64)
    if read is not None:   # each seed keeps what fits its fixed batch better
      layers, loss = _choose(read, layers, loss, seeds)
  t1 = time.perf_counter()
  data = None if run.task.inputs == "ball" else method.gaussian_margin * state.task["fit_x"]
  # A failed (non-finite) student is zeroed for the construction, which refuses non-finite
  # input; its seed is marked diverged below (its loss is not finite) and keeps its norms.
  layers = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, jnp.zeros_like(a)), layers)
  trainable, report = constructed_norms(run, state, layers, data)
  ok = np.isfinite(loss)
  for v in sharding.to_host(trainable).values():
    ok &= np.isfinite(v).reshape(len(ok), -1).all(axis=1)
  logging.info("%s: students %s of %d seeds in %.1f s (relative MSE on the fixed batch: "
               "median %.3g, max %.3g), norms constructed in %.1f s (%d/%d exact); %d failed "
               "(non-finite)", method.name, list(widths), seeds, t1 - t0, np.median(loss[:seeds]),
               np.max(loss[:seeds]), time.perf_counter() - t1, report["exact_seeds"], seeds,
               (~ok[:seeds]).sum())
  if run.notes is not None:
    run.notes["students"] = {"widths": list(widths),
                             "fixed_batch_rel_mse": [float(v) for v in loss[:seeds]]}
    if read is not None:
      run.notes["students"].update(
          source=read["source"][:seeds], queries=read["queries"],
          read_widths=read["widths"], read_fixed_batch_rel_mse=read["read_loss"])
  keep = sharding.distribute(ok, run.mesh)
  trainable = {p: jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, state.trainable[p])
               for p, v in trainable.items()}
  return state._replace(trainable=trainable, diverged=state.diverged | ~keep)


def _students(method, run, state, widths, students):
  """`(layers, loss)` of the students, made once per seeds' data (kept in `_STUDENTS`)."""
  # The students depend on the seeds' data keys and fixed batches, not on the frozen network:
  # fits of the same seeds at several widths share them (keyed by the bytes they are made of).
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(sharding.to_host((state.data_key, state.task))):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  plan = run.programs.plan
  key = (tuple(widths), method.restarts, method.student_steps, digest.hexdigest(), hash(run.task),
         tuple(d.id for d in run.mesh.devices.flat), plan.batching, plan.seed_chunk)
  if key in _STUDENTS:
    _STUDENTS.move_to_end(key)
    layers, loss = _STUDENTS[key]
  else:
    layers, loss = run.map(students)(state)
    loss = sharding.to_host(loss)
    _STUDENTS[key] = (layers, loss)
    while len(_STUDENTS) > _STUDENTS_KEPT:
      _STUDENTS.popitem(last=False)
  return layers, loss


def _read_from_queries(method, run, state, widths, seeds):
  """Each seed's target read from queries (`jaxnorm.extract`), padded to the student's widths.

  Returns None when the student has other than two hidden layers; else a dict
  of per-seed lists: `layers` (None where the reading failed or is wider than
  the student), `loss` (its fixed-batch relative MSE, inf where None),
  `source`, `queries`, `widths`, `read_loss`, `error`.
  """
  if len(widths) != 4:
    logging.info("%s: reads targets with two hidden layers; the student %s has %d, so every "
                 "seed takes a fitted student", method.name, list(widths), len(widths) - 2)
    return None
  task = run.task
  host = sharding.to_host(state.task)
  keys = sharding.to_host(jax.random.key_data(state.data_key))
  outputs = jax.jit(task.target_outputs)
  read = {k: [] for k in ("layers", "loss", "source", "queries", "widths", "read_loss", "error")}
  t0 = time.perf_counter()
  for i in range(seeds):
    own = jax.tree.map(lambda a, i=i: a[i], host["target"])
    f = lambda x, own=own: np.asarray(outputs(run.consts, own, jnp.asarray(x, jnp.float32)))
    x, y = host["fit_x"][i].astype(np.float64), host["fit_y"][i].astype(np.float64)
    radius = (task.radius if task.inputs == "ball"
              else method.gaussian_margin * float(np.max(np.linalg.norm(x, axis=1))))
    layers, loss, error, got = None, np.inf, "", None
    try:
      got = extract_lib.extract_mlp(f, widths[0], widths[-1], radius,
                                    seed=int(np.asarray(keys[i]).ravel()[-1]))
    except (extract_lib.ExtractionError, np.linalg.LinAlgError) as e:   # that seed takes a student
      error = f"{type(e).__name__}: {e}"
    if got is not None:
      layers = extract_lib.pad_layers(got.layers, widths)
      out = models.apply_target(got.layers, x)
      loss = float(task.residual_weight({"var": host["var"][i]}, y) * np.sum((out - y) ** 2))
      if layers is None:
        error = f"read widths {list(got.widths)} do not fit the student's {list(widths)}"
    read["layers"].append(layers)
    read["loss"].append(loss if layers is not None else np.inf)
    read["source"].append("queries" if layers is not None else "student")
    read["queries"].append(0 if got is None else got.queries)
    read["widths"].append(None if got is None else list(got.widths))
    read["read_loss"].append(None if got is None else loss)
    read["error"].append(error)
  read["loss"] = np.array(read["loss"], np.float64)
  done = [l for l, src in zip(read["read_loss"], read["source"]) if src == "queries"]
  logging.info("%s: %d/%d seeds read from queries in %.1f s (%d queries per seed; relative MSE "
               "on the fixed batch: median %.3g)%s", method.name, len(done), seeds,
               time.perf_counter() - t0, int(np.median(read["queries"])),
               np.median(done) if done else np.nan,
               "" if len(done) == seeds else "; the others take fitted students: " + "; ".join(
                   sorted({e for e in read["error"] if e})))
  return read


def _stack_read(read, total):
  """The per-seed read MLPs as `[(W[S, out, in], b[S, out]), ...]` (padding repeats the last)."""
  per_seed = read["layers"] + [read["layers"][-1]] * (total - len(read["layers"]))
  return [(jnp.asarray(np.stack([l[k][0] for l in per_seed]), jnp.float32),
           jnp.asarray(np.stack([l[k][1] for l in per_seed]), jnp.float32))
          for k in range(len(per_seed[0]))]


def _choose(read, student_layers, student_loss, seeds):
  """Per seed, the read MLP where it fits the fixed batch at least as well as the student."""
  host = [(np.array(w, np.float64), np.array(b, np.float64))
          for w, b in sharding.to_host(student_layers)]
  loss = student_loss.copy()
  for i in range(seeds):
    if read["layers"][i] is not None and read["loss"][i] <= student_loss[i]:
      for k, (w, b) in enumerate(read["layers"][i]):
        host[k][0][i], host[k][1][i] = w, b
      loss[i] = read["loss"][i]
    else:
      read["source"][i] = "student"
  return [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in host], loss
