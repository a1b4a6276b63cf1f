"""Tests for jaxnorm.engine: `jaxnorm.fit` on users' own models (linen and NNX), tasks and losses.

Every guarantee of the engine is checked on models jaxnorm did not write: only
the trainable partition is differentiated and has optimizer state, frozen
leaves come back bit-identical, a seed alone equals the same seed among
others, NaN seeds are isolated, lax.map / seed chunks equal vmap, a stopped
fit resumes bit-identically, and bad input is refused before any compute.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax import traverse_util

import jaxnorm
from jaxnorm import checkpoint
from jaxnorm import data
from jaxnorm import engine
from jaxnorm import programs as programs_lib
from jaxnorm import memory
from jaxnorm import methods
from jaxnorm.trees import bit_identical

SPLIT = data.digits()
# A small slice of digits keeps every compiled program tiny.
IMAGES = (data.as_images(SPLIT.x_train[:256]), SPLIT.y_train[:256])
TEST_IMAGES = (data.as_images(SPLIT.x_test[:128]), SPLIT.y_test[:128])
DIGITS = jaxnorm.Classification(train=IMAGES, test=TEST_IMAGES)
FAST = dict(steps=40, chunk_steps=20, batch_size=64, optimizer=optax.adam(3e-2))


class LinenCNN(nn.Module):
  """A user's linen CNN: conv, BatchNorm, ReLU, conv, LayerNorm, dense head."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.Conv(8, (3, 3), strides=2)(x)
    x = nn.LayerNorm()(x)
    x = nn.relu(x)
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class NNXNet(nnx.Module):
  """A user's NNX model with every NNX norm kind."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.gn = nnx.GroupNorm(8, num_groups=2, rngs=rngs)
    self.hidden = nnx.Linear(8 * 8 * 8, 32, rngs=rngs)
    self.ln = nnx.LayerNorm(32, rngs=rngs)
    self.rms = nnx.RMSNorm(32, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.gn(self.bn(self.conv(x))))
    x = self.hidden(x.reshape(x.shape[0], -1))
    return self.head(nnx.relu(self.rms(self.ln(x))))


def nnx_factory(rngs):
  return NNXNet(rngs)


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def _norm_paths(params):
  mask = _flat(jaxnorm.norm_mask(jax.tree.map(lambda a: a[0], params)))
  return {p for p, m in mask.items() if m}


@pytest.fixture(scope="module")
def linen_fit():
  return jaxnorm.fit(LinenCNN(), DIGITS, 3, **FAST)


@pytest.fixture(scope="module")
def nnx_fit():
  return jaxnorm.fit(nnx_factory, DIGITS, 3, **FAST)


@pytest.mark.parametrize("which", ["linen", "nnx"])
def test_only_norms_move_and_frozen_leaves_are_bit_identical(which, linen_fit, nnx_fit):
  model = LinenCNN() if which == "linen" else nnx_factory
  result = linen_fit if which == "linen" else nnx_fit
  before = engine.init_states(model, DIGITS, [0, 1, 2])
  after = _flat(result.params)
  norms = _norm_paths(result.params)
  assert norms == set(before.trainable)
  kinds = {p[-2] if which == "nnx" else p[0].split("_")[0] for p in norms}
  assert kinds == ({"bn", "gn", "ln", "rms"} if which == "nnx" else {"BatchNorm", "LayerNorm"})
  assert result.frozen_unchanged
  for path, value in before.frozen.items():
    assert bit_identical(after[path], value), path
  for path, value in before.trainable.items():
    assert not np.array_equal(after[path], value), path
  assert result.test_acc.shape == result.train_acc.shape == (3,)
  assert (result.loss_curve[:, -1] < result.loss_curve[:, 0]).all(), result.loss_curve
  assert result.trainable_params == sum(int(np.prod(v.shape[1:]))
                                        for v in before.trainable.values())


@pytest.mark.parametrize("which", ["linen", "nnx"])
def test_optimizer_state_and_gradients_only_for_trainable_leaves(which):
  model = LinenCNN() if which == "linen" else nnx_factory
  state = engine.init_states(model, DIGITS, [0])
  opt_paths = set()
  for leaf_path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    for k in leaf_path:
      if isinstance(getattr(k, "key", None), tuple):
        opt_paths.add(k.key)
  assert opt_paths == set(state.trainable)
  # The step differentiates the trainable dict only: its gradient has exactly those leaves.
  programs = programs_lib.cache(programs_lib.Plan(
      model, (DIGITS.sample().shape, DIGITS.sample().dtype), DIGITS,
      methods.Optax(optax.adam(1e-2)), "norm", 8, 0, "vmap", jaxnorm.seed_mesh(1), None))
  one = jax.tree.map(lambda a: jnp.asarray(a[0]), state)
  objective = programs.objective(DIGITS.consts(), one)
  grads = jax.grad(lambda t: objective.batch_loss(t)[0])(one.trainable)
  assert set(grads) == set(state.trainable)


def test_batch_stats_are_per_seed_and_used_at_evaluation(linen_fit, nnx_fit):
  for result in (linen_fit, nnx_fit):
    stats = jax.tree.leaves(result.batch_stats)
    assert stats and all(s.shape[0] == 3 for s in stats)
    assert not np.allclose(stats[0][0], stats[0][1])   # each seed its own running averages
  start = engine.init_states(LinenCNN(), DIGITS, [0])
  moved = jax.tree.map(lambda a, b: not np.allclose(a[0], b[0]), linen_fit.batch_stats,
                       start.model_state)
  assert all(jax.tree.leaves(moved))


def test_seed_model_rebuilds_linen_variables_and_nnx_modules(linen_fit, nnx_fit):
  x = TEST_IMAGES[0]
  variables = linen_fit.seed_model(1)
  logits = LinenCNN().apply(variables, x, train=False)
  acc = float(np.mean(np.argmax(logits, -1) == TEST_IMAGES[1]))
  np.testing.assert_allclose(acc, linen_fit.test_acc[1], atol=1e-6)
  module = nnx_fit.seed_model(2)
  assert isinstance(module, NNXNet)
  module.eval()
  acc = float(np.mean(np.argmax(module(x), -1) == TEST_IMAGES[1]))
  np.testing.assert_allclose(acc, nnx_fit.test_acc[2], atol=1e-6)


def test_predict_gives_every_seeds_outputs_in_batches(linen_fit, nnx_fit):
  x, y = TEST_IMAGES
  for result in (linen_fit, nnx_fit):
    logits = result.predict(x, batch_size=50)   # 128 inputs: batches of 50, 50, 28
    assert logits.shape == (3, len(x), 10)
    np.testing.assert_allclose((logits.argmax(-1) == y).mean(1), result.test_acc, atol=1e-6)


@pytest.mark.parametrize("which", ["linen", "nnx"])
def test_a_seed_alone_equals_it_among_others(which, linen_fit, nnx_fit):
  model = LinenCNN() if which == "linen" else nnx_factory
  among = linen_fit if which == "linen" else nnx_fit
  alone = jaxnorm.fit(model, DIGITS, [1], **FAST)
  np.testing.assert_allclose(alone.loss_curve[0], among.loss_curve[1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(among.params)):
    np.testing.assert_allclose(a[0], b[1], rtol=1e-5, atol=1e-6)


def test_lax_map_and_seed_chunks_equal_vmap(linen_fit):
  assert (linen_fit.batching, linen_fit.seed_chunk) == ("vmap", None)   # auto: a small step
  for kwargs in (dict(batching="map"), dict(seed_chunk=2)):
    other = jaxnorm.fit(LinenCNN(), DIGITS, 3, **FAST, **kwargs)
    np.testing.assert_allclose(other.loss_curve, linen_fit.loss_curve, rtol=1e-5)
    np.testing.assert_allclose(other.test_acc, linen_fit.test_acc, atol=1e-6)
  assert (other.batching, other.seed_chunk) == ("vmap", 2)


@pytest.mark.parametrize("cache_kib,chosen", [(1, ("map", None)), (2 * 68, ("vmap", 2))])
def test_auto_batching_follows_the_step_size(monkeypatch, cache_kib, chosen):
  """`batching="auto"`: on the CPU, the seeds computed at once keep the step's largest value
  within the cache budget (here shrunk, so that this small MLP needs map or chunks)."""
  mlp, kw = jaxnorm.NormMLP((2, 64, 1)), dict(steps=20, chunk_steps=20, batch_size=256)
  task = jaxnorm.Regression(sin_target, inputs="ball", radius=1.0, in_dim=2, eval_size=64)
  vmapped = jaxnorm.fit(mlp, task, 5, batching="vmap", **kw)
  monkeypatch.setattr(jaxnorm.batching, "CPU_CACHE_BYTES", cache_kib << 10)
  auto = jaxnorm.fit(mlp, task, 5, **kw)
  assert (auto.batching, auto.seed_chunk) == chosen   # the step's largest value: 256 x 64 x 4 B
  np.testing.assert_allclose(auto.loss_curve, vmapped.loss_curve, rtol=1e-5)
  np.testing.assert_allclose(auto.rel_mse, vmapped.rel_mse, rtol=1e-4)
  assert auto.frozen_unchanged


MLP = jaxnorm.NormMLP((2, 32, 32, 1))


def sin_target(x):
  return jnp.sin(3 * x[:, :1]) * x[:, 1:2]


def test_black_box_function_target_and_fixed_data_set():
  task = jaxnorm.Regression(sin_target, inputs="ball", radius=1.0, in_dim=2, eval_size=512)
  result = jaxnorm.fit(MLP, task, 4, steps=300, chunk_steps=150, batch_size=64)
  assert result.rel_mse.shape == (4,) and (result.rel_mse < 0.5).all(), result.rel_mse
  assert result.loss_curve[:, -1].max() < result.loss_curve[:, 0].min()
  x = np.random.default_rng(0).uniform(-1, 1, (400, 2)).astype(np.float32)
  data_task = jaxnorm.Regression((x, np.asarray(sin_target(x))))
  fitted = jaxnorm.fit(MLP, data_task, 2, steps=300, chunk_steps=300, batch_size=64)
  assert (fitted.rel_mse < 0.5).all(), fitted.rel_mse
  assert fitted.frozen_unchanged


def test_a_callable_sampler_and_an_array_mlp_target():
  layers = jaxnorm.init_target(jax.random.key(3), (2, 4, 1))
  task = jaxnorm.Regression([(np.asarray(w), np.asarray(b)) for w, b in layers],
                            inputs=lambda key, n: jax.random.uniform(key, (n, 2), minval=-1),
                            eval_size=256)
  result = jaxnorm.fit(MLP, task, 2, steps=100, chunk_steps=100, batch_size=32)
  assert np.isfinite(result.rel_mse).all() and result.targets[0][0].shape == (2, 4, 2)


def test_a_user_loss_replaces_the_default():
  task = jaxnorm.Regression(sin_target, in_dim=2, eval_size=256,
                            loss=lambda out, y: jnp.mean(jnp.abs(out - y)))
  result = jaxnorm.fit(MLP, task, 2, steps=50, chunk_steps=50, batch_size=32)
  assert np.isfinite(result.loss_curve).all()
  assert result.loss_curve.max() < 1.0   # a mean absolute error on |y| <= 1, not a relative MSE


@pytest.mark.parametrize("trainable",
                         ["output", "norm_output", "random_subset", "full", "callable"])
def test_every_trainable_choice_on_a_user_model(trainable):
  choice = trainable
  if trainable == "callable":   # the second conv's kernel only
    choice = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "Conv_1" in str(path) and "kernel" in str(path), params)
  before = engine.init_states(LinenCNN(), DIGITS, [0, 1], trainable=choice)
  result = jaxnorm.fit(LinenCNN(), DIGITS, 2, trainable=choice, steps=10, chunk_steps=10,
                       batch_size=32)
  assert result.frozen_unchanged
  paths = set(before.trainable)
  if trainable == "output":
    assert paths == {("Dense_0", "kernel"), ("Dense_0", "bias")}
  elif trainable == "norm_output":
    assert ("Dense_0", "kernel") in paths and ("BatchNorm_0", "scale") in paths
  elif trainable == "random_subset":
    norms = engine.init_states(LinenCNN(), DIGITS, [0])
    n = sum(v[0].size for v in norms.trainable.values())
    assert result.trainable_params == n
    assert all(int(m[s].sum()) >= 0 for m in before.masks.values() for s in range(2))
    assert sum(int(m[0].sum()) for m in before.masks.values()) == n
  elif trainable == "full":
    assert not before.frozen
  else:
    assert paths == {("Conv_1", "kernel")}


class LinenDropout(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.LayerNorm()(nn.Dense(32)(x.reshape(x.shape[0], -1))))
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=not train)(x))


def test_linen_dropout_gets_a_fresh_rng_every_step():
  result = jaxnorm.fit(LinenDropout(), DIGITS, 2, **FAST)
  assert np.isfinite(result.loss_curve).all() and result.frozen_unchanged
  # Evaluation is deterministic: the accuracy is reproducible from the returned variables.
  logits = LinenDropout().apply(result.seed_model(0), TEST_IMAGES[0], train=False)
  np.testing.assert_allclose(np.mean(np.argmax(logits, -1) == TEST_IMAGES[1]), result.test_acc[0],
                             atol=1e-6)


def test_nnx_output_layer_is_the_last_defined():
  state = engine.init_states(nnx_factory, DIGITS, [0], trainable="output")
  assert set(state.trainable) == {("head", "kernel"), ("head", "bias")}


@pytest.fixture
def poisoned_seed_1(monkeypatch):
  """Seed 1's training labels are pushed out of range: its loss is NaN from the first step."""
  real = programs_lib.Programs.init_seed

  def init_seed(self, consts, seed_id):
    state = real(self, consts, seed_id)
    bad = seed_id == 1
    poisoned = {p: jnp.where(bad & (p[-1] == "scale"), jnp.nan, v)
                for p, v in state.trainable.items()}
    return state._replace(trainable=poisoned, previous=poisoned)

  with programs_lib.cache.isolated():
    monkeypatch.setattr(programs_lib.Programs, "init_seed", init_seed)
    yield


