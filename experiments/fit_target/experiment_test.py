"""End-to-end tests of the fit_target experiment: library `run` and the CLI."""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np

import pytest
from absl import flags

from jaxnorm import checkpoint
from experiments import config_flags
from experiments.fit_target import experiment as fit_target

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(0.5, 1.0), seeds=2,
                         steps=30, chunk_steps=15, batch_size=16, eval_size=64,
                         optimizers=("adam", "lm"), fit_size=32)


def test_run_writes_results_metrics_and_plot(tmp_path):
  results = fit_target.run(TINY, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["frozen_unchanged"] is True
  assert on_disk["config"]["target_widths"] == [3, 4, 2]
  rows = on_disk["rows"]
  assert [(r["optimizer"], r["width"]) for r in rows] == [
      ("adam", [6, 4]), ("lm", [6, 4]), ("adam", [12, 8]), ("lm", [12, 8])]
  assert [r["width_ratio"] for r in rows] == [0.5, 0.5, 1.0, 1.0]
  assert [r["evals"] for r in rows] == [16 * 30, 32] * 2
  for row in rows:
    assert set(row) >= {"optimizer", "width_ratio", "width", "trainable_params",
                        "target_params", "evals", "rel_mse_median", "rel_mse_q25",
                        "rel_mse_q75", "diverged", "seeds"}
    assert "seconds" not in row   # timings.json: results.json is reproducible
    assert row["seeds"] == 2 and row["target_params"] == 3 * 4 + 4 + 4 * 2 + 2
    assert row["rel_mse_q25"] <= row["rel_mse_median"] <= row["rel_mse_q75"]
    assert row["diverged"] == 0 and row["steps"] == 30
  assert rows[0]["trainable_params"] == 2 * (6 + 4 + 4 + 2)
  assert results["rows"] == rows
  with open(tmp_path / "metrics.csv") as f:
    metrics = list(csv.DictReader(f))
  assert len(metrics) == 8 and {m["seed"] for m in metrics} == {"0", "1"}
  assert {m["optimizer"] for m in metrics} == {"adam", "lm"}
  assert {m["diverged"] for m in metrics} == {"False"}
  with open(tmp_path / "curves.csv") as f:
    assert len(list(csv.DictReader(f))) == 2 * 2 * 2 * 2
  assert (tmp_path / "rel_mse_vs_width.png").stat().st_size > 1000
  table = fit_target.table(results["rows"])
  assert "rel_mse_med" in table and "evals" in table and "lm" in table
  assert all(r["norm"] == r["output_norm"] == "affine" for r in rows)
  assert all(r["network_widths"] == [3, r["width"][0], 4, r["width"][1], 2] for r in rows)
  assert all(r["seeds_at_most_1e-4"] == np.sum(np.array(
      [float(m["rel_mse"]) for m in metrics if m["optimizer"] == r["optimizer"]
       and float(m["width_ratio"]) == r["width_ratio"]]) <= 1e-4) for r in rows)
  # A LayerNorm as the last norm is explained where the results are read.
  assert "output LayerNorm" not in table
  assert "output LayerNorm: the last norm normalises each output vector" in fit_target.table(
      [dict(r, norm="layernorm", output_norm="layernorm") for r in rows])


def test_optimizers_all_and_per_optimizer_defaults():
  config = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(1.0,),
                             optimizers=("all",))
  specs = fit_target.specs(config)
  assert [s.optimizer for s in specs] == list(fit_target.fitspec.OPTIMIZERS)
  assert [s.steps for s in specs] == [fit_target.fitspec.DEFAULT_STEPS[o] for o in
                                      fit_target.fitspec.OPTIMIZERS]
  assert all(s.chunk_steps <= s.steps for s in specs)


def test_unknown_optimizer_raises_before_compute(tmp_path, monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("compute started before the input was validated")
  monkeypatch.setattr(fit_target.fitspec, "fit_seeds", forbidden)
  config = fit_target.Config(target_widths=(3, 4, 2), optimizers=("adam", "newton"))
  with pytest.raises(fit_target.validate.ConfigError, match="unknown optimizer 'newton'"):
    fit_target.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_explicit_widths_replace_multipliers():
  config = fit_target.Config(target_widths=(3, 4, 2), widths=(5, 7))
  assert fit_target.hidden_widths(config) == [(5, 5), (7, 7)]
  config = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(2.0,))
  assert fit_target.hidden_widths(config) == [(24, 16)]


