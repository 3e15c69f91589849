"""Entry point: ``python launch.py --config configs/X.py --workdir DIR [--mode MODE] [--config.key=value ...]``.

Modes (``--mode``):
  train        (default) train, or resume from DIR if it holds a checkpoint
  generate     images of seeds and a grid (``--seeds``, ``--grid CxR``, ``--outdir``)
  interpolate  W-space interpolation between seeds: a strip PNG and an animated GIF (``--frames``)
  blend        Toonify-style layer swapping of DIR (blocks up to ``--blend_resolution``, mapping)
               with ``--blend_with`` (the blocks above; ``--blend_width`` for a smooth switch): a
               network checkpoint and a comparison grid
  export       DIR's G-EMA as a network checkpoint at ``--outdir``
  compare      for a transfer run: source | transferred | blend | target shots from the same seeds
               (DIR/comparison.png) and SWD of source and transfer against target images
  eval         metrics of a checkpoint's G-EMA, appended to DIR/eval.jsonl

Every mode but train needs no ``--config``; generate, interpolate, blend and export read DIR as a
run directory, a checkpoint directory or a network checkpoint (export, blend, the weight importer).
"""
import difflib
import os
import re
import sys
from typing import NoReturn

import ml_collections
from absl import app, flags
from ml_collections import config_flags

# Config files import `configs.*`; make that work when launched from any directory.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, samples, metrics. "
                                "generate/interpolate/blend/export: also a checkpoint or network checkpoint "
                                "directory.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "generate", "interpolate", "blend", "export", "compare", "eval"],
                          "What to do (see the module docstring).")
_SEEDS = flags.DEFINE_string("seeds", "0-15", "generate/interpolate/blend/compare: latent seeds, e.g. '0-15' "
                             "or '1,5,9' (interpolate: the path's seeds in order; compare: default 0-7).")
_PSI = flags.DEFINE_float("truncation_psi", 1.0, "generate/interpolate/blend: truncation psi.")
_STEP = flags.DEFINE_integer("step", -1, "The checkpoint step of --workdir to read (-1: the latest).")
_OUTDIR = flags.DEFINE_string("outdir", "", "generate/interpolate/blend/export/compare: where to write "
                              "(default: generated/, interpolated/, blend_r{R}_w{W}/, exported/ in the run "
                              "or checkpoint directory; compare: the run directory).")
_GRID = flags.DEFINE_string("grid", "", "generate: COLUMNSxROWS, e.g. '4x2': a grid of consecutive seeds "
                            "from the first of --seeds.")
_FRAMES = flags.DEFINE_integer("frames", 16, "interpolate: frames per pair of consecutive seeds.")
_BLEND_WITH = flags.DEFINE_string("blend_with", "", "blend: the generator whose blocks above "
                                  "--blend_resolution are taken (Toonify: the source, e.g. runs/demo_photo); "
                                  "--workdir gives the blocks up to it and the mapping network (the "
                                  "fine-tuned run).")
_BLEND_RES = flags.DEFINE_integer("blend_resolution", 0, "blend/compare: the last block resolution taken "
                                  "from --workdir (one of 4, 8, ..., the model's resolution; compare: "
                                  "default the one below the model resolution).")
_BLEND_WIDTH = flags.DEFINE_float("blend_width", 0.0, "blend: 0 = hard switch; > 0 = a sigmoid over "
                                  "log2 resolution of this width in octaves.")
_METRICS = flags.DEFINE_string("metrics", "", "eval: comma-separated metrics (default: the run's eval.metrics, else swd).")
_NUM_FAKE = flags.DEFINE_integer("num_fake", 0, "eval: generated images (0: the run's eval.num_fake).")
_REAL_FOLDER = flags.DEFINE_string("real_folder", "", "eval/compare: a folder of held-out target images "
                                   "to measure against (default: the run's eval.real_folder or held-out "
                                   "set, else its training images).")
_INCEPTION = flags.DEFINE_string("inception_weights", "", "eval: Inception weight file for kid/fid "
                                 "(default: the run's eval.inception_weights).")
_LABEL_FOLDER = flags.DEFINE_string("label_folder", "", "eval: a folder of labelled real images "
                                    "(<label>_*.png) for the class_share metric (default: the run's eval.label_folder).")
_TARGET_LABEL = flags.DEFINE_string("target_label", "", "eval: the label class_share counts (default: the "
                                    "run's eval.target_label).")