def test_a_nan_seed_is_marked_diverged_and_the_others_carry_on(linen_fit, poisoned_seed_1):
  result = jaxnorm.fit(LinenCNN(), DIGITS, 3, **FAST)
  assert result.diverged.tolist() == [False, True, False]
  assert np.isnan(result.loss_curve[1]).all()
  assert result.frozen_unchanged
  start = engine.init_states(LinenCNN(), DIGITS, [1])   # seed 1 never took a step
  after = _flat(result.params)
  for path, value in start.trainable.items():
    assert bit_identical(after[path][1], value[0]), path
  for s in (0, 2):
    np.testing.assert_allclose(result.loss_curve[s], linen_fit.loss_curve[s], rtol=1e-5)


def test_a_seed_whose_loss_blows_up_keeps_its_last_parameters_with_a_finite_loss():
  # Adam at lr 1e12 takes every seed to finite but huge norms in one step; the
  # loss there overflows, so each seed goes back to the norms before that step
  # (its initial ones) and reports their metric, not inf.
  model = jaxnorm.NormMLP(widths=(4, 32, 1))
  task = jaxnorm.Regression(jaxnorm.RandomMLP((4, 8, 1)), eval_size=256)
  result = jaxnorm.fit(model, task, 3, optimizer=optax.adam(1e12), steps=4, chunk_steps=1,
                       batch_size=32)
  assert result.diverged.all()
  assert np.isfinite(result.loss_curve[:, 0]).all() and np.isnan(result.loss_curve[:, 1:]).all()
  assert np.isfinite(result.metrics["rel_mse"]).all()
  start = engine.init_states(model, task, [0, 1, 2])
  after = _flat(result.params)
  for path, value in start.trainable.items():
    assert bit_identical(after[path], value), path


