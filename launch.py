"""Entry point: ``python launch.py --config configs/X.py --workdir DIR [--config.key=value ...]``.

Modes: ``train`` (default; resumes from DIR if it holds a checkpoint) and ``generate`` (writes a
grid of G-EMA samples from the latest checkpoint in DIR).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Config files import `configs.*`; make that work when launched from any directory.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, samples, metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "generate"], "What to do.")
_SEEDS = flags.DEFINE_string("seeds", "0-15", "generate: latent seeds, e.g. '0-15' or '1,5,9'.")
_PSI = flags.DEFINE_float("truncation_psi", 1.0, "generate: truncation psi.")
flags.mark_flags_as_required(["workdir"])


def _quiet_orbax() -> None:
  """Orbax logs every save phase at INFO: keep its warnings, drop the chatter. A failed
  asynchronous save makes Orbax's threads and asyncio log hundreds of lines of traces for one
  I/O error; the loop reports that error itself in one line (checkpoint.CheckpointError)."""
  import logging as std_logging
  std_logging.getLogger("absl").addFilter(
      lambda r: "/orbax/" not in r.pathname or std_logging.WARNING <= r.levelno < std_logging.ERROR)
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


def main(argv):
  del argv
  _quiet_orbax()
  from gantl_jax import checkpoint
  from gantl_jax import config as config_lib
  from gantl_jax import parallel
  from gantl_jax import train
  from gantl_jax.data import DataError
  config = _CONFIG.value
  if config is None and _MODE.value == "train":
    raise app.UsageError("--config is required to train (e.g. --config configs/demo_photo.py)")
  if config is not None:
    parallel.maybe_initialize_distributed(config.parallel)
  try:
    if _MODE.value == "train":
      train.train_and_evaluate(config, _WORKDIR.value)
    else:
      from gantl_jax import generate
      generate.generate_from_workdir(_WORKDIR.value, _SEEDS.value, _PSI.value)
  except (config_lib.ConfigError, DataError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (train.TrainingError, checkpoint.CheckpointError) as e:
    # The run started and cannot go on (diverged, or its files cannot be written); what it
    # saved before is intact.
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
