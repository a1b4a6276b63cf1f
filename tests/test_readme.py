"""The README's examples (a)-(d) run as written and print what they claim.

Each ```python block under "Fit the norms of your own network" is executed in a
fresh namespace; its printed output must hold the numbers the README's text
relies on (test accuracy per seed, held-out relative MSE).
"""

import contextlib
import io
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text.split("## Fit the norms of your own network", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_four_examples():
  assert len(_examples()) == 4


def _run(code):
  out = io.StringIO()
  namespace = {"__name__": "readme_example"}
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace, out.getvalue()


@pytest.mark.parametrize("index", [0, 1])
def test_classification_examples_linen_and_nnx(index):
  namespace, out = _run(_examples()[index])
  result = namespace["result"]
  assert result.test_acc.shape == (4,)
  assert result.frozen_unchanged
  assert result.test_acc.min() > 0.3 and result.test_acc.mean() > 0.4, result.test_acc  # chance 0.1
  assert "test accuracy per seed" in out
  if index == 1:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    assert isinstance(namespace["model"], nnx.Module)


def test_function_example():
  namespace, out = _run(_examples()[2])
  result = namespace["result"]
  assert result.rel_mse.shape == (16,) and result.frozen_unchanged
  assert np.median(result.rel_mse) < 0.01, result.rel_mse
  assert "held-out relative MSE" in out


def test_data_set_example():
  namespace, out = _run(_examples()[3])
  result = namespace["result"]
  assert result.rel_mse.shape == (4,) and result.frozen_unchanged
  assert (result.rel_mse < 0.05).all(), result.rel_mse
  assert "held-out relative MSE per seed" in out
