"""PyTorch peers of jaxnorm's Adam fit, written the way a PyTorch user and an expert would.

The same work per step as `jaxnorm.fit_seeds` with `optimizer="adam"` and
`norm="affine"`, for S seeds at once:

* fresh inputs drawn uniformly in the ball of `spec.radius` for every seed,
* the seed's random target MLP evaluated on them (no gradient),
* the seed's `NormMLP` (frozen bias-free linear layers, each followed by a
  per-unit `scale * x + bias`, ReLU between) forward and backward, gradients
  for the scale and bias only,
* an Adam step with a cosine-decayed learning rate.

Seeds are batched like a PyTorch user batches an ensemble: S copies of one
`nn.Module`, their state stacked with `torch.func.stack_module_state`, the
model run with `torch.func.functional_call` under `torch.func.vmap` over the
seed axis (batched matrix products). Only the stacked `[S, width]` norm
tensors require gradients; the frozen weights are passed as buffers
(`requires_grad=False`), so autograd computes no weight gradient. The
optimizer is `torch.optim.Adam(foreach=True)` with `CosineAnnealingLR` on the
stacked norm tensors, which is what a user writes; the alternatives measured
(`fused=True`, or `vmap(grad(...))` with a hand-written `torch._foreach_*`
Adam) were no faster within the machine's noise: the update of a few `[S,
width]` tensors is under 2% of a step (0.4 ms of ~30 ms at S=64, width 128),
the forward and backward passes are the rest. The loss is the sum over seeds
of each seed's relative MSE, so each seed's gradient is its own loss's.

`Peer` runs eagerly, as the usual `torch.func` ensemble recipe does.
`Stacked` is the expert's version of the same step (stacked weights and
`torch.bmm`, the whole step one function of tensors), run eagerly
(`kind="bmm"`) or compiled whole by `torch.compile` (`kind="compile"`): the
strongest PyTorch peer, whose compilation the benchmark times apart.

Deliberately not copied from jaxnorm: the per-step divergence guard (a finite
check and a select on every trainable and optimizer leaf), which a PyTorch
user would not write; it costs jaxnorm a little.

`torch` is optional: it is imported lazily, `version()` is None without it.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple, Optional

import numpy as np

from jaxnorm import sharding


def version() -> Optional[str]:
  """The installed torch version, or None when torch is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return torch.__version__


def default_threads() -> int:
  """The CPU cores this process may run on (what XLA's CPU thread pool uses)."""
  return sharding.cpu_cores()


KINDS = ("vmap", "bmm", "compile")   # see `build` and `Stacked`


class PeerResult(NamedTuple):
  """A torch fit of S seeds.

  Attributes:
    seconds: wall time, init and held-out evaluation included.
    loss_curve: mean training relative MSE of each chunk of `chunk_steps`, `[S, n_chunks]`.
    rel_mse: held-out relative MSE per seed, `[S]`.
    threads: torch intra-op threads used.
    steps_seconds: wall time of the steps alone.
  """
  seconds: float
  loss_curve: np.ndarray
  rel_mse: np.ndarray
  threads: int
  steps_seconds: float = math.nan


def _modules(torch):
  """The peer's `nn.Module`s (defined once torch is imported)."""
  nn = torch.nn

  class Affine(nn.Module):
    """Per-unit `scale * x + bias`."""

    def __init__(self, width):
      super().__init__()
      self.scale = nn.Parameter(torch.ones(width))
      self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x):
      return torch.addcmul(self.bias, x, self.scale)

  class NormMLP(nn.Module):
    """Bias-free linear layers, each followed by an `Affine`, ReLU between."""

    def __init__(self, widths):
      super().__init__()
      self.dense = nn.ModuleList(nn.Linear(a, b, bias=False)
                                 for a, b in zip(widths[:-1], widths[1:]))
      self.norm = nn.ModuleList(Affine(b) for b in widths[1:])

    def forward(self, x):
      last = len(self.dense) - 1
      for k, (dense, norm) in enumerate(zip(self.dense, self.norm)):
        x = norm(dense(x))
        if k < last:
          x = torch.relu(x)
      return x

  class TargetMLP(nn.Module):
    """Plain ReLU MLP with biases, last layer linear."""

    def __init__(self, widths):
      super().__init__()
      self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
      for k, dense in enumerate(self.dense):
        x = dense(x)
        if k < len(self.dense) - 1:
          x = torch.relu(x)
      return x

  return NormMLP, TargetMLP


