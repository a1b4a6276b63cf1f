"""Moving norms between the array form of a reconstruction and Flax variables.

`frozen_weights` reads the frozen matrices (math layout `W[out, in]`) out of a
`NormMLP`'s params, so a network drawn by the model can be handed to
`jaxnorm.reconstruct`; `norm_mlp_variables` writes per-layer `(gamma, beta)`
back as `NormMLP` variables, either as jaxnorm's `Affine` norms or as standard
`flax.linen.BatchNorm` variables for inference mode (docs/design.md §3): with
running statistics `(mean, var)`, BatchNorm computes
`scale * (a - mean) / sqrt(var + eps) + bias`, which equals `gamma * a + beta`
for `scale = gamma * sqrt(var + eps)` and `bias = beta + gamma * mean`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxnorm import validate


def frozen_weights(params) -> list[jax.Array]:
  """The frozen matrices of a `NormMLP`, in math layout.

  Args:
    params: the `"params"` collection of a `NormMLP`.

  Returns:
    `[W_1[out, in], ..., W_L[out, in]]`.
  """
  n = sum(1 for k in params if k.startswith("dense_"))
  return [jnp.asarray(params[f"dense_{k}"]["kernel"]).T for k in range(n)]


def norm_mlp_variables(gammas: Sequence[jax.Array], betas: Sequence[jax.Array],
                       frozen: Sequence[jax.Array], norm: str = "affine",
                       batch_stats: Optional[Any] = None,
                       epsilon: float = 1e-5) -> dict[str, Any]:
  """`NormMLP` variables whose norms compute `gamma_k * a + beta_k` at layer k.

  Args:
    gammas: per-layer scales `[d_k]`, one per frozen layer.
    betas: per-layer shifts `[d_k]`.
    frozen: the frozen matrices `W_k[out, in]` (e.g. from `frozen_weights`).
    norm: `"affine"` or `"batchnorm"` (inference mode: apply with `train=False`).
    batch_stats: BatchNorm running statistics `{"norm_k": {"mean", "var"}}` to
      keep; default mean 0 and var 1 (what `NormMLP.init` gives).
    epsilon: BatchNorm's epsilon (flax default 1e-5).

  Returns:
    `{"params": ...}` (plus `"batch_stats"` for batchnorm) for
    `NormMLP(widths, norm).apply(variables, x)`.
  """
  validate.one_of("norm kind for export", norm, ("affine", "batchnorm"))
  if not len(gammas) == len(betas) == len(frozen):
    raise validate.ConfigError(f"need one gamma and beta per frozen layer: got {len(gammas)} "
                               f"gammas, {len(betas)} betas, {len(frozen)} matrices")
  params, stats = {}, {}
  for k, (g, b, w) in enumerate(zip(gammas, betas, frozen)):
    g, b, w = jnp.asarray(g), jnp.asarray(b), jnp.asarray(w)
    if g.shape != (w.shape[0],) or b.shape != (w.shape[0],):
      raise validate.ConfigError(f"layer {k}: gamma {g.shape} and beta {b.shape} must be "
                                 f"[{w.shape[0]}] to match W {w.shape}")
    params[f"dense_{k}"] = {"kernel": w.T}
    if norm == "affine":
      params[f"norm_{k}"] = {"scale": g, "bias": b}
      continue
    given = (batch_stats or {}).get(f"norm_{k}", {})
    mean = jnp.asarray(given.get("mean", jnp.zeros_like(g)), g.dtype)
    var = jnp.asarray(given.get("var", jnp.ones_like(g)), g.dtype)
    params[f"norm_{k}"] = {"scale": g * jnp.sqrt(var + epsilon), "bias": b + g * mean}
    stats[f"norm_{k}"] = {"mean": mean, "var": var}
  return {"params": params, "batch_stats": stats} if norm == "batchnorm" else {"params": params}
