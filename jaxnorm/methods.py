"""Fitting methods as objects: one interface, so the engine never branches on a method's name.

A method says whether it trains on fresh minibatches or on a fixed batch
(`full_batch`), gives its state for the trainable leaves (`init`), and makes
one step of one seed (`step(objective, trainable, opt_state)`). The engine
hands it an `Objective`: the seed's losses and predictions with everything
frozen already bound, so a method only ever sees — and differentiates — the
trainable leaves. A method may also have a `prepare(run, state)` phase that
runs once before the first step (distill's students).

* `Optax(tx)`: any optax `GradientTransformation` on fresh minibatches, the
  network in training mode (BatchNorm on batch statistics). What `jaxnorm.fit`
  uses when given an optax transformation; `default_optimizer` is Adam with a
  cosine decay.
* `LBFGS()`: `optax.lbfgs` with its zoom line search on the fixed batch.
* `LevenbergMarquardt()`: damped Gauss–Newton on the fixed batch
  (`jaxnorm.second_order`); needs a sum-of-squares loss (`Regression`).
* `Distill(restarts, student_steps)`: fit student MLPs of the network's
  narrow widths to the fixed batch, write the best into the norms by the
  exact construction, then Levenberg–Marquardt (see `jaxnorm.starts.distill`).
  Tied to an affine `NormMLP`; the `Regression` target may be any function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import optax

from jaxnorm import second_order
from jaxnorm import starts
from jaxnorm import validate


class Objective(NamedTuple):
  """One seed's losses for one step, frozen leaves bound (built by the engine).

  Attributes:
    batch_loss: `batch_loss(trainable) -> (loss, model_state)` on a fresh
      training batch, the model in training mode.
    fixed_loss: `fixed_loss(trainable) -> loss` on the fixed batch, the model
      in evaluation mode (full-batch methods).
    predict: `predict(trainable, x) -> out`, evaluation mode.
    fixed_x: the fixed batch's inputs (full-batch methods; else None).
    fixed_y: its targets.
    weight: `w` such that the loss is `w * sum((out - y)^2)` on the fixed batch.
    model_state: the model's other variables (returned unchanged by methods
      that do not train in training mode).
  """
  batch_loss: Callable[[Any], tuple[jax.Array, Any]]
  fixed_loss: Callable[[Any], jax.Array]
  predict: Callable[[Any, jax.Array], jax.Array]
  fixed_x: Any
  fixed_y: Any
  weight: Any
  model_state: Any


@functools.lru_cache(maxsize=64)
def default_optimizer(steps: int, learning_rate: float = 1e-2) -> optax.GradientTransformation:
  """Adam with a cosine decay of `learning_rate` to 0 over `steps` (what `fit` uses by default).

  Args:
    steps: the fit's steps.
    learning_rate: the peak learning rate.

  Returns:
    The optax transformation.
  """
  return optax.adam(optax.cosine_decay_schedule(learning_rate, steps))


@dataclasses.dataclass(frozen=True)
class Optax:
  """Any optax transformation on fresh minibatches.

  Attributes:
    tx: the transformation (it sees the trainable leaves only).
  """

  tx: optax.GradientTransformation
  full_batch = False
  name = "optax"

  def check(self, task, model_info) -> None:
    """Any task and model."""
    del task, model_info

  def init(self, trainable):
    """The transformation's state of the trainable leaves."""
    return self.tx.init(trainable)

  def step(self, objective: Objective, trainable, opt_state):
    """One gradient step; returns `(trainable, opt_state, loss, model_state)`."""
    (loss, model_state), grads = jax.value_and_grad(objective.batch_loss, has_aux=True)(trainable)
    updates, opt_state = self.tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss, model_state