def test_student_widths_auto_take_the_widest_the_blocks_hold_except_for_the_oracle():
  config = fit_target.Config(target_widths=(4, 16, 16, 4), width_multipliers=(1.0, 2.0),
                             optimizers=("distill", "construct"), student_widths="auto")
  specs = fit_target.specs(config)
  # ratio 1: the target's own widths are the widest; ratio 2 (blocks 128, 512, 128): 23, 22
  assert [s.network_widths for s in specs] == [
      (4, 64, 16, 256, 16, 64, 4), (4, 64, 16, 256, 16, 64, 4),
      (4, 128, 23, 512, 22, 128, 4), (4, 128, 16, 512, 16, 128, 4)]
  explicit = dataclasses.replace(config, student_widths="20,12", optimizers=("adam",))
  assert [s.student_widths for s in fit_target.specs(explicit)] == [(4, 20, 12, 4)] * 2


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "experiments.fit_target", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


# Bad values, refused in one line before compute: through the CLI (a fresh process each, so a
# few representative ones) ...
CLI_BAD_FLAGS = [
    (["--target_widths=3,x"], "x"),                          # a malformed value (absl)
    (["--widths=5", "--width_multipliers=1"], "not both"),   # checked by the main
    (["--stop_after_chunks=0"], "stop_after_chunks"),         # run control flags
    (["--checkpoint_every=0"], "checkpoint_every"),
]
# ... and the rest through the same generated flags, in this process.
BAD_FLAGS = [
    (["--sparsity=1.5"], "1.5"),
    (["--optimizers=adam,foo"], "unknown optimizer 'foo'"),
    (["--devices=9"], "asked for 9 devices"),
    (["--widths=100000", "--seeds=4096"], "of memory"),
    (["--sparsity=0"], "0"),
    (["--steps=0"], "steps"),
    (["--seeds=0"], "seeds"),
    (["--norm=groupnorm"], "groupnorm"),
    (["--target_widths=" + ",".join(["2"] * 2000)], "depth is 1999, more than 64"),
    (["--target_widths=3,-4,2"], "-4"),
    (["--widths=0"], "0"),
    (["--optimizer=sgd"], "unknown optimizer 'sgd'"),
    (["--optimizer=lm", "--fit_size=0"], "fit_size"),
    (["--optimizer=distill", "--init=linear"], "init=standard"),
    (["--init=linear", "--norm=layernorm"], "init=linear"),
    (["--seed_chunk=-1"], "seed_chunk"),
    (["--seed=4294967296"], "below 2**32"),
    (["--student_widths=wide"], "student_widths must be empty, auto, or integers"),
    (["--student_widths=8,8"], "one narrow width between each two blocks: 1 for 2 blocks"),
]


@pytest.mark.parametrize("flags,needle", CLI_BAD_FLAGS)
def test_cli_bad_input_is_one_line_and_leaves_workdir_alone(tmp_path, flags, needle):
  results = tmp_path / "results.json"
  results.write_text('{"earlier": "run"}\n')
  proc = _cli(f"--workdir={tmp_path}", *flags)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert results.read_text() == '{"earlier": "run"}\n'
  assert sorted(os.listdir(tmp_path)) == ["results.json"]


@pytest.mark.parametrize("argv,needle", BAD_FLAGS)
def test_bad_flag_values_are_refused_before_compute(tmp_path, no_compute, argv, needle):
  values = flags.FlagValues()
  parsed = config_flags.ConfigFlags(fit_target.Config, {"default": fit_target.Config}, values)
  values(["prog", *argv])
  with pytest.raises(fit_target.validate.ConfigError, match=re.escape(needle)):
    fit_target.run(parsed.value(), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_cli_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  proc = _cli(f"--workdir={path}")
  assert proc.returncode != 0
  assert "not a directory" in proc.stderr and "Traceback" not in proc.stderr
  assert path.read_text() == "keep me"


RESUMABLE = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(0.5, 1.0), seeds=2,
                              steps=30, chunk_steps=15, batch_size=16, eval_size=64,
                              optimizers=("adam", "construct"))
OUTPUT_FILES = ("results.json", "metrics.csv", "curves.csv")