flags.mark_flags_as_required(["workdir"])
# The config keys that modes other than train read from --config (how to reach the devices and the
# compilation cache); every other key comes from the run's own config.json.
_KEYS_OF_EVERY_MODE = ("parallel.", "train.compile_cache_dir")
# absl's flags that print help and exit before main.
_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def _fail(message: str, status: int = 2) -> NoReturn:
  """Exits with ``error: <message>``; status 2 is a usage error (nothing was written), 1 a run
  that started and could not go on."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _config_arg(argv: list[str]) -> str | None:
  """The value of --config in ``argv`` (``--config=X`` or ``--config X``), if given."""
  for i, arg in enumerate(argv):
    m = re.match(r"^--?config(=|$)", arg)
    if m:
      return arg[m.end():] if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
  """(flag as written up to '=', dotted config key) of each ``--config.KEY[=VALUE]`` in ``argv``."""
  out = []
  for arg in argv[1:]:
    m = re.match(r"^(--?(?:no)?config\.([^=]+))", arg)
    if m:
      out.append((m.group(1), m.group(2)))
  return out


def _load_config(argv: list[str]) -> ml_collections.ConfigDict | None:
  """The config of ``--config`` without overrides, to explain a failed override; None if none."""
  path = _config_arg(argv)
  if not path:
    return None
  try:
    config = flags.FLAGS["config"].parser.parse(path)
  except Exception:  # pylint: disable=broad-except  # then absl's own message is all we have
    return None
  return config if isinstance(config, ml_collections.ConfigDict) else None


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
      hint = f"did you mean {close[0]}?" if close else "gantl_jax/defaults.py documents every key"
      return f"the config has no key {'.'.join(parts[:i + 1])}; {hint}"
    node = node[part]
  return None


def _unknown_override_message(argv: list[str]) -> str | None:
  """'--config.KEY: why' for the first override that names no key of the config, or None."""
  config = _load_config(argv)
  for flag, key in _overrides(argv) if config is not None else ():
    why = _unknown_key(config, key)
    if why:
      return f"{flag}: {why}"
  return None


def _flag_error_message(error: Exception, argv: list[str]) -> str:
  """absl's message on one line; for a value that does not parse, the key's type is added."""
  text = " ".join(str(error).split())
  config = _load_config(argv)
  for flag, key in _overrides(argv) if config is not None else ():
    prefix = f"flag {flag.replace('-noconfig.', '-config.')}="
    if text.startswith(prefix) and not _unknown_key(config, key):
      value, detail = text[len(prefix):].split(": ", 1)
      parent, _, leaf = key.rpartition(".")
      holder = config
      for part in filter(None, parent.split(".")):
        holder = holder[part]
      return f"{flag}={value}: {key} must be of type {holder.get_type(leaf).__name__} ({detail})"
  return text


def _config_load_message(error: OSError, argv: list[str]) -> str:
  """'--config PATH: why' from ml_collections' multi-line load error (its last line says why)."""
  return f"--config {_config_arg(argv)}: {str(error).splitlines()[-1].strip()}"


