"""What every experiment main shares: multi-host start-up, run control flags, one-line errors.

The flags defined here (`--checkpoint_every`, `--stop_after_chunks`,
`--overwrite`, `--distributed` and its addresses, `--cpu_devices`) exist in every
experiment.
"""

import logging as std_logging
import os
import signal
import sys
from typing import Callable

import jax
from absl import app
from absl import flags
from absl import logging

from jaxnorm import checkpoint
from jaxnorm import sharding
from jaxnorm import validate

CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 1, "Save an Orbax checkpoint into --workdir every this many chunks of "
    "work (and after every finished unit); re-running the same command resumes from it.")
STOP_AFTER_CHUNKS = flags.DEFINE_integer(
    "stop_after_chunks", None, "Simulate a preemption: save and stop (exit code 3) after this "
    "many chunks of work.")
OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Discard the run --workdir holds (complete or not) and start fresh.")
DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", False, "Multi-host job: call jax.distributed.initialize() first (the cluster "
    "is detected on TPU, Slurm and Open MPI; else give the three flags below).")
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "host:port of process 0 (--distributed).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (--distributed).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")
CPU_DEVICES = flags.DEFINE_string(
    "cpu_devices", None, "Split the CPU into this many JAX devices ('auto': one per core), so "
    "that the seeds' shards run side by side (jaxnorm.set_cpu_devices); default: JAX's own "
    "(one CPU device, or the count XLA_FLAGS forces). GPUs and TPUs are unaffected.")

PREEMPTED_EXIT = 3     # stopped after saving (--stop_after_chunks): re-run to resume
IO_ERROR_EXIT = 4      # a write failed (e.g. the disk is full): free space, re-run to resume
INTERRUPTED_EXIT = 130   # Ctrl-C (128 + SIGINT), or
TERMINATED_EXIT = 143    # SIGTERM (128 + SIGTERM): stopped at a chunk boundary, after saving


HELP_FLAGS = ("--help", "--helpshort", "-h", "-?")
SIGNAL_EXITS = {signal.SIGINT: INTERRUPTED_EXIT, signal.SIGTERM: TERMINATED_EXIT}
_SIGNALLED: list[int] = []


def _on_signal(signum, frame):
  """First Ctrl-C / SIGTERM: stop at the next chunk boundary, after its checkpoint; the second
  one: stop at once (the last checkpoint on disk is kept)."""
  del frame
  if _SIGNALLED:
    os.write(2, b"stopped at once; the last checkpoint on disk is kept\n")
    os._exit(SIGNAL_EXITS[_SIGNALLED[0]])  # pylint: disable=protected-access
  _SIGNALLED.append(signum)
  what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
  checkpoint.request_stop(what)
  os.write(2, f"{what}: stopping after the current chunk, once it is saved (again to stop at "
              f"once)\n".encode())


