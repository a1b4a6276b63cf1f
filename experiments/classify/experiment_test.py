"""Tiny end-to-end runs of the classify experiment: outputs, resume, refusals, and its CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxnorm import checkpoint
from jaxnorm import memory
from experiments.classify import experiment as classify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Four (cell, mode, learning rate) units of two chunks each: an MLP (a ResNet cell trains in
# tests/test_classify.py; its compilations would take most of this file's time).
TINY = classify.Config(mlp_depths=(1,), mlp_widths=(8,), keep_probs=(1.0,), resnet_depths=(),
                       modes=("norm", "random_subset"), seeds=2, steps=6, chunk_steps=3,
                       batch_size=8, learning_rates=(1e-2, 3e-2))
OUTPUTS = ("config.json", "results.json", "timings.json", "results.csv")


def _files(path):
  return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))
          if (path / name).is_file()}


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
  """A workdir holding a complete, uninterrupted run of `TINY`, and its returned results."""
  path = tmp_path_factory.mktemp("complete")
  return path, classify.run(TINY, str(path))


def test_run_writes_every_cell_and_mode_at_its_chosen_rate(complete):
  path, results = complete
  on_disk = json.loads((path / "results.json").read_text())
  rows, sweep = on_disk["rows"], on_disk["sweep"]
  assert [(r["model"], r["mode"], r["learning_rate"]) for r in sweep] == [
      ("mlp", mode, lr) for mode in ("norm", "random_subset") for lr in (1e-2, 3e-2)]
  assert [(r["model"], r["mode"]) for r in rows] == [("mlp", "norm"), ("mlp", "random_subset")]
  for r in rows:
    assert {"model", "mode", "depth", "width", "p", "trainable_params", "learning_rate",
            "val_acc_mean", "test_acc_mean", "test_acc_std", "seeds", "val_acc_by_lr"} <= set(r)
    assert r == dict(sweep[r["sweep_index"]], sweep_index=r["sweep_index"],
                     val_acc_by_lr=r["val_acc_by_lr"])
    assert r["val_acc_mean"] == max(r["val_acc_by_lr"].values())
    assert "seconds" not in r   # timings.json: results.json is reproducible
  assert rows[0]["trainable_params"] == rows[1]["trainable_params"] == 2 * (8 + 10)
  assert on_disk["frozen_unchanged"] is True and on_disk["devices"] >= 1
  assert on_disk["chance"] == 0.1 and on_disk["data"].startswith("digits")
  assert json.loads((path / "config.json").read_text()) == on_disk["config"]
  timings = json.loads((path / "timings.json").read_text())
  assert sorted(timings, key=int) == [str(i) for i in range(4)] and results["timings"] == timings
  assert {k: v for k, v in results.items() if k != "timings"} == on_disk
  assert (path / "acc_vs_params.png").stat().st_size > 1000
  table = classify.table(results["rows"], results["timings"], results["sweep"])
  assert "learning_rate" in table and " ± " in table and "seconds" in table


def test_the_rate_is_chosen_on_validation_never_on_test():
  record = lambda lr, val, test: {"model": "mlp", "depth": 1, "width": 8, "p": 1.0,
                                  "mode": "norm", "learning_rate": lr, "val_acc_mean": val,
                                  "test_acc_mean": test}
  rows = classify.select([record(1e-2, 0.80, 0.99), record(3e-2, 0.90, 0.50),
                          record(1e-1, 0.90, 0.70)])
  assert len(rows) == 1 and rows[0]["learning_rate"] == 3e-2   # a tie goes to the smaller rate
  assert rows[0]["sweep_index"] == 1 and rows[0]["val_acc_by_lr"] == {
      "0.01": 0.8, "0.03": 0.9, "0.1": 0.9}


def test_a_users_npz_of_images_runs_the_same_study(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 6, 6, 3)).astype(np.float32)
  y = np.arange(60) % 3
  x[np.arange(60), y, y, 0] += 4.0   # a learnable class signal
  np.savez(tmp_path / "mine.npz", x_train=x[:45], y_train=y[:45], x_test=x[45:], y_test=y[45:])
  config = dataclasses.replace(TINY, data=str(tmp_path / "mine.npz"), modes=("norm",),
                               learning_rates=(3e-2,), validation=0.2)
  results = classify.run(config, str(tmp_path / "w"))
  assert [(r["model"], r["trainable_params"]) for r in results["rows"]][0] == ("mlp", 2 * (8 + 3))
  assert results["chance"] == 1 / 3 and results["data"].endswith("mine.npz")
  with pytest.raises(classify.validate.ConfigError, match="cannot read .*nothere.npz"):
    classify.run(dataclasses.replace(config, data=str(tmp_path / "nothere.npz")),
                 str(tmp_path / "w2"))


def test_stopped_and_resumed_run_writes_the_same_bytes(complete, tmp_path):
  path, _ = complete
  for stop in (3, 2):   # mid-unit: after the first chunk of the second, then of the third unit
    with pytest.raises(checkpoint.Preempted):
      classify.run(TINY, str(tmp_path), checkpoint.Control(stop_after_chunks=stop))
    assert not (tmp_path / "results.json").exists()
  classify.run(TINY, str(tmp_path))
  for name in ("results.json", "results.csv"):
    assert (tmp_path / name).read_bytes() == (path / name).read_bytes(), name


def test_complete_workdir_is_reported_not_recomputed(complete, monkeypatch):
  path, results = complete
  before = _files(path)

  def forbidden(*args, **kwargs):
    raise AssertionError("a complete run was recomputed")
  monkeypatch.setattr(classify.classify, "train", forbidden)
  again = classify.run(TINY, str(path))
  assert again.pop("already_complete") is True
  assert again == results
  assert _files(path) == before


def test_workdir_with_another_config_is_refused_untouched(complete):
  path, _ = complete
  before = _files(path)
  with pytest.raises(classify.validate.ConfigError, match="another config.*seeds: 2 -> 3"):
    classify.run(dataclasses.replace(TINY, seeds=3), str(path))
  assert _files(path) == before


def test_cells_are_the_union_of_the_sweeps():
  specs = classify.cells(classify.Config(
      mlp_depths=(2, 1), mlp_widths=(32, 64), keep_probs=(1.0, 0.25), resnet_depths=(8, 14),
      resnet_widths=(16, 32), modes=("norm",), learning_rates=(1e-2,)))
  assert [(s.model, s.depth, s.width, s.keep_prob) for s in specs] == [
      ("mlp", 2, 32, 1.0), ("mlp", 1, 32, 1.0), ("mlp", 2, 64, 1.0), ("mlp", 2, 32, 0.25),
      ("resnet", 8, 16, 1.0), ("resnet", 14, 16, 1.0), ("resnet", 8, 32, 1.0)]
  assert all(s.chunk_steps == 200 for s in specs)
  rates = classify.cells(dataclasses.replace(TINY, learning_rates=(1e-3, 1e-2, 1e-1)))
  assert [s.learning_rate for s in rates[:3]] == [1e-3, 1e-2, 1e-1] and len(rates) == 6


@pytest.mark.parametrize("change,needle", [
    (dict(devices=99), "asked for 99 devices"),
    (dict(devices=-1), "devices"),
    (dict(chunk_steps=0), "chunk_steps"),
    (dict(seed=-1), "seed"),
    (dict(modes=("norm", "norm")), "repeats"),
    (dict(conv_channels=(0,)), "conv_channels"),
    (dict(keep_probs=(0.0,)), "0"),
    (dict(mlp_widths=(-2,)), "-2"),
    (dict(conv_depths=(1,), conv_channels=()), "give their conv_channels too"),
    (dict(resnet_depths=(9,)), r"resnet_depths: a CIFAR ResNet has depth 6n \+ 2"),
    (dict(resnet_depths=(8,), resnet_widths=()), "give their resnet_widths too"),
    (dict(learning_rates=(0.01, 0.01)), "distinct"),
    (dict(learning_rates=(-1.0,)), "learning rate"),
    (dict(validation=1.0), "validation must be a share"),
    (dict(mlp_depths=(), resnet_depths=()), "no model to train"),
    (dict(data="/nonexistent/data.npz"), "cannot read"),
    (dict(mlp_depths=(100000,)), "depth is 100000, more than 64"),
    (dict(mlp_widths=tuple(range(1, 100))), "the number of mlp_widths is 99, more than 64"),
    (dict(norm="batchnorm", batch_size=1), "batchnorm needs batch_size >= 2"),
    (dict(mlp_widths=(10 ** 6,)), "needs about"),   # ~4 TB of frozen weights per seed
])
def test_bad_config_is_refused_before_compute(tmp_path, monkeypatch, change, needle):
  def forbidden(*args, **kwargs):
    raise AssertionError("compute started before the input was validated")
  monkeypatch.setattr(classify.classify, "train", forbidden)
  (tmp_path / "results.json").write_text("earlier")
  with pytest.raises(classify.validate.ConfigError, match=needle):
    classify.run(dataclasses.replace(TINY, **change), str(tmp_path))
  assert _files(tmp_path) == {"results.json": b"earlier"}


def test_memory_estimate_is_checked(monkeypatch, tmp_path):
  monkeypatch.setattr(memory, "available_bytes", lambda: (1 << 20, 1))
  with pytest.raises(classify.validate.ConfigError, match=r"classify needs about .* of memory"):
    classify.run(TINY, str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where,needle", [("a_file", "not a directory"),
                                          ("a_file/sub", "not writable")])
def test_workdir_that_is_a_file_or_below_one_is_refused(tmp_path, where, needle):
  (tmp_path / "a_file").write_text("keep me")
  with pytest.raises(classify.validate.ConfigError, match=needle):
    classify.run(TINY, str(tmp_path / where))
  assert (tmp_path / "a_file").read_text() == "keep me"


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.classify", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags,needle", [   # (more cases run in-process above)
    (["--modes=norm,weights"], "weights"),
    (["--stop_after_chunks=0"], "stop_after_chunks"),
])
def test_cli_bad_input_is_one_line_and_leaves_workdir_alone(tmp_path, flags, needle):
  (tmp_path / "results.json").write_text('{"earlier": "run"}\n')
  proc = _cli(f"--workdir={tmp_path}", *flags)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert _files(tmp_path) == {"results.json": b'{"earlier": "run"}\n'}
