"""Tiny end-to-end runs of the bench_fit experiment (no timing asserts), and the torch peer."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import jaxnorm
from jaxnorm import checkpoint
from jaxnorm import domain
from jaxnorm import fitspec
from experiments.bench_fit import experiment as bench_fit
from experiments.bench_fit import hand_jax
from experiments.bench_fit import torch_peer

# Both tiny settings have the same sizes, so that every method's programs compile once; one
# step per chunk, so that the loss curve holds every step's loss.
TINY = tuple(bench_fit.Setting(name, seeds=1, target_widths=(3, 4, 2), width=8, batch_size=16,
                               steps=3) for name in ("small", "large"))
RATIOS = {"vs_vmap", "vs_loop", "vs_lax_map", "vs_hand_jax", "vs_torch_compile",
          "vs_torch_compile_steps", "vs_torch_bmm", "vs_torch", "peak_fraction"}


def _tiny(**kw):
  return bench_fit.Config(**{**dict(small=TINY[0], large=TINY[1], chunk_steps=1, repeats=1,
                                    peak_size=64, bandwidth_megabytes=4), **kw})


def test_bench_end_to_end(tmp_path):
  pytest.importorskip("torch")
  # lax_map (a third compilation) is left to test_rows_ratios_and_goals and test_fit.
  results = bench_fit.run(_tiny(methods=("vmap", "loop", "torch")), str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert on_disk["devices"] == jax.device_count() and on_disk["torch_version"]
  assert on_disk["backend"] == jax.default_backend()
  assert on_disk["threads"]["torch_intra_op"] >= 1 and on_disk["torch_matmul_peak_gflops"] > 0
  assert list(on_disk["settings"]) == ["small", "large"]
  for res in on_disk["settings"].values():
    assert [r["method"] for r in res["rows"]] == ["vmap", "loop", "torch"]
    assert res["jaxnorm_method"] == "vmap" and res["matmul_peak_gflops"] > 0
    assert set(res["ratios"]) == RATIOS | {"vs_torch_matched_threads"}
    assert res["ratios"]["vs_lax_map"] is None
    assert all(res["ratios"][k] > 0 for k in ("vs_loop", "vs_torch", "peak_fraction"))
    assert all(r["seed_steps_per_s"] > 0 and r["gflops"] > 0 for r in res["rows"])
    assert all(0 < r["steps_seconds"] <= r["seconds"] for r in res["rows"])
    assert res["memory_bandwidth_gbs"] > 0 and res["bytes_per_seed_step"] > 0
    assert res["roofline"]["attainable_gflops"] <= res["matmul_peak_gflops"]
  assert set(on_disk["goals"]) == {"vs_torch_compile", "vs_lax_map", "peak_fraction"}
  assert "jaxnorm_speedup" in bench_fit.table(results, "large")


def test_without_torch_the_peer_is_skipped(tmp_path, monkeypatch):
  monkeypatch.setattr(torch_peer, "version", lambda: None)
  results = bench_fit.run(_tiny(methods=("vmap", "torch")), str(tmp_path))
  for res in results["settings"].values():
    assert [r["method"] for r in res["rows"]] == ["vmap"]
    assert res["ratios"]["vs_torch"] is None and res["ratios"]["peak_fraction"] > 0
  assert results["torch_version"] is None and results["goals"]["vs_torch_compile"]["met"] is None
  assert "torch_matmul_peak_gflops" not in results


def test_rows_ratios_and_goals(tmp_path, monkeypatch):
  """Every method and the chunked row, with stand-in timings (no compute)."""
  speed = {"auto": 1.0, "vmap": 2.0, "vmap_chunk": 1.0, "loop": 8.0, "lax_map": 4.0,
           "hand_jax": 1.5, "torch": 6.0, "torch_1t": 3.0, "torch_bmm": 5.0, "torch_compile": 1.25}
  steps_share = {m: 0.5 for m in speed} | {"torch_compile": 0.25}   # of each fit's time
  clock = [0.0]

  def fake_fit(method, s, seeds, seed_chunk, threads):
    del s, seed_chunk, threads
    clock[0] += speed[method] * seeds
    return steps_share[method] * speed[method] * seeds, "stand-in" if method == "auto" else None

  monkeypatch.setattr(bench_fit, "_fit_all", fake_fit)
  monkeypatch.setattr(bench_fit.time, "perf_counter", lambda: clock[0])
  monkeypatch.setattr(bench_fit.peak_lib, "matmul_peak_gflops", lambda n, repeats: 100.0)
  monkeypatch.setattr(bench_fit.peak_lib, "memory_bandwidth_gbs", lambda megabytes: 10.0)
  monkeypatch.setattr(torch_peer, "version", lambda: "stand-in")
  monkeypatch.setattr(torch_peer, "matmul_peak_gflops", lambda n, threads: 90.0)
  small = dataclasses.replace(TINY[0], seeds=4, seed_chunk=2)
  results = bench_fit.run(_tiny(small=small, repeats=2, methods=bench_fit.METHODS), str(tmp_path))
  small, large = results["settings"]["small"], results["settings"]["large"]
  assert [r["method"] for r in small["rows"]] == list(bench_fit.METHODS)
  assert small["jaxnorm_method"] == large["jaxnorm_method"] == "auto"
  assert small["auto_batching"] == "stand-in"
  flops = bench_fit.flops_per_seed(bench_fit.spec(_tiny(), TINY[0]))
  assert small["ratios"] == {"vs_vmap": 2.0, "vs_loop": 8.0, "vs_lax_map": 4.0,
                             "vs_hand_jax": 1.5,
                             "vs_torch_compile": 1.25, "vs_torch_bmm": 5.0,
                             "vs_torch_compile_steps": 0.625,   # compiled torch: 1/4 is steps
                             "vs_torch": 3.0, "chunk_gain": 2.0, "vs_torch_matched_threads": 6.0,
                             "peak_fraction": pytest.approx(flops / 1e9 / 100.0, rel=1e-3)}
  assert large["ratios"]["vs_loop"] == 8.0 and "chunk_gain" not in large["ratios"]
  assert large["ratios"]["vs_torch_compile"] == 1.25
  assert all(len(r["seconds_per_round"]) == 2 for r in small["rows"])
  steps = {r["method"]: r["steps_seconds"] for r in small["rows"]}
  assert steps["vmap"] == 0.5 * 2.0 * 4 and steps["torch_compile"] == 0.25 * 1.25 * 4
  roof = small["roofline"]
  intensity = bench_fit.flops_per_step(bench_fit.spec(_tiny(), TINY[0])) / small[
      "bytes_per_seed_step"]
  assert roof["intensity"] == pytest.approx(intensity, rel=1e-3) and roof["ridge"] == 10.0
  assert roof["attainable_gflops"] == pytest.approx(min(100.0, 10.0 * intensity), rel=1e-3)
  assert results["goals"]["vs_torch_compile"] == {
      "settings": ["small", "large"], "goal": 1.3, "value": 1.25,
      "per_setting": {"small": 1.25, "large": 1.25}, "met": False}
  assert results["goals"]["vs_lax_map"]["value"] == 4.0 and results["goals"]["vs_lax_map"]["met"]
  assert results["goals"]["peak_fraction"]["settings"] == ["large"]
  assert not results["goals"]["peak_fraction"]["met"]
  assert results["torch_matmul_peak_gflops"] == 90.0


def test_the_default_running_lax_map_meets_that_goal_by_identity():
  def setting(chosen, vs_lax_map):
    return {"jaxnorm_method": "auto", "auto_batching": chosen,
            "ratios": {"vs_lax_map": vs_lax_map, "vs_torch_compile": 1.0, "peak_fraction": 0.5}}
  goals = bench_fit._goals({"small": setting("vmap over chunks of 16", 1.2),
                            "large": setting("map", 0.96)})
  assert goals["vs_lax_map"]["per_setting"] == {"small": 1.2, "large": 1.0}
  assert goals["vs_lax_map"]["met"] and goals["vs_lax_map"]["same_program"] == ["large"]
  goals = bench_fit._goals({"small": setting("vmap", 0.9), "large": setting("map", 0.96)})
  assert goals["vs_lax_map"]["value"] == 0.9 and not goals["vs_lax_map"]["met"]


def test_gpu_preset_scales_seeds_and_drops_the_loop_and_torch(monkeypatch):
  config = bench_fit.Config(preset="gpu")
  assert [(s.name, s.seeds, s.seed_chunk) for s in config.selected()] == [
      ("small", 4096, None), ("large", 256, None)]
  assert bench_fit._methods(config, config.selected()[0], "stand-in", 2) == [
      "auto", "vmap", "lax_map", "hand_jax"]
  assert config.peak_n() == (2048 if jax.default_backend() == "cpu" else 8192)
  with pytest.raises(jaxnorm.ConfigError, match="preset"):
    bench_fit.check_config(bench_fit.Config(preset="tpu-pod"))


def test_flops():
  s = bench_fit.spec(bench_fit.Config(), bench_fit.SMALL)
  layer = 8 * 128
  assert bench_fit.flops_per_step(s) == 2 * 256 * (2 * 8 * 8 + 4 * layer + 3 * layer)
  assert bench_fit.flops_per_seed(s) == (200 * bench_fit.flops_per_step(s)
                                         + 2 * 1024 * (4 * layer + 2 * 2 * 8 * 8))


@pytest.mark.parametrize("kw, match", [
    (dict(methods=("vmap", "pmap")), "pmap"),
    (dict(methods=()), "at least one method"),
    (dict(methods=("torch",)), "must include auto or vmap"),
    (dict(repeats=0), "repeats"),
    (dict(norm="layernorm"), "torch peer needs norm=affine"),
    (dict(settings=("small", "small")), "names must differ"),
    (dict(settings=()), "at least one of small, large"),
    (dict(settings=("medium",)), "medium"),
    (dict(small=bench_fit.Setting("x", 0, (2, 2), 4, 4, 4)), "small seeds"),
    (dict(large=dataclasses.replace(bench_fit.LARGE, seed_chunk=-1)), "large seed_chunk"),
    (dict(torch_threads=-1), "torch_threads"),
])
def test_bad_config(kw, match):
  with pytest.raises(jaxnorm.ConfigError, match=match):
    bench_fit.check_config(bench_fit.Config(**kw))


def test_hand_written_jax_and_every_torch_peer_do_the_same_steps_as_jaxnorm():
  """Same start, weights, targets and input batches: the same losses and norms, step by step,
  for the hand-written JAX baseline and the three torch peers (vmap, bmm, compiled)."""
  spec = bench_fit.spec(_tiny(), TINY[0])
  seeds = (0, 1)
  # One seed at a time: the end-to-end test's one-seed programs, already compiled.
  per_seed = [fitspec.fit_seeds(spec, [i]) for i in seeds]
  params, targets, loss_curve, rel_mse = jax.tree.map(
      lambda *a: np.concatenate(a), *[(r.params, r.targets, r.loss_curve, r.rel_mse)
                                      for r in per_seed])
  n_layers = len(spec.network_widths) - 1
  arrays = {"kernels": [params[f"dense_{k}"]["kernel"] for k in range(n_layers)],
            "scales": [np.ones_like(params[f"norm_{k}"]["scale"]) for k in range(n_layers)],
            "biases": [np.zeros_like(params[f"norm_{k}"]["bias"]) for k in range(n_layers)],
            "targets": targets,
            "eval_x": np.stack([fitspec.heldout_inputs(spec, i) for i in seeds])}
  task = fitspec.problem(spec)[1]   # the data stream of seed i, as the task splits its key
  data_keys = [task.split_key(jax.random.fold_in(jax.random.key(spec.seed), i))["data"]
               for i in seeds]
  xs = np.stack([np.stack([domain.sample_inputs(jax.random.fold_in(k, t), spec.batch_size,
                                                spec.target_widths[0], spec.radius)
                           for k in data_keys]) for t in range(spec.steps)])   # fit_seeds' batches
  hand = hand_jax.fit(spec, len(seeds), arrays=arrays, inputs=xs)
  np.testing.assert_allclose(hand.loss_curve, loss_curve, rtol=1e-5)
  for k in range(n_layers):
    np.testing.assert_allclose(hand.norms["scales"][k], params[f"norm_{k}"]["scale"], atol=1e-5)
    np.testing.assert_allclose(hand.norms["biases"][k], params[f"norm_{k}"]["bias"], atol=1e-5)
  np.testing.assert_allclose(hand.rel_mse, rel_mse, rtol=1e-4)
  if torch_peer.version() is None:
    pytest.skip("torch is not installed: the torch peers are not compared")
  for kind in torch_peer.KINDS:
    peer = torch_peer.build(spec, len(seeds), threads=1, arrays=arrays)
    runner = peer if kind == "vmap" else torch_peer.Stacked(peer, kind)
    for t in range(spec.steps):
      np.testing.assert_allclose(runner.step(peer.torch.tensor(xs[t])).numpy(), loss_curve[:, t],
                                 rtol=1e-5, err_msg=kind)
    trained = runner.norms()
    for k in range(n_layers):
      for name in ("scale", "bias"):
        np.testing.assert_allclose(trained[f"norm.{k}.{name}"], params[f"norm_{k}"][name],
                                   atol=1e-5, err_msg=kind)
    np.testing.assert_allclose(runner.evaluate(), rel_mse, rtol=1e-4, err_msg=kind)


def test_torch_peer_fits():
  pytest.importorskip("torch")
  spec = fitspec.FitSpec(target_widths=(2, 2), hidden_widths=(32,), steps=60, chunk_steps=20,
                     batch_size=64, eval_size=128, learning_rate=0.05)
  result = torch_peer.fit(spec, 2, threads=1)
  assert result.loss_curve.shape == (2, 3) and result.threads == 1
  assert np.all(result.loss_curve[:, -1] < result.loss_curve[:, 0])
  assert np.all(np.isfinite(result.rel_mse))


def test_stopped_after_a_setting_resumes_then_reports_complete(tmp_path, monkeypatch):
  config = _tiny(methods=("vmap",))
  with pytest.raises(checkpoint.Preempted):
    bench_fit.run(config, str(tmp_path), checkpoint.Control(stop_after_chunks=1))
  first = json.loads(json.dumps(
      checkpoint.Checkpoints(str(tmp_path / "checkpoints")).meta["records"][0]))
  results = bench_fit.run(config, str(tmp_path))
  assert results["settings"]["small"] == first          # measured once, not again
  assert list(results["settings"]) == ["small", "large"]

  def forbidden(*args, **kwargs):
    raise AssertionError("re-measured")
  monkeypatch.setattr(bench_fit, "_time_setting", forbidden)
  again = bench_fit.run(config, str(tmp_path))
  assert again.pop("already_complete") is True and again == results