@dataclasses.dataclass(frozen=True)
class LBFGS:
  """L-BFGS (`optax.lbfgs`, zoom line search) on the fixed batch.

  Attributes:
    memory_size: curvature pairs kept.
  """

  memory_size: int = 20
  full_batch = True
  name = "lbfgs"

  def transformation(self) -> optax.GradientTransformation:
    """The underlying `optax.lbfgs`."""
    return optax.lbfgs(memory_size=self.memory_size)

  def check(self, task, model_info) -> None:
    """Any task and model."""
    del task, model_info
    validate.positive_int("memory_size", self.memory_size)

  def init(self, trainable):
    """L-BFGS state of the trainable leaves."""
    return self.transformation().init(trainable)

  def step(self, objective: Objective, trainable, opt_state):
    """One L-BFGS step with line search on the fixed batch."""
    tx = self.transformation()
    loss, grads = optax.value_and_grad_from_state(objective.fixed_loss)(trainable, state=opt_state)
    updates, opt_state = tx.update(grads, opt_state, trainable, value=loss, grad=grads,
                                   value_fn=objective.fixed_loss)
    return optax.apply_updates(trainable, updates), opt_state, loss, objective.model_state


def _check_residual_task(name: str, task) -> None:
  if not task.residual_form():
    raise validate.ConfigError(
        f"{name} needs a sum-of-squares loss: a Regression task without a custom loss= "
        f"(got {type(task).__name__}{' with loss=' if getattr(task, 'loss', None) else ''})")


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt:
  """Levenberg–Marquardt on the fixed batch (dense `J^T J`, rows independent).

  Attributes:
    damping: initial damping factor.
  """

  damping: float = 1e-3
  full_batch = True
  name = "lm"

  def check(self, task, model_info) -> None:
    """Needs a sum-of-squares (Regression) loss."""
    del model_info
    _check_residual_task("Levenberg–Marquardt", task)
    validate.positive_float("damping", self.damping)

  def init(self, trainable):
    """The damping state."""
    del trainable
    return second_order.lm_init(self.damping)

  def step(self, objective: Objective, trainable, opt_state):
    """One damped Gauss–Newton step (rejected steps leave the parameters unchanged)."""
    trainable, opt_state, loss = second_order.lm_step(
        objective.predict, trainable, objective.fixed_x, objective.fixed_y, objective.weight,
        opt_state)
    return trainable, opt_state, loss, objective.model_state


@dataclasses.dataclass(frozen=True)
class Distill(LevenbergMarquardt):
  """Distill into a target-shaped student, construct the norms from it, then Levenberg–Marquardt.

  Attributes:
    restarts: random students tried per seed.
    student_steps: Levenberg–Marquardt steps on the student.
    gaussian_margin: for Gaussian inputs (no bounded domain), the construction
      keeps the wide units linear on the fixed batch scaled by this factor.
  """

  restarts: int = 16
  student_steps: int = 100
  gaussian_margin: float = 1.5
  name = "distill"
  queries = False   # Extract: read the target from queries first

  def check(self, task, model_info) -> None:
    """Needs an affine `NormMLP` of an even number of layers and a Regression task on a domain.

    The target may be any function (a black box): the student takes the
    network's narrow widths `[d_0, d_1, ..., d_l]`, whatever the target's.
    """
    super().check(task, model_info)
    validate.positive_int("restarts", self.restarts)
    validate.positive_int("student_steps", self.student_steps)
    info = model_info.get("norm_mlp")
    if info is None or info[0] != "affine" or len(model_info.get("widths", ())) % 2 != 1:
      raise validate.ConfigError(
          f"Distill writes its student into the norms of an affine NormMLP with an even number "
          f"of layers; got {model_info.get('description', 'another model')}")
    if getattr(task, "kind", None) in (None, "data", "classification"):
      raise validate.ConfigError("Distill needs a Regression task with inputs from a domain "
                                 "(the students are fitted to the target on a fixed batch)")

  def prepare(self, run, state):
    """Fit the students and construct every seed's norms from the best (`starts.distill`)."""
    return starts.distill(self, run, state)


@dataclasses.dataclass(frozen=True)
class Extract(Distill):
  """Read each seed's target from queries, construct the norms from it, then Levenberg–Marquardt.

  The student MLP is read out of the target's outputs (`jaxnorm.extract`:
  the kinks along random chords of the domain give the first layer's
  hyperplanes and the second layer's units, least squares the rest) instead
  of fitted, for a student with two hidden layers; a seed whose reading
  fails or does not fit the student's widths takes a fitted student
  (`Distill`), as does every seed of a student of other depth. The students
  are fitted only when some seed needs one; a seed with both keeps the one
  with the lower error on the fixed batch. Attributes as `Distill`'s.
  """

  name = "extract"
  queries = True