class Peer:
  """S seeds' frozen networks, targets and norms, stepped together with `torch.func.vmap`.

  Build with `build`; then `step()` (or `step(x)` with explicit inputs),
  `evaluate()` and `norms()`.
  """

  def __init__(self, torch, spec, model, target, trainable, frozen, target_params, eval_x,
               generator):
    self.torch, self.spec, self.generator = torch, spec, generator
    self.trainable, self.frozen, self.target_params = trainable, frozen, target_params
    self.eval_x = eval_x
    self.num_seeds = eval_x.shape[0]
    call = torch.func.functional_call
    self._net = torch.func.vmap(lambda p, f, x: call(model, (p, f), (x,)))
    self._target = torch.func.vmap(lambda p, x: call(target, p, (x,)))
    with torch.no_grad():
      self.target_var = self._target(target_params, eval_x).var(dim=1, unbiased=False).mean(-1)
    self.optimizer = torch.optim.Adam(list(trainable.values()), lr=spec.learning_rate,
                                      foreach=True)
    self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, spec.steps)
                      if spec.schedule == "cosine" else None)

  def sample(self):
    """Fresh inputs `[S, batch, d_0]`, uniform in the ball of `spec.radius`."""
    torch, spec = self.torch, self.spec
    shape = (self.num_seeds, spec.batch_size, spec.target_widths[0])
    return _ball(torch, shape, spec.radius, self.generator)

  def step(self, x=None):
    """One Adam step of every seed; returns the per-seed losses `[S]` before it.

    Args:
      x: optional inputs `[S, batch, d_0]`; by default fresh ones are sampled.

    Returns:
      The per-seed relative MSE on the batch (detached tensor).
    """
    torch = self.torch
    if x is None:
      x = self.sample()
    with torch.no_grad():
      y = self._target(self.target_params, x)
    out = self._net(self.trainable, self.frozen, x)
    loss = ((out - y) ** 2).mean(dim=(1, 2)) / (self.target_var + 1e-12)
    self.optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    self.optimizer.step()
    if self.scheduler is not None:
      self.scheduler.step()
    return loss.detach()

  def evaluate(self) -> np.ndarray:
    """Held-out relative MSE per seed."""
    torch = self.torch
    with torch.no_grad():
      out = self._net(self.trainable, self.frozen, self.eval_x)
      y = self._target(self.target_params, self.eval_x)
      return (((out - y) ** 2).mean(dim=(1, 2)) / (self.target_var + 1e-12)).numpy()

  def norms(self) -> dict[str, np.ndarray]:
    """The trained norm tensors `{"norm.k.scale": [S, width], ...}`."""
    return {name: p.detach().numpy().copy() for name, p in self.trainable.items()}


class Stacked:
  """The same S seeds as a `Peer`, stepped by one hand-written function of stacked tensors.

  What a PyTorch expert writes for speed: the frozen weights stacked `[S, in,
  out]` and multiplied with `torch.bmm`, the norms a tuple of `[S, width]`
  tensors, the gradient from `torch.func.grad` of the summed per-seed losses
  with respect to the norms only, and Adam (torch's formula: bias-corrected
  step size over `sqrt(v) / sqrt(1 - beta2^t) + eps`) written out with the
  cosine learning rate, all in one function of tensors. `kind="bmm"` runs it
  eagerly; `kind="compile"` runs `torch.compile` of the whole step (forward,
  backward and update in one graph; inputs are drawn eagerly outside it, the
  learning rate and bias corrections come in as a tensor so that nothing
  recompiles). The compiled step is cached per process and layer count, as
  jaxnorm's programs are; its compilation happens on the first step.
  """

  def __init__(self, peer: "Peer", kind: str):
    torch = peer.torch
    self.torch, self.spec, self.peer = torch, peer.spec, peer
    n = len(peer.spec.network_widths) - 1
    self.kernels = tuple(peer.frozen[f"dense.{k}.weight"].transpose(1, 2).contiguous()
                         for k in range(n))
    self.targets = tuple((peer.target_params[f"dense.{k}.weight"].transpose(1, 2).contiguous(),
                          peer.target_params[f"dense.{k}.bias"])
                         for k in range(len(peer.spec.target_widths) - 1))
    self.params = tuple(peer.trainable[f"norm.{k}.{p}"].detach().clone()
                       for p in ("scale", "bias") for k in range(n))
    self.m = tuple(torch.zeros_like(p) for p in self.params)
    self.v = tuple(torch.zeros_like(p) for p in self.params)
    self.t = 0
    self._step = _compiled_step(torch, n) if kind == "compile" else _step_function(torch)

  def step(self, x=None):
    """One Adam step of every seed; returns the per-seed losses `[S]` before it."""
    torch, spec = self.torch, self.spec
    if x is None:
      x = self.peer.sample()
    lr = spec.learning_rate
    if spec.schedule == "cosine":
      lr = lr * 0.5 * (1.0 + math.cos(math.pi * min(self.t, spec.steps) / spec.steps))
    self.t += 1
    hyper = torch.tensor([lr, 1.0 - 0.9 ** self.t, 1.0 - 0.999 ** self.t])
    self.params, self.m, self.v, loss = self._step(self.params, self.m, self.v, hyper,
                                                  self.kernels, self.targets,
                                                  self.peer.target_var, x)
    return loss

  def evaluate(self) -> np.ndarray:
    """Held-out relative MSE per seed."""
    torch = self.torch
    n = len(self.kernels)
    with torch.no_grad():
      out = _stacked_net(torch, self.kernels, self.params[:n], self.params[n:], self.peer.eval_x)
      y = _stacked_target(torch, self.targets, self.peer.eval_x)
      return (((out - y) ** 2).mean(dim=(1, 2)) / (self.peer.target_var + 1e-12)).numpy()

  def norms(self) -> dict[str, np.ndarray]:
    """The trained norm tensors, named as `Peer.norms()` names them."""
    n = len(self.kernels)
    return {f"norm.{k}.{p}": self.params[i * n + k].detach().numpy().copy()
            for i, p in enumerate(("scale", "bias")) for k in range(n)}