def test_stop_and_resume_is_bit_identical(tmp_path):
  model = nnx_factory
  straight = jaxnorm.fit(model, DIGITS, 2, **FAST)

  def run(stop=None):
    ckpts = checkpoint.Checkpoints(str(tmp_path), checkpoint.Control(stop_after_chunks=stop))
    try:
      return jaxnorm.fit(model, DIGITS, 2, **FAST,
                         checkpoint=checkpoint.FitSlot(ckpts, {"unit": 0}))
    finally:
      ckpts.close()

  with pytest.raises(checkpoint.Preempted):
    run(stop=1)
  resumed = run()
  assert bit_identical((resumed.params, resumed.batch_stats, resumed.loss_curve,
                        resumed.test_acc),
                       (straight.params, straight.batch_stats, straight.loss_curve,
                        straight.test_acc))


def test_memory_estimate_refuses_before_compute(monkeypatch, no_compute):
  monkeypatch.setattr(memory, "available_bytes", lambda: (10 * 2**20, 1))
  with pytest.raises(jaxnorm.ConfigError, match="this fit needs about"):
    jaxnorm.fit(LinenCNN(), DIGITS, 64, **FAST)


def test_memory_estimate_bounds_xla(linen_fit):
  del linen_fit
  plan = programs_lib.Plan(LinenCNN(), (DIGITS.sample().shape, DIGITS.sample().dtype), DIGITS,
                      methods.Optax(FAST["optimizer"]), "norm", 64, 0, "vmap",
                      jaxnorm.seed_mesh(1), None)
  programs = programs_lib.cache(plan)
  consts = DIGITS.consts()
  state = programs.init(consts, jnp.arange(4, dtype=jnp.int32))
  analysis = programs.chunk(20).lower(consts, state).compile().memory_analysis()
  actual = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
  estimate = engine.estimate_bytes(programs, 4)
  assert actual <= estimate <= 50 * actual, (actual, estimate)


