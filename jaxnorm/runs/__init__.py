"""Experiment entry points: each module holds a `Config` and `run(config, workdir)`.

The absl mains in `experiments/` only parse flags into a `Config` and call
`run`; everything a run makes goes into its workdir.
"""
