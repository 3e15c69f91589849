"""Entry point: ``python launch.py --config configs/X.py --workdir DIR [--config.key=value ...]``.

Modes: ``train`` (default; resumes from DIR if it holds a checkpoint) and ``generate`` (writes a
grid of G-EMA samples from the latest checkpoint in DIR).
"""
import difflib
import os
import re
import sys

import ml_collections
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


def _fail(message: str) -> None:
  """Exits with ``error: <message>`` and status 2: a usage error, not a crash."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_arg(argv: list[str]) -> str | None:
  """The value of --config in ``argv`` (``--config=X`` or ``--config X``), if given."""
  for i, arg in enumerate(argv):
    m = re.match(r"^--?config(=|$)", arg)
    if m:
      return arg[m.end():] if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _key_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted key of ``config``, sections and leaves: 'train', 'train.batch_size', ..."""
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += _key_paths(value, f"{prefix}{key}.")
  return out


def _unknown_key(config: ml_collections.ConfigDict, key: str) -> str | None:
  """Why the dotted ``key`` names nothing in ``config`` (with the closest key), or None."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{'.'.join(parts[:i])} is a value ({node!r}), not a section"
    if part not in node:
      close = difflib.get_close_matches(key, _key_paths(config), n=1, cutoff=0.5)
      hint = f"did you mean {close[0]}?" if close else "configs/base.py documents every key"
      return f"the config has no key {'.'.join(parts[:i + 1])}; {hint}"
    node = node[part]
  return None


def _flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line naming the flag or config key at fault (a config file's own traceback is kept)."""
  text = str(error)
  if "Traceback" in text:
    return text
  if isinstance(error, OSError):  # the config file did not load; the last line says why
    return f"--config {_config_arg(argv)}: {text.splitlines()[-1].strip()}"
  text = " ".join(text.split())
  overrides = [a for a in argv[1:] if re.match(r"^--?(no)?config\.", a)]
  path = _config_arg(argv)
  if not overrides or not path:
    return text
  try:
    config = flags.FLAGS["config"].parser.parse(path)
  except Exception:  # pylint: disable=broad-except  # keep absl's message then
    return text
  if not isinstance(config, ml_collections.ConfigDict):
    return text
  for arg in overrides:
    name = arg.split("=", 1)[0].lstrip("-")
    key = name.split(".", 1)[1]
    why = _unknown_key(config, key)
    if why:
      return f"{arg.split('=', 1)[0]}: {why}"
    prefix = f"flag --{name}="
    if text.startswith(prefix):  # a value that does not parse as the key's type
      value, detail = text[len(prefix):].split(": ", 1)
      parent, _, leaf = key.rpartition(".")
      holder = config
      for part in filter(None, parent.split(".")):
        holder = holder[part]
      return (f"{arg.split('=', 1)[0]}={value}: {key} must be of type "
              f"{holder.get_type(leaf).__name__} ({detail})")
  return text


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag or config override is one line and exit status 2.

  ``app.run``'s own parser prints a traceback for an unknown config key (ml_collections raises
  AttributeError or KeyError, which absl does not catch) and exits 1 for other flag errors.
  """
  try:
    args = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    _fail(_flag_error_message(e, argv))
  config = _CONFIG.value
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    try:  # ml_collections defers a config file's load failure to its first use
      config.keys()
    except OSError as e:
      _fail(_flag_error_message(e, argv))
  return args


def _quiet_orbax() -> None:
  """Orbax logs every save phase at INFO; keep its warnings, drop the chatter."""
  import logging as std_logging
  std_logging.getLogger("absl").addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/orbax/" not in r.pathname)


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
  try:
    if config is not None:
      # Every value is checked before a backend starts or a coordinator is waited for; one device
      # is the weakest case (train resolves again with the real count), so no good config fails.
      config_lib.resolve(config)
      parallel.maybe_initialize_distributed(config.parallel)
    if _MODE.value == "train":
      train.train_and_evaluate(config, _WORKDIR.value)
    else:
      from gantl_jax import generate
      generate.generate_from_workdir(_WORKDIR.value, _SEEDS.value, _PSI.value)
  except (config_lib.ConfigError, DataError, FileNotFoundError) as e:
    _fail(str(e))
  except (train.TrainingError, checkpoint.CheckpointError) as e:
    # The run started and cannot go on (diverged, or its files cannot be written); what it
    # saved before is intact.
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