class NoTrain(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.BatchNorm(use_running_average=True)(nn.Dense(10)(x.reshape(x.shape[0], -1)))


class NoNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class Broken(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(x @ jnp.ones((3, 3)))


BAD = [
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 0), "positive integer"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, [-1]), "got -1"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, [2 ** 40]), r"\[0, 2\*\*31\)"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, [0, 1, 0]), "must differ"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2, seed=2 ** 32), "below 2\\*\\*32"),
    (lambda: jaxnorm.fit(LinenCNN(), "digits", 2), "task must be"),
    (lambda: jaxnorm.fit(object(), DIGITS, 2), "model must be"),
    (lambda: jaxnorm.fit(NNXNet(nnx.Rngs(0)), DIGITS, 2), "factory"),
    (lambda: jaxnorm.fit(Broken(), DIGITS, 2), "failed on the sample"),
    (lambda: jaxnorm.fit(NoTrain(), DIGITS, 2), "no `train` argument"),
    (lambda: jaxnorm.fit(NoNorm(), DIGITS, 2), "no normalization"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2, trainable="bias"), "unknown trainable 'bias'"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2,
                         trainable=lambda p: jax.tree.map(lambda _: False, p)),
     "selects no parameter"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2, optimizer="adam"), "optimizer must be"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2, optimizer=jaxnorm.LevenbergMarquardt()),
     "sum-of-squares"),
    (lambda: jaxnorm.fit(MLP, jaxnorm.Regression(sin_target, in_dim=2), 2,
                         optimizer=jaxnorm.Distill()),
     "Distill writes its student into the norms of an affine NormMLP with an even"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2, steps=0), "steps"),
    (lambda: jaxnorm.fit(LinenCNN(), DIGITS, 2, batch_size=1), "batch_size >= 2"),
    (lambda: jaxnorm.fit(MLP, jaxnorm.Regression(lambda x: x[:, :2], in_dim=2), 2),
     r"outputs of shape \(2, 1\) on 2 inputs but the target gives \(2, 2\)"),
    (lambda: jaxnorm.fit(MLP, jaxnorm.Regression(lambda x: x[:, 5:6] @ jnp.ones((2, 1)),
                                                 in_dim=2), 2), "the target failed"),
    (lambda: jaxnorm.Regression(42), "callable f\\(x\\)"),
    (lambda: jaxnorm.Regression(sin_target), "in_dim"),
    (lambda: jaxnorm.Regression((np.ones((5, 2)), np.ones((4, 1)))), "5 rows but Y"),
    (lambda: jaxnorm.Regression(sin_target, in_dim=2, inputs="cube"), "cube"),
    (lambda: jaxnorm.Classification(train=IMAGES, test=(TEST_IMAGES[0], TEST_IMAGES[1][:5])),
     "128 rows but Y"),
    (lambda: jaxnorm.Classification(train=(IMAGES[0], IMAGES[1] - 1.5), test=TEST_IMAGES),
     "non-negative integers"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_input_is_one_clear_error_before_compute(no_compute, call, message):
  with pytest.raises(jaxnorm.ConfigError, match=message):
    call()