def _stacked_net(torch, kernels, scales, biases, x):
  last = len(kernels) - 1
  for k, w in enumerate(kernels):
    x = torch.addcmul(biases[k].unsqueeze(1), torch.bmm(x, w), scales[k].unsqueeze(1))
    if k < last:
      x = torch.relu(x)
  return x


def _stacked_target(torch, targets, x):
  last = len(targets) - 1
  for k, (w, b) in enumerate(targets):
    x = torch.baddbmm(b.unsqueeze(1), x, w)
    if k < last:
      x = torch.relu(x)
  return x


def _step_function(torch):
  """The whole step as one function of tensors (see `Stacked`)."""

  def step(norms, m, v, hyper, kernels, targets, var, x):
    n = len(kernels)
    y = _stacked_target(torch, targets, x)

    def loss(norms):
      out = _stacked_net(torch, kernels, norms[:n], norms[n:], x)
      per = ((out - y) ** 2).mean(dim=(1, 2)) / (var + 1e-12)
      return per.sum(), per

    grads, per = torch.func.grad(loss, has_aux=True)(norms)
    lr, c1, c2 = hyper[0], hyper[1], hyper[2]
    m = tuple(0.9 * mi + 0.1 * g for mi, g in zip(m, grads))
    v = tuple(0.999 * vi + 0.001 * g * g for vi, g in zip(v, grads))
    norms = tuple(p - (lr / c1) * mi / (vi.sqrt() / c2.sqrt() + 1e-8)
                  for p, mi, vi in zip(norms, m, v))
    return norms, m, v, per.detach()

  return step


_COMPILED: dict = {}


def _compiled_step(torch, n_layers: int):
  if n_layers not in _COMPILED:
    _COMPILED[n_layers] = torch.compile(_step_function(torch), dynamic=False)
  return _COMPILED[n_layers]


def _ball(torch, shape, radius, generator):
  g = torch.randn(shape, generator=generator)
  u = torch.rand(shape[:-1] + (1,), generator=generator)
  return g / g.norm(dim=-1, keepdim=True) * (radius * u ** (1.0 / shape[-1]))


