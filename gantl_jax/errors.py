"""The package's error classes, in one leaf module that imports nothing from the package.

Each names the file, key or parameter path at fault and says what to do; ``launch.py`` turns
them into one line. The weight importer's own errors (ConversionError, OutputError, UsageError)
stay in ``gantl_jax/cli/import_stylegan2.py``: only that command raises and catches them.
"""
import pickle


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and says what to set."""


class TransferError(ConfigError):
  """The transfer source cannot be used with this config; the message says what to change."""


class DataError(ValueError):
  """Bad data input: the message names the file, folder or `data.*` key at fault."""


class EmojiError(ValueError):
  """A package, font or option the tool cannot use; the message says what to install or pass."""


class TrainingError(RuntimeError):
  """The run cannot go on (diverged, cannot write its files); the message says where and why."""


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or read; the message names the directory and the cause."""


class NonFiniteStateError(CheckpointError):
  """The checkpoint save refused a state that holds a NaN or an infinity (a diverged run)."""


class LogError(RuntimeError):
  """A log line could not be written (a full disk, say); the file still holds whole lines."""


class InceptionWeightsError(ValueError):
  """The weight file is not one of the accepted Inception files (unreadable, wrong tensors)."""


class LPIPSWeightsError(ValueError):
  """The weight files do not hold LPIPS-VGG's tensors (unreadable, missing, wrong shapes)."""


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle asks for something outside the allow-list (code, a class)."""


class SourceFormatError(ValueError):
  """The file is not a readable pickle / torch file (truncated, corrupt...)."""