def run_app(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, except that `--help`/`--helpshort` print this experiment's usage
  (its docstring, its own flags and the run-control flags every experiment shares) and exit 0
  (absl's own short help lists the main module's flags only and exits 1; `--helpfull` is absl's).
  """
  if any(a in HELP_FLAGS for a in sys.argv[1:]):
    main_module = sys.modules["__main__"]
    print((main_module.__doc__ or "").strip() + "\n")
    by_module = flags.FLAGS.flags_by_module_dict()
    main_key = next((k for k in by_module if k in ("__main__", sys.argv[0])
                     or k.endswith(os.path.basename(sys.argv[0]).removesuffix(".py"))), None)
    sections = (("flags", main_key), ("hyperparameters (override the named --config)",
                                      "experiments.config_flags"),
                ("run control (every experiment)", __name__))
    for title, key in sections:
      if key in by_module:
        print(f"{title}:\n{flags.FLAGS.module_help(key).split(chr(10), 1)[1]}\n")
    sys.exit(0)
  for signum in SIGNAL_EXITS:
    signal.signal(signum, _on_signal)
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad command line (unknown flag, bad value, missing required
  flag, stray argument) is one line and exit code 2, as for every other bad input."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  if len(rest) > 1:
    fail(f"unexpected arguments: {' '.join(rest[1:])} (flags are written --name=value)")
  return rest


def _not_noise(record) -> bool:
  """Drops Orbax's INFO lines and the tracebacks its threads log when a write fails (the
  failure reaches the run as an exception, reported in one line), asyncio's complaints about
  Orbax tasks whose failure was already reported, and JAX's INFO notes about accelerator
  plugins it did not find."""
  if "/orbax/" in record.pathname:
    return std_logging.WARNING <= record.levelno < std_logging.ERROR and not record.exc_info
  if record.name == "asyncio":
    return "orbax" not in record.getMessage() and "orbax" not in str(record.exc_info)
  if record.levelno >= std_logging.WARNING:
    return True
  return not ("xla_bridge" in record.pathname and "Unable to initialize backend" in
              record.getMessage())


class _Plain(std_logging.Formatter):
  """`12:03:04  message` (warnings and errors say so), instead of absl's `I1203 12:03:04.123456
  140... file.py:123]` prefix: progress lines a person reads."""

  def __init__(self):
    super().__init__("%(asctime)s  %(message)s", "%H:%M:%S")

  def format(self, record):
    line = super().format(record)
    if record.levelno >= std_logging.WARNING:
      stamp, message = line.split("  ", 1)
      line = f"{stamp}  {record.levelname.lower()}: {message}"
    return line


def _quiet_unraisable(unraisable) -> None:
  """Drops "Event loop is closed" from reads still in flight when Orbax gave up on a damaged
  checkpoint (its restore already failed, and was reported); passes on everything else."""
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def start() -> None:
  """Splits the CPU into devices and joins the multi-host job if asked, then logs processes and
  devices (first thing in main, before any JAX computation).

  Log lines are plain (`time  message`); Orbax's own INFO lines (a dozen per
  checkpoint) and JAX's note on each accelerator backend it could not load are
  dropped, as are the "Event loop is closed" complaints of reads Orbax left in
  flight when it gave up on a damaged checkpoint.
  """
  sys.unraisablehook = _quiet_unraisable
  logging.get_absl_handler().setFormatter(_Plain())
  logging.get_absl_logger().addFilter(_not_noise)
  for name in ("jax._src.xla_bridge", "asyncio"):
    std_logging.getLogger(name).addFilter(_not_noise)
  if CPU_DEVICES.value is not None:
    run_or_exit(lambda: sharding.set_cpu_devices(_cpu_count(CPU_DEVICES.value)))
  if DISTRIBUTED.value:
    try:
      jax.distributed.initialize(coordinator_address=COORDINATOR.value,
                                 num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value)
    except (ValueError, RuntimeError) as e:
      fail(f"--distributed: could not join the job: {str(e).splitlines()[0]}")
  logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("global devices: %d (%s)", jax.device_count(), jax.default_backend())


def _cpu_count(value: str):
  """`--cpu_devices`: None for 'auto' (one per core), else the positive count it gives."""
  if value.strip().lower() == "auto":
    return None
  try:
    count = int(value)
  except ValueError:
    count = 0
  if count < 1:
    raise validate.ConfigError(f"--cpu_devices must be 'auto' or a positive count, got {value!r}")
  return count


def control() -> checkpoint.Control:
  """The run control the flags ask for (validated)."""
  return run_or_exit(lambda: checkpoint.check_control(checkpoint.Control(
      every_chunks=CHECKPOINT_EVERY.value, stop_after_chunks=STOP_AFTER_CHUNKS.value,
      overwrite=OVERWRITE.value)))


def fail(message: str) -> None:
  """Prints `error: message` as one line on stderr and exits with code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run_or_exit(fn: Callable[[], object]) -> object:
  """Calls `fn`, turning the ways a run ends early into one line and an exit code.

  A bad-input `ConfigError` exits with 2; a (simulated) preemption exits with 3
  after the checkpoint is saved; a failed write (`OSError`, e.g. a full disk)
  with 4; Ctrl-C with 130 and SIGTERM with 143, after the run has closed its
  checkpoints: a signal only asks the run to stop at its next chunk boundary,
  after saving (`checkpoint.request_stop`); a second signal stops at once.
  """
  try:
    return fn()
  except validate.ConfigError as e:
    fail(str(e))
  except checkpoint.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(SIGNAL_EXITS[_SIGNALLED[0]] if _SIGNALLED else PREEMPTED_EXIT)
  except OSError as e:
    where = f" while writing {e.filename}" if e.filename else ""
    print(f"error: {e.strerror or e}{where}; nothing complete was damaged: free the space and "
          f"re-run the same command to resume", file=sys.stderr)
    sys.exit(IO_ERROR_EXIT)


def is_writer() -> bool:
  """Only JAX process 0 writes files and prints results (every process computes)."""
  return jax.process_index() == 0


def report_complete(results: dict, workdir: str) -> None:
  """Says so when the workdir already held this complete run (nothing was recomputed)."""
  if results.get("already_complete"):
    print(f"{workdir} already holds this complete run; showing its results "
          f"(--overwrite starts fresh)")


def report_written(workdir: str, names, devices: int) -> None:
  """The last line of a run: where its outputs are (the ones it wrote, of `names`)."""
  names = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  print(f"seeds spread over {devices} device(s); wrote into {workdir}: {', '.join(names)}")