def build(spec, num_seeds: int, *, seed: int = 0, threads: Optional[int] = None,
          arrays: Optional[dict[str, Any]] = None) -> Peer:
  """Draws (or takes) S seeds' networks and targets and returns the `Peer`.

  Args:
    spec: a `jaxnorm.FitSpec` with `optimizer="adam"`, `norm="affine"`,
      `keep_prob=1`, `input_distribution="ball"`.
    num_seeds: S.
    seed: torch RNG seed for weights and data.
    threads: torch intra-op threads (default `default_threads()`).
    arrays: optional explicit start, numpy, seed axis first: `"kernels"`
      `[[S, in, out], ...]` (flax layout), `"scales"`, `"biases"` `[[S, out], ...]`,
      `"targets"` `[(W[S, out, in], b[S, out]), ...]`, `"eval_x"` `[S, n, d_0]`.

  Returns:
    The `Peer`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads or default_threads())
  generator = torch.Generator().manual_seed(seed)
  norm_mlp, target_mlp = _modules(torch)
  widths = spec.network_widths
  with torch.random.fork_rng():
    torch.manual_seed(seed)
    nets = [norm_mlp(widths) for _ in range(num_seeds)]
    targets = [target_mlp(spec.target_widths) for _ in range(num_seeds)]
    for net in nets:   # He-normal frozen weights, like jaxnorm's
      for dense in net.dense:
        torch.nn.init.kaiming_normal_(dense.weight, nonlinearity="relu")
    for t in targets:
      for dense in t.dense:
        torch.nn.init.kaiming_normal_(dense.weight, nonlinearity="relu")
        torch.nn.init.normal_(dense.bias, std=0.1)
  params, _ = torch.func.stack_module_state(nets)
  target_params, _ = torch.func.stack_module_state(targets)
  target_params = {k: v.detach() for k, v in target_params.items()}
  if arrays is not None:
    params = _from_arrays(torch, params, target_params, arrays)
  trainable = {k: v.detach().requires_grad_(True) for k, v in params.items()
               if k.startswith("norm.")}
  frozen = {k: v.detach() for k, v in params.items() if k.startswith("dense.")}
  if arrays is not None:
    eval_x = torch.tensor(np.array(arrays["eval_x"], np.float32))
  else:
    eval_x = _ball(torch, (num_seeds, spec.eval_size, spec.target_widths[0]), spec.radius,
                   generator)
  model = norm_mlp(widths).to("meta")
  target = target_mlp(spec.target_widths).to("meta")
  return Peer(torch, spec, model, target, trainable, frozen, target_params, eval_x, generator)


def _from_arrays(torch, params, target_params, arrays):
  t = lambda a: torch.tensor(np.array(a, np.float32))   # a copy: never alias the caller's buffers
  params = dict(params)
  for k, kernel in enumerate(arrays["kernels"]):
    params[f"dense.{k}.weight"] = t(np.swapaxes(np.asarray(kernel), 1, 2))
    params[f"norm.{k}.scale"] = t(arrays["scales"][k])
    params[f"norm.{k}.bias"] = t(arrays["biases"][k])
  for k, (w, b) in enumerate(arrays["targets"]):
    target_params[f"dense.{k}.weight"] = t(w)
    target_params[f"dense.{k}.bias"] = t(b)
  return params


def fit(spec, num_seeds: int, *, seed: int = 0, threads: Optional[int] = None,
        kind: str = "vmap") -> PeerResult:
  """Fits S seeds' norms for `spec.steps` Adam steps, timed end to end.

  Args:
    spec: see `build`.
    num_seeds: S.
    seed: torch RNG seed.
    threads: torch intra-op threads (default `default_threads()`).
    kind: `"vmap"` (the `Peer`: `torch.func.vmap`, `torch.optim.Adam`), `"bmm"`
      (`Stacked`, eager) or `"compile"` (`Stacked`, the whole step compiled).

  Returns:
    A `PeerResult`; `seconds` covers init, every step and the held-out evaluation.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown torch peer kind {kind!r}; expected one of {KINDS}")
  start = time.perf_counter()
  peer = build(spec, num_seeds, seed=seed, threads=threads)
  runner = peer if kind == "vmap" else Stacked(peer, kind)
  chunk = spec.chunk_steps or spec.steps
  n_chunks = math.ceil(spec.steps / chunk)
  losses = peer.torch.zeros((n_chunks, num_seeds))
  steps_start = time.perf_counter()
  for i in range(spec.steps):
    losses[i // chunk] += runner.step()
  steps_seconds = time.perf_counter() - steps_start
  counts = np.asarray([min(chunk, spec.steps - c * chunk) for c in range(n_chunks)], np.float32)
  curve = losses.numpy().T / counts
  rel_mse = runner.evaluate()
  return PeerResult(time.perf_counter() - start, curve, rel_mse, peer.torch.get_num_threads(),
                    steps_seconds)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, threads: Optional[int] = None) -> float:
  """torch's float32 n x n matrix-multiply rate (best of `repeats`), for comparison.

  Args:
    n: side of the square matrices.
    repeats: timed products after one warm-up; the fastest counts.
    threads: torch intra-op threads (default `default_threads()`).

  Returns:
    GFLOP/s.
  """
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads or default_threads())
  a = torch.randn(n, n)
  a @ a
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best / 1e9


def check_spec(spec, who: str = "the torch peer") -> None:
  """Raises `jaxnorm.validate.ConfigError` if a peer of jaxnorm's Adam fit (this module's, or
  the hand-written JAX baseline, `who`) cannot do `spec`'s work."""
  from jaxnorm import validate  # pylint: disable=g-import-not-at-top
  wanted = {"optimizer": "adam", "norm": "affine", "input_distribution": "ball", "init": "standard"}
  for name, value in wanted.items():
    if getattr(spec, name) != value:
      raise validate.ConfigError(f"{who} needs {name}={value}, got {getattr(spec, name)}")
  if spec.keep_prob != 1.0:
    raise validate.ConfigError(f"{who} needs keep_prob=1, got {spec.keep_prob}")
