"""Writing what a run makes: JSON, CSV and plain-text tables, atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Sequence


def _atomic_write(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def jsonable(x: Any) -> Any:
  """`x` with numpy scalars and arrays as Python numbers and lists, non-finite floats as strings."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
    x = x.item()
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, replacing `path` atomically.

  Args:
    path: destination file.
    obj: dicts, lists, numbers, strings, numpy scalars/arrays; non-finite
      floats are written as the strings "nan", "inf", "-inf".
  """
  _atomic_write(path, json.dumps(jsonable(obj), indent=1, sort_keys=False) + "\n")


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """Writes a CSV file with a header row, replacing `path` atomically."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  writer.writerows([[jsonable(v) for v in row] for row in rows])
  _atomic_write(path, buf.getvalue())


def number(v: Any) -> str:
  """A table or log cell: numbers to 3 significant digits, anything else (e.g. the "nan" that
  a non-finite number reads back from JSON as) as it is."""
  return format(v, ".3g") if isinstance(v, float) else str(v)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Formats rows as an aligned plain-text table (numbers to 3 significant digits).

  Args:
    header: column names.
    rows: one sequence of values per row.

  Returns:
    The table as one string, with a rule under the header.
  """
  cells = [list(map(str, header))] + [[number(v) for v in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
