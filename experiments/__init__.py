"""The experiments: absl-flag mains; each parses its flags into its experiment's `Config` and
calls `run(config, workdir, control)`."""