def _asks_for_help(argv: list[str]) -> bool:
  """Whether the command line has one of absl's help flags (``--help``, ``-?``, ``--helpfull``, ...)."""
  flag_args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  return any(arg.startswith("-") and arg.lstrip("-").split("=")[0] in _HELP_FLAGS for arg in flag_args)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag or config override is one line and exit status 2.

  ``app.run``'s own parser prints a traceback for an unknown config key (ml_collections raises
  AttributeError or KeyError, which absl does not catch) and exits 1 for other flag errors.
  """
  try:
    args = flags.FLAGS(argv)
  except SystemExit as e:
    # absl exits 1 after printing the help it was asked for; a help that was asked for is no error.
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)
    raise
  except (AttributeError, KeyError):
    message = _unknown_override_message(argv)
    if message is None:  # not an override's fault: a bug, shown whole
      raise
    _fail(message)
  except flags.Error as e:
    # A config file that raised keeps its traceback: it points at the line to fix.
    _fail(str(e) if "Traceback" in str(e) else _flag_error_message(e, argv))
  except OSError as e:  # the config file did not load, seen by an override
    _fail(_config_load_message(e, argv))
  if _MODE.value != "train":
    ignored = [flag for flag, key in _overrides(argv) if not key.startswith(_KEYS_OF_EVERY_MODE)]
    if ignored:
      _fail(f"{ignored[0]}: --mode {_MODE.value} reads the run's own config from --workdir, so this "
            f"override would be ignored; only {', '.join(k + '*' for k in _KEYS_OF_EVERY_MODE)} apply "
            f"here. Use the mode's own flags instead (--helpfull lists them; eval and compare "
            f"measure against held-out images given as --real_folder)")
  config = _CONFIG.value
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    try:  # ml_collections defers a config file's load failure to its first use
      config.keys()
    except OSError as e:
      _fail(_config_load_message(e, argv))
  return args


def _quiet_orbax() -> None:
  """Orbax logs every save phase at INFO: keep its warnings, drop the chatter. A failed
  asynchronous save makes Orbax's threads and asyncio log hundreds of lines of traces for one
  I/O error; the loop reports that error itself in one line (errors.CheckpointError). The
  warnings that a manager is read-only are dropped too: every checkpoint read opens one so."""
  import logging as std_logging
  read_only = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")
  std_logging.getLogger("absl").addFilter(
      lambda r: "/orbax/" not in r.pathname or (std_logging.WARNING <= r.levelno < std_logging.ERROR
                                                and not r.getMessage().startswith(read_only)))
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


# Library lines that look like errors at the top of every log but ask nothing of the user: JAX's
# probe for a TPU on a machine without one, tfds's advice to install OpenCV (PIL decodes the
# stored PNGs) and its note that each prepared dataset is a named configuration.
_LIBRARY_NOISE = {
    "jax._src.xla_bridge": ("Unable to initialize backend 'tpu'",),
    "absl": ("OpenCV is not installed", "Using custom data configuration"),
}


def _quiet_libraries() -> None:
  """Drops the library lines of ``_LIBRARY_NOISE`` and tfds's own prints around a dataset's
  preparation ("Downloading and preparing dataset Unknown size ..."): a local folder or a
  synthetic domain downloads nothing, and the data layer prints what it prepared and where."""
  import logging as std_logging
  for logger, prefixes in _LIBRARY_NOISE.items():
    std_logging.getLogger(logger).addFilter(lambda r, prefixes=prefixes: not r.getMessage().startswith(prefixes))
  from tensorflow_datasets.core import dataset_builder
  for method in ("_log_download_bytes", "_log_download_done"):
    if hasattr(dataset_builder.DatasetBuilder, method):
      setattr(dataset_builder.DatasetBuilder, method, lambda self: None)


def main(argv):
  del argv
  _quiet_orbax()
  _quiet_libraries()
  from gantl_jax import config as config_lib
  from gantl_jax import errors
  from gantl_jax.training import compilation
  from gantl_jax.training import loop
  from gantl_jax.training import parallel
  config = _CONFIG.value
  if config is None and _MODE.value == "train":
    raise app.UsageError("--config is required to train (e.g. --config configs/demo_photo.py)")
  compilation.enable_cache(config.train.compile_cache_dir if config is not None else "auto")
  try:
    if config is not None:
      # Every value is checked before a backend starts or a coordinator is waited for, but the
      # per-device batch: the device count is known only after that, where train resolves again.
      config_lib.resolve(config, num_devices=None)
      parallel.maybe_initialize_distributed(config.parallel)
    if _MODE.value == "train":
      loop.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "generate":
      from gantl_jax.cli import generate
      generate.generate(_WORKDIR.value, _SEEDS.value, _PSI.value, outdir=_OUTDIR.value,
                        grid=_GRID.value, step=_STEP.value)
    elif _MODE.value == "interpolate":
      from gantl_jax.cli import generate
      generate.interpolate(_WORKDIR.value, _SEEDS.value, frames=_FRAMES.value,
                           truncation_psi=_PSI.value, outdir=_OUTDIR.value, step=_STEP.value)
    elif _MODE.value == "blend":
      from gantl_jax.cli import blend
      if not _BLEND_WITH.value or not _BLEND_RES.value:
        raise errors.ConfigError("--mode blend needs --blend_with (the other generator) and "
                                 "--blend_resolution (the last block resolution from --workdir)")
      blend.blend(_WORKDIR.value, _BLEND_WITH.value, _BLEND_RES.value, _BLEND_WIDTH.value,
                  outdir=_OUTDIR.value, seeds=_SEEDS.value, truncation_psi=_PSI.value,
                  step=_STEP.value)
    elif _MODE.value == "export":
      from gantl_jax.cli import export
      export.export(_WORKDIR.value, _OUTDIR.value, step=_STEP.value)
    elif _MODE.value == "compare":
      from gantl_jax.cli import compare
      compare.compare(_WORKDIR.value, blend_resolution=_BLEND_RES.value,
                      seeds=_SEEDS.value if flags.FLAGS["seeds"].present else "0-7",
                      outdir=_OUTDIR.value, real_folder=_REAL_FOLDER.value)
    else:
      from gantl_jax.cli import evaluate
      evaluate.evaluate_workdir(_WORKDIR.value, step=_STEP.value, metrics=_METRICS.value,
                                num_fake=_NUM_FAKE.value, inception_weights=_INCEPTION.value,
                                real_folder=_REAL_FOLDER.value, label_folder=_LABEL_FOLDER.value,
                                target_label=_TARGET_LABEL.value)
  except (errors.ConfigError, errors.DataError, FileNotFoundError) as e:
    _fail(str(e))
  except (errors.TrainingError, errors.CheckpointError, errors.LogError) as e:
    # The run started and cannot go on (diverged, or its files cannot be written); what it
    # saved before is intact.
    _fail(str(e), status=1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
