"""Compiling once: JAX's persistent compilation cache, and the train step's variants compiled
ahead of the first step, with counts of what the cache served.

A GAN step compiles for tens of seconds (minutes on a CPU), once per ``steps.StepFlags`` value.
JAX's persistent cache (``jax_compilation_cache_dir``) keeps the compiled programs on disk, keyed
by the program, the backend and the XLA flags, so a later launch of the same config reads them
instead of compiling again.
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import os
from typing import Any, Callable, Optional

import jax
import ml_collections

from gantl_jax.training import steps

# JAX reads this environment variable into jax_compilation_cache_dir when it is imported.
CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
# Programs that compile faster than this are not worth a file (jax's default is 1 s, which would
# miss the tiny configs' step programs on a GPU); every program of a step or a sample grid is slower.
MIN_COMPILE_TIME_SECS = 0.1

_counts: collections.Counter = collections.Counter()
_listener_registered = False


def cache_dir(setting: str) -> Optional[str]:
  """The cache directory of the config value ``train.compile_cache_dir``: '' means off (None);
  'auto' means JAX's own ``$JAX_COMPILATION_CACHE_DIR`` if set, else
  ``$XDG_CACHE_HOME/gantl_jax/jax_cache`` (``~/.cache/gantl_jax/jax_cache``); anything else is
  the directory itself."""
  if setting == "":
    return None
  if setting == "auto":
    if os.environ.get(CACHE_ENV):
      return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gantl_jax", "jax_cache")
  return os.path.abspath(os.path.expanduser(setting))


def enable_cache(setting: str) -> Optional[str]:
  """Points JAX's persistent compilation cache at ``cache_dir(setting)`` (None turns it off) and
  starts counting its hits; returns the directory. JAX reads the setting at the first compilation
  of the process, so call this before anything compiles."""
  directory = cache_dir(setting)
  _listen()
  jax.config.update("jax_compilation_cache_dir", directory)
  if directory is not None and MIN_COMPILE_TIME_ENV not in os.environ:  # the user's value wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
  return directory


def _listen() -> None:
  """Registers (once per process) a listener on JAX's compilation-cache events."""
  global _listener_registered
  if not _listener_registered:
    jax.monitoring.register_event_listener(_count_event)
    _listener_registered = True


def _count_event(event: str, **kwargs: Any) -> None:
  del kwargs
  if event == "/jax/compilation_cache/cache_hits":
    _counts["hits"] += 1
  elif event == "/jax/compilation_cache/cache_misses":  # JAX records it when it writes an entry
    _counts["writes"] += 1


def cache_counts() -> dict[str, int]:
  """Programs this process read from the persistent cache ('hits') and wrote to it ('writes')
  since ``enable_cache`` was first called."""
  return {"hits": _counts["hits"], "writes": _counts["writes"]}


def step_variants(config: ml_collections.ConfigDict, start: int, stop: int) -> dict[steps.StepFlags, int]:
  """Each distinct program that steps ``start .. stop-1`` of the run of ``config`` run (its
  ``steps.program_key``: the ``StepFlags``, or with merged programs the static ones), with the
  first step that runs it. The schedule repeats itself, so one period is enough to look at."""
  merged = steps.merged_variants(config.train)
  out: dict[steps.StepFlags, int] = {}
  for i in range(start, min(stop, start + steps.schedule_period(config))):
    out.setdefault(steps.program_key(steps.schedule(i, config), merged), i)
  return out


def variant_name(flags: steps.StepFlags) -> str:
  """'main', 'g_reg', 'g_reg+d_reg': which lazy phases the variant runs besides the main ones;
  'merged' (or 'anchor+merged') for a merged program, whose lazy regularisers run by lax.cond."""
  parts = [name for name, on in flags._asdict().items() if on]
  if None in flags:
    parts.append("merged")
  return "+".join(parts) or "main"


def compile_step_variants(step_fn: Callable, step_indices: list[int], state: Any, batch: Any,
                          frozen: Any = None) -> None:
  """Compiles, ahead of time, the program of ``step_fn`` (``parallel.make_step``) for each step
  index, on the arguments of a real step (nothing is run or donated). JAX keeps each compiled
  program, so the steps then run without compiling."""
  for i in step_indices:
    step_fn.lower(state, batch, i, frozen).compile()
  release_free_heap()


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
  """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
  name = ctypes.util.find_library("c")
  try:
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
  except OSError:
    return None


def release_free_heap() -> bool:
  """Hands the host heap's free pages back to the OS (glibc ``malloc_trim(0)``); returns whether
  it could. XLA frees most of what compiling a program allocated, but glibc keeps the freed
  pages, scattered among live ones, mapped to the process: after compiling bench32's step, 1.0 of
  1.8 GB of RSS was such pages (docs/bench.md, "Host memory"). Called after every compile of the
  train step, before the steps allocate their own buffers."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True
