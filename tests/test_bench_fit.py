"""Tiny end-to-end run of the bench_fit experiment (no timing asserts)."""

import json

import pytest

import jaxnorm
from jaxnorm.runs import bench_fit


def test_bench_runs_every_method_and_writes_ratios(tmp_path):
  config = bench_fit.Config(seeds=2, target_widths=(3, 4, 2), width=8, batch_size=8, steps=4,
                            chunk_steps=2)
  results = bench_fit.run(config, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert [r["method"] for r in on_disk["rows"]] == ["vmap", "loop", "lax_map"]
  assert set(on_disk["ratios"]) == {"vs_loop", "vs_lax_map"}
  assert all(r["seed_steps_per_s"] > 0 for r in on_disk["rows"])
  assert "vmap_speedup" in bench_fit.table(results)


def test_flops_per_step():
  s = bench_fit.spec(bench_fit.Config(target_widths=(8, 8, 8), width=128, batch_size=256))
  assert bench_fit.flops_per_step(s) == 3 * 2 * 256 * (4 * 8 * 128)


def test_bad_method():
  with pytest.raises(jaxnorm.ConfigError, match="pmap"):
    bench_fit.spec(bench_fit.Config(methods=("vmap", "pmap")))
