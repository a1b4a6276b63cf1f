"""Plots a run writes into its workdir (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def median_band(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float],
                                                      Sequence[float], Sequence[float]]],
                *, xlabel: str, ylabel: str, title: str, logx: bool = True,
                logy: bool = True, diagonal: bool = False,
                xmarks: Mapping[float, str] | None = None,
                ymarks: Mapping[float, str] | None = None) -> None:
  """Plots median lines with a quartile band, one per series, and saves a PNG.

  Args:
    path: destination `.png`.
    series: `{label: (x, median, q25, q75)}`; `q25 = q75 = None` draws no band.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: figure title.
    logx: log-scale x axis.
    logy: log-scale y axis.
    diagonal: also draw the line y = x (dashed).
    xmarks: `{x: label}`: a dotted vertical line at each x, in the legend.
    ymarks: `{y: label}`: a dotted horizontal line at each y, in the legend.
  """
  fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
  for label, (x, med, q25, q75) in series.items():
    line, = ax.plot(x, med, marker="o", label=label)
    if q25 is not None:
      ax.fill_between(x, q25, q75, color=line.get_color(), alpha=0.25, linewidth=0)
  if diagonal:
    values = [v for x, med, _, _ in series.values() for v in (*x, *med)]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="y = x")
  for x, label in (xmarks or {}).items():
    ax.axvline(x, color="0.35", linestyle=":", linewidth=1.2, label=label)
  for y, label in (ymarks or {}).items():
    ax.axhline(y, color="0.55", linestyle="-.", linewidth=1.0, label=label)
  if logx:
    ax.set_xscale("log", base=2)
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  if len(series) > 1 or xmarks or ymarks:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def lines(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
          xlabel: str, ylabel: str, title: str, logx: bool = True, logy: bool = True,
          diagonal: bool = False) -> None:
  """Plots one marked line per series and saves a PNG.

  Args:
    path: destination `.png`.
    series: `{label: (x, y)}`.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: figure title.
    logx: log-scale x axis.
    logy: log-scale y axis.
    diagonal: also draw the line y = x (dashed).
  """
  median_band(path, {k: (x, y, None, None) for k, (x, y) in series.items()}, xlabel=xlabel,
              ylabel=ylabel, title=title, logx=logx, logy=logy, diagonal=diagonal)