def _forbid_compute(monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("recomputed")
  monkeypatch.setattr(fit_target.fitspec, "fit_seeds", forbidden)


def test_stopped_and_resumed_run_writes_the_same_bytes(tmp_path):
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  fit_target.run(RESUMABLE, str(straight))
  # 2 fits x 2 chunks: stop in the middle of the second fit, then in the first chunk after it
  with pytest.raises(checkpoint.Preempted):
    fit_target.run(RESUMABLE, str(stopped), checkpoint.Control(stop_after_chunks=3))
  assert not (stopped / "results.json").exists()
  with pytest.raises(checkpoint.Preempted):
    fit_target.run(RESUMABLE, str(stopped), checkpoint.Control(stop_after_chunks=1))
  results = fit_target.run(RESUMABLE, str(stopped))
  assert "already_complete" not in results
  for name in OUTPUT_FILES:
    assert (stopped / name).read_bytes() == (straight / name).read_bytes(), name


def test_complete_workdir_is_reported_not_recomputed(tmp_path, monkeypatch):
  first = fit_target.run(RESUMABLE, str(tmp_path))
  before = {n: (tmp_path / n).read_bytes() for n in OUTPUT_FILES}
  _forbid_compute(monkeypatch)
  again = fit_target.run(RESUMABLE, str(tmp_path))
  assert again.pop("already_complete") is True and again == first
  assert {n: (tmp_path / n).read_bytes() for n in OUTPUT_FILES} == before
  with pytest.raises(AssertionError, match="recomputed"):   # --overwrite starts fresh
    fit_target.run(RESUMABLE, str(tmp_path), checkpoint.Control(overwrite=True))


def test_another_config_in_the_workdir_is_refused_untouched(tmp_path, monkeypatch):
  fit_target.run(RESUMABLE, str(tmp_path))
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  _forbid_compute(monkeypatch)
  other = dataclasses.replace(RESUMABLE, seeds=3)
  with pytest.raises(fit_target.validate.ConfigError, match=r"another config \(seeds: 2 -> 3\)"):
    fit_target.run(other, str(tmp_path))
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_cli_preempted_then_resumed_then_complete(tmp_path):
  # The main job's three methods, end to end through the CLI, stopped in adam's first fit.
  flags = (f"--workdir={tmp_path}", "--target_widths=3,4,2", "--width_multipliers=1",
           "--seeds=2", "--steps=20", "--chunk_steps=10", "--batch_size=16", "--eval_size=64",
           "--fit_size=32", "--restarts=2", "--student_steps=5")
  proc = _cli(*flags, "--stop_after_chunks=1")
  assert proc.returncode == 3, proc.stderr
  assert "preempted: stopped after 1 chunks" in proc.stderr and "Traceback" not in proc.stderr
  proc = _cli(*flags)
  assert proc.returncode == 0, proc.stderr
  assert "resumed after chunk 1/2" in proc.stderr and "chunk 2/2" in proc.stderr
  first = proc.stderr.split("[2/3]")[0]   # adam's fit, resumed: its first chunk is not re-run
  assert "chunk 1/2" not in first.replace("resumed after chunk 1/2", "")
  assert "rel_mse_med" in proc.stdout
  # The three methods side by side, each said to be black box or oracle.
  rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()
          if line.split()[:1] in (["adam"], ["distill"], ["construct"])}
  assert rows == {"adam": "black", "distill": "black", "construct": "weights"}
  assert "float32 floor" in proc.stdout and f"wrote into {tmp_path}: results.json" in proc.stdout
  # Plain progress lines (time, message): no absl prefix, no backend noise.
  assert all(re.match(r"\d\d:\d\d:\d\d  ", l) for l in proc.stderr.splitlines()), proc.stderr
  assert "Unable to initialize backend" not in proc.stderr
  assert json.loads((tmp_path / "results.json").read_text())["frozen_unchanged"] is True
  proc = _cli(*flags)
  assert proc.returncode == 0 and "already holds this complete run" in proc.stdout


@pytest.mark.parametrize("content", ['{"earlier": "run"}\n', "not json", "[]"])
def test_a_results_json_of_another_run_is_refused_untouched(tmp_path, content):
  (tmp_path / "results.json").write_text(content)
  with pytest.raises(fit_target.validate.ConfigError, match="not a complete run of this config"):
    fit_target.run(TINY, str(tmp_path))
  assert os.listdir(tmp_path) == ["results.json"]
  assert (tmp_path / "results.json").read_text() == content


def test_a_run_whose_seeds_all_diverge_reports_them_without_crashing(tmp_path, capfd):
  config = dataclasses.replace(TINY, optimizers=("adam",), width_multipliers=(1.0,),
                               learning_rate=1e12, schedule="constant")
  rows = fit_target.run(config, str(tmp_path))["rows"]
  # Every seed diverged; each reports the metric of its last parameters whose loss was finite.
  assert rows[0]["diverged"] == 2 and np.isfinite(rows[0]["rel_mse_median"])
  assert "Logging error" not in capfd.readouterr().err   # the progress lines' median loss is nan
  nan_row = dict(rows[0], rel_mse_median="nan", rel_mse_q25="nan", rel_mse_q75="inf")
  assert "nan" in fit_target.table([nan_row]) and "inf" in fit_target.table([nan_row])
