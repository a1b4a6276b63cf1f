"""Reading a ReLU MLP with two hidden layers out of its outputs alone (queries, no weights).

Why: a student fitted by gradient steps stalls on a depth-3 target (the
teacher–student landscape), but a ReLU network shows its weights in its
kinks, after Carlini et al. (2020) and Rolnick & Kording (2020). For
`f(x) = W3 relu(W2 relu(W1 x + b1) + b2) + b3` on a ball:

1. Along random chords of the ball `f` is piecewise linear; each isolated
   kink is located from the slopes on either side (`kinks_on_lines`), and
   the surface it lies on gets its normal from the same kink on `d - 1`
   parallel chords close by. The jump of the slope, a vector in output
   space, is `c = W3[:, k]` (up to scale) for a kink of second-layer unit
   `k`, and varies from kink to kink for a first-layer unit.
2. First-layer units are hyperplanes `z_j = n_j.x + o_j = 0` crossing the
   whole ball: groups of kinks on one hyperplane whose jumps differ.
3. Every other kink belongs to a second-layer unit; grouped by their jump
   direction, each unit's kinks `x` satisfy
   `sum_j beta_j |z_j(x)| + A.x + a0 = 0` (`relu(s z) = (s z + |z|) / 2`),
   a null space solved by SVD. Hyperplanes the unit's surface never crosses
   in the ball leave their coefficient unseen (`hidden` planes).
4. The first layer's signs `s_j` make `A` equal `sum_j beta_j s_j n_j`
   (least squares over every unit, rounded); a hidden plane's weight is read
   from the linear part where the unit sees the plane's active side, and
   chosen large with the sign the output fit prefers where it does not.
5. The output layer is a least-squares fit on fresh queries. A unit's sign
   (`relu(u)` or `relu(-u) = relu(u) - u`) only moves `u`'s linear part into
   a skip term from the first layer to the output; the signs that leave the
   smallest skip term (nuclear norm) are kept, and what is left of it
   (always-on units, unit by unit rank) becomes extra always-on units.

The result is an MLP `[d_0, h_1, h_2, d_l]` with `h_1` the planes found and
`h_2` the units found plus the extra ones; its error is measured by the
caller on fresh queries (nothing here claims it is exact). Works in float64
on the host on what `f` returns (float32 targets: the thresholds below hold
for inputs and outputs of order one, which `radius` scaling gives).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

PLANE_COS = 1e-5      # 1 - |cos| between the normals of kinks on one hyperplane
PLANE_DIST = 1e-4     # distance of a kink from a hyperplane it lies on (unit ball)
JUMP_COS = 1e-4       # 1 - |cos| between the slope jumps of one second-layer unit
NOISE_EPS = 30        # kinks are slope changes above this many ulps of the outputs per step
LOCAL_STEP = 3e-3     # offset of the parallel chords that give a kink's normal
FREE_WEIGHT_CAP = 100  # an unseen weight is at most this many times the unit's largest seen one
EXHAUSTIVE_SIGNS = 16  # up to this many second-layer units their signs are searched exhaustively


class ExtractionError(ValueError):
  """The queries did not show the structure of a ReLU MLP with two hidden layers."""


@dataclasses.dataclass(frozen=True)
class Extraction:
  """An MLP read from queries.

  Attributes:
    layers: `[(W1, b1), (W2, b2), (W3, b3)]`, float64, `W[out, in]`.
    queries: evaluations of the target it took.
    planes: first-layer units found.
    units: second-layer units found (before the always-on ones added for
      the skip term).
    extra: always-on second-layer units added.
    hidden_planes: (unit, plane) pairs whose weight was not seen directly.
  """

  layers: list
  queries: int
  planes: int
  units: int
  extra: int
  hidden_planes: int

  @property
  def widths(self) -> tuple[int, ...]:
    """`[d_0, h_1, h_2, d_l]`."""
    return (self.layers[0][0].shape[1],) + tuple(w.shape[0] for w, _ in self.layers)


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _ball(rng, n, d):
  return _unit(rng.normal(size=(n, d))) * rng.uniform(size=(n, 1)) ** (1.0 / d)


def kinks_on_lines(y: np.ndarray, t: np.ndarray, eps: float):
  """The isolated kinks of piecewise-linear samples, located from the slopes either side.

  Args:
    y: outputs `[L, T, d_out]` at the points `t` of `L` lines.
    t: positions `[L, T]`, evenly spaced on each line.
    eps: the outputs' relative rounding error (their dtype's epsilon).

  Returns:
    `(line, position, jump)` of each kink with one kink in its interval and
    none in the two next to it; `jump` `[K, d_out]` is the slope after minus
    the slope before.
  """
  dt = t[:, 1] - t[:, 0]
  slope = np.diff(y, axis=1) / dt[:, None, None]
  change = np.linalg.norm(np.diff(slope, axis=1), axis=-1)            # [L, T-2]
  noise = NOISE_EPS * eps * (np.abs(y).max(axis=(1, 2)) + 1e-30) / dt
  big = change > noise[:, None]
  pad = np.pad(big, ((0, 0), (1, 1)))
  i = np.arange(1, big.shape[1])      # a kink inside interval i changes the slope at both its ends
  cand = big[:, i - 1] & big[:, i] & ~pad[:, i - 1] & ~pad[:, i + 2]
  line, idx = np.nonzero(cand)
  idx = idx + 1
  before, inside, after = slope[line, idx - 1], slope[line, idx], slope[line, idx + 1]
  jump = after - before
  tau = np.sum((inside - after) * (before - after), -1) / (np.sum(jump * jump, -1) + 1e-300)
  fit = np.linalg.norm(inside - (tau[:, None] * before + (1 - tau[:, None]) * after), axis=-1)
  ok = (tau >= 0) & (tau <= 1) & (fit < 1e-2 * np.linalg.norm(jump, axis=-1))
  pos = t[line, idx] + tau * dt[line]
  return line[ok], pos[ok], jump[ok]


def _find_kinks(f, d_in, rng, lines, points, eps):
  """Kinks on random chords of the unit ball with their normals and slope jumps."""
  d = _unit(rng.normal(size=(lines, d_in)))
  a = rng.normal(size=(lines, d_in))
  a -= np.sum(a * d, 1, keepdims=True) * d
  a = _unit(a) * rng.uniform(size=(lines, 1)) ** (1.0 / max(d_in - 1, 1)) if d_in > 1 else 0 * a
  half = np.sqrt(np.maximum(1.0 - np.sum(a ** 2, 1), 0.0))
  t = half[:, None] * np.linspace(-1.0, 1.0, points)[None]
  y = f((a[:, None] + t[..., None] * d[:, None]).reshape(-1, d_in)).reshape(lines, points, -1)
  line, pos, jump = kinks_on_lines(y, t, eps)
  x, dl = a[line] + pos[:, None] * d[line], d[line]
  if d_in == 1 or len(x) == 0:
    return x, dl.copy(), jump, dl
  # the same kink on d-1 chords shifted by LOCAL_STEP along directions across the chord
  k = len(x)
  basis = np.linalg.svd(np.eye(d_in)[None] - dl[:, :, None] * dl[:, None, :])[0][:, :, :d_in - 1]
  shift = LOCAL_STEP * np.swapaxes(basis, 1, 2)                          # [K, d-1, d]
  tl = np.linspace(-4 * LOCAL_STEP, 4 * LOCAL_STEP, 9)
  pts = (x[:, None, None] + shift[:, :, None] + tl[None, None, :, None] * dl[:, None, None])
  yl = f(pts.reshape(-1, d_in)).reshape(k * (d_in - 1), len(tl), -1)
  l2, t2, _ = kinks_on_lines(yl, np.broadcast_to(tl, (k * (d_in - 1), len(tl))), eps)
  found = np.full(k * (d_in - 1), np.nan)
  found[l2] = t2
  found[np.bincount(l2, minlength=k * (d_in - 1)) != 1] = np.nan
  found = found.reshape(k, d_in - 1)
  good = np.isfinite(found).all(1)
  tangents = shift + np.nan_to_num(found)[..., None] * dl[:, None, :]
  normal = np.linalg.svd(tangents)[2][:, -1]
  return x[good], normal[good], jump[good], dl[good]


def _planes(x, normal, jump_dir, d_in):
  """Hyperplanes through groups of kinks whose slope jumps differ: the first layer."""
  offset = -np.sum(normal * x, 1)
  same = (np.abs(normal @ normal.T) > 1 - PLANE_COS) & (np.abs(x @ normal.T + offset) < PLANE_DIST)
  same &= same.T
  left = np.ones(len(x), bool)
  planes = []
  while left.any():
    count = (same & left[None] & left[:, None]).sum(1) * left
    i = int(np.argmax(count))
    if count[i] < 4:
      break
    members = same[i] & left
    for _ in range(2):
      if members.sum() > d_in + 2:
        centre = x[members].mean(0)
        n = np.linalg.svd(x[members] - centre)[2][-1]
      else:
        n = _unit(np.mean(normal[members] * np.sign(normal[members] @ normal[i])[:, None], 0))
      o = -np.mean(x[members] @ n)
      members |= left & (np.abs(x @ n + o) < PLANE_DIST) & (np.abs(normal @ n) > 1 - 10 * PLANE_COS)
    left &= ~members
    if np.abs(jump_dir[members] @ jump_dir[members].T).min() < 1 - 10 * JUMP_COS:   # jumps differ
      planes.append(np.append(n, o))
  return np.array(planes).reshape(-1, d_in + 1)


def _units(x, jump_dir, planes, d_in):
  """Second-layer units: groups of kinks with one jump direction, each a null space."""
  h1 = len(planes)
  z = lambda p: p @ planes[:, :-1].T + planes[:, -1]
  c = jump_dir * np.sign(jump_dir[:, :1] + 1e-300)
  alike = np.abs(c @ c.T) > 1 - JUMP_COS
  left = np.ones(len(x), bool)
  units = []
  while left.any():
    count = (alike & left[None] & left[:, None]).sum(1) * left
    i = int(np.argmax(count))
    members = alike[i] & left
    left &= ~members
    if count[i] < 8:
      break
    side = np.sign(z(x[members]))
    seen = ~(side == side[0]).all(0)          # planes this unit's surface crosses
    feats = np.concatenate([np.abs(z(x[members]))[:, seen], x[members],
                            np.ones((members.sum(), 1))], 1)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    if feats.shape[0] < feats.shape[1] + 2:
      continue
    sv, vt = np.linalg.svd(feats)[1:]
    if not (sv[-1] < 1e-5 * sv[0] and sv[-2] > 1e-4 * sv[0]):
      continue                                  # not one surface of this form
    null = vt[-1]
    beta = np.zeros(h1)
    beta[seen] = null[:seen.sum()]
    scale = np.linalg.norm(beta) + 1e-300
    units.append({"beta": beta / scale, "A": null[seen.sum():-1] / scale,
                  "a0": null[-1] / scale, "hidden": ~seen, "side": side[0]})
  return units


def _first_layer_signs(units, planes, d_in):
  """`s_j` (and each unit's hidden-plane coefficients) from `A_k = sum_j beta_kj s_j n_j + ...`."""
  h1, h2 = len(planes), len(units)
  hidden = [np.flatnonzero(u["hidden"]) for u in units]
  starts = np.cumsum([0] + [len(h) for h in hidden])
  m = np.zeros((h2 * d_in, h1 + starts[-1]))
  rhs = np.zeros(h2 * d_in)
  for k, u in enumerate(units):
    rows = slice(k * d_in, (k + 1) * d_in)
    m[rows, :h1] = (u["beta"][:, None] * planes[:, :-1]).T
    m[rows, h1 + starts[k]:h1 + starts[k + 1]] = planes[hidden[k], :-1].T
    rhs[rows] = u["A"]
  sol = np.linalg.lstsq(m, rhs, rcond=None)[0]
  signs = np.where(sol[:h1] < 0, -1.0, 1.0)
  alphas = [sol[h1 + starts[k]:h1 + starts[k + 1]] for k in range(h2)]
  return signs, alphas, hidden


def _least_squares(phi, y):
  return np.linalg.lstsq(phi, y, rcond=None)[0]


def _unit_signs(v, w2, g0):
  """Flips (0/1 per unit) that leave the smallest skip term `g0 + sum_k flip_k v_k w2_k^T`."""
  h2 = w2.shape[0]
  terms = np.einsum("ok,kj->koj", v, w2)
  nuclear = lambda g: np.linalg.svd(g, compute_uv=False).sum(-1)
  if h2 <= EXHAUSTIVE_SIGNS:
    best, best_value = np.zeros(h2), np.inf
    for start in range(0, 2 ** h2, 4096):
      codes = np.arange(start, min(start + 4096, 2 ** h2))
      flips = ((codes[:, None] >> np.arange(h2)[None]) & 1).astype(float)
      values = nuclear(g0[None] + np.einsum("fk,koj->foj", flips, terms))
      i = int(np.argmin(values))
      if values[i] < best_value:
        best, best_value = flips[i], values[i]
    return best
  flips = np.zeros(h2)
  value = nuclear(g0)
  improved = True
  while improved:
    improved = False
    for k in range(h2):
      trial = flips.copy()
      trial[k] = 1 - trial[k]
      v_trial = nuclear(g0 + np.einsum("k,koj->oj", trial, terms))
      if v_trial < value - 1e-12:
        flips, value, improved = trial, v_trial, True
  return flips


def extract_mlp(f: Callable[[np.ndarray], np.ndarray], d_in: int, d_out: int,
                radius: float = 1.0, seed: int = 0, lines: int = 400,
                points: int = 2049) -> Extraction:
  """Reads an MLP `[d_0, h_1, h_2, d_l]` (two hidden ReLU layers) out of `f` on a ball.

  Args:
    f: the black box, `f(x[n, d_in]) -> [n, d_out]` (numpy in, numpy out).
    d_in: input dimension.
    d_out: output dimension.
    radius: the ball `||x|| <= radius` on which the MLP should agree with `f`.
    seed: seed of the random chords and query points.
    lines: random chords scanned for kinks.
    points: evenly spaced queries per chord.

  Returns:
    An `Extraction` (its `layers` in float64).

  Raises:
    ExtractionError: no first-layer hyperplane or no second-layer unit was
      found (e.g. a target with one hidden layer, or with more than two).
  """
  rng = np.random.default_rng(seed)
  count = [0]

  def query(u):   # in the unit ball's coordinates
    count[0] += u.shape[0]
    y = np.asarray(f(radius * u))
    if y.shape != (u.shape[0], d_out):
      raise ExtractionError(f"the target gave outputs of shape {y.shape} for {u.shape[0]} inputs "
                            f"of dimension {d_in}, expected ({u.shape[0]}, {d_out})")
    return y

  eps = float(np.finfo(query(np.zeros((1, d_in))).dtype).eps)   # the outputs' rounding
  wrapped = lambda u: query(u).astype(np.float64)
  x, normal, jump, _ = _find_kinks(wrapped, d_in, rng, lines, points, eps)
  if len(x) < 8:
    raise ExtractionError(f"{len(x)} kinks found on {lines} chords: the target does not look "
                          f"like a ReLU network on this ball")
  jump_dir = _unit(jump)
  planes = _planes(x, normal, jump_dir, d_in)
  h1 = len(planes)
  if h1 == 0:
    raise ExtractionError("no first-layer hyperplane found (a hyperplane of kinks whose slope "
                          "jumps differ): a target with two hidden layers is needed")
  z = lambda p: p @ planes[:, :-1].T + planes[:, -1]
  second = np.min(np.abs(z(x)), axis=1) >= PLANE_DIST
  units = _units(x[second], jump_dir[second], planes, d_in)
  h2 = len(units)
  if h2 == 0:
    raise ExtractionError(f"{h1} first-layer hyperplanes but no second-layer unit found (a "
                          f"target with two hidden layers is needed)")
  signs, alphas, hidden = _first_layer_signs(units, planes, d_in)
  w1, b1 = signs[:, None] * planes[:, :-1], signs * planes[:, -1]
  w2, b2 = np.zeros((h2, h1)), np.zeros(h2)
  free = []
  for k, u in enumerate(units):
    w2[k] = 2 * u["beta"]
    w2[k, hidden[k]] = alphas[k] * signs[hidden[k]]
    b2[k] = u["a0"] - u["beta"] @ b1 - alphas[k] @ planes[hidden[k], -1]
    # planes the unit never crosses with their active side away from its surface: unseen weight
    free.append([j for j in hidden[k] if signs[j] != u["side"][j]])
  xq = _ball(rng, 8 * (h1 + h2) + 4000, d_in)
  yq = wrapped(xq)
  h = np.maximum(xq @ w1.T + b1, 0)
  # an unseen weight is +-W, large enough that the unit keeps one sign on that plane's far side
  choices = []
  for k in range(h2):
    rows = [w2[k].copy()]
    for j in free[k]:
      far = h[:, j] > 0
      grown = []
      for row in rows:
        for sign in (1.0, -1.0):
          ratio = -sign * (h[far] @ row + b2[k]) / h[far, j]
          cap = FREE_WEIGHT_CAP * max(np.abs(row).max(), abs(b2[k]))   # not unbounded at the plane
          r = row.copy()
          r[j] = sign * min(1.5 * max(float(np.max(ratio, initial=0.0)), 1e-3), cap)
          grown.append(r)
      rows = grown
    choices.append(rows)
  phi = np.concatenate([np.stack([np.maximum(h @ r + b2[k], 0) for k in range(h2)
                                  for r in choices[k]], 1), h, np.ones((len(xq), 1))], 1)
  coef = _least_squares(phi, yq)
  at = 0
  for k in range(h2):
    n = len(choices[k])
    w2[k] = choices[k][int(np.argmax(np.linalg.norm(coef[at:at + n], axis=1)))]
    at += n
  phi = np.concatenate([np.maximum(h @ w2.T + b2, 0), h, np.ones((len(xq), 1))], 1)
  coef = _least_squares(phi, yq)
  flips = _unit_signs(coef[:h2].T, w2, coef[h2:h2 + h1].T)
  w2, b2 = (1 - 2 * flips)[:, None] * w2, (1 - 2 * flips) * b2
  phi = np.concatenate([np.maximum(h @ w2.T + b2, 0), h, np.ones((len(xq), 1))], 1)
  coef = _least_squares(phi, yq)
  v, skip, c0 = coef[:h2].T, coef[h2:h2 + h1].T, coef[-1]
  # what is left of the skip term: always-on units relu(V h + B), B above any |V h| on the ball
  uu, ss, vv = np.linalg.svd(skip, full_matrices=False)
  rms_h = np.sqrt(np.mean(np.sum(h ** 2, 1)))
  r = int(np.sum(ss * rms_h > 1e-4 * np.sqrt(np.var(yq, 0).sum())))
  lift = np.full(r, 2 * np.linalg.norm(h, axis=1).max() + 1)
  w3 = np.concatenate([v, uu[:, :r] * ss[:r]], 1)
  b3 = c0 - (uu[:, :r] * ss[:r]) @ lift
  layers = [(w1 / radius, b1), (np.concatenate([w2, vv[:r]]), np.concatenate([b2, lift])),
            (w3, b3)]
  return Extraction(layers=layers, queries=count[0], planes=h1, units=h2, extra=r,
                    hidden_planes=int(sum(len(fr) for fr in free)))


def pad_layers(layers: Sequence, widths: Sequence[int]):
  """Embeds an MLP in wider hidden layers with zero units (the same function).

  Args:
    layers: `[(W[out, in], b[out]), ...]`.
    widths: `[d_0, ..., d_l]` to pad to (same ends and depth).

  Returns:
    The padded layers (float64), or None where a layer is wider than `widths` allows.
  """
  own = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
  if len(own) != len(widths) or own[0] != widths[0] or own[-1] != widths[-1] or any(
      a > b for a, b in zip(own, widths)):
    return None
  out = []
  for k, (w, b) in enumerate(layers):
    wp = np.zeros((widths[k + 1], widths[k]))
    wp[:w.shape[0], :w.shape[1]] = w
    bp = np.zeros(widths[k + 1])
    bp[:b.shape[0]] = b
    out.append((wp, bp))
  return out
