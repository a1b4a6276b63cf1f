"""The accelerator check, run end to end on tiny sizes (`--config=quick`) on the CPU."""

import json

from experiments.accelerator_check import experiment as accelerator_check


def test_quick_check_runs_every_part_and_writes_the_summary(tmp_path):
  summary = accelerator_check.run(accelerator_check.Config(quick=True), str(tmp_path))
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  assert summary["quick"] and summary["within_budget"]
  assert set(summary["seconds"]) == {"bench_fit", "construction"}
  assert set(summary["bench_settings"]) == {"small"}   # quick: one tiny setting
  for setting in summary["bench_settings"].values():
    assert set(setting["methods"]) == {"auto", "hand_jax"} and setting["peak_tflops"] > 0
    assert all(m["seed_steps_per_s"] > 0 and m["tflops"] > 0 for m in setting["methods"].values())
    assert setting["vs_hand_jax"] > 0
  parts = [(b["part"], b["d"]) for b in summary["construction_blocks"]]
  assert parts == [("dense", 4), ("conv", 2)]
  for block in summary["construction_blocks"]:
    assert block["rel_error"] < 1e-3 and block["seconds"] > 0 and block["iterations"] > 0
  assert (tmp_path / "bench_fit" / "results.json").exists()
