"""absl-flag mains; each parses flags into a library `Config` and calls `run`."""
