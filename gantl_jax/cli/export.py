"""Network checkpoints: one generator (G-EMA) as an Orbax checkpoint of its own, without optimizer,
progress or discriminator. ``generate``, ``interpolate``, ``blend`` and ``transfer.source`` read it
like a run. ``launch.py --mode export`` writes a run's G-EMA (an adapter run's merged); the blend
mode writes its blends with :func:`write_network`.

Layout: step 0 of an Orbax checkpoint directory, items ``g_ema`` ({'params', 'buffers'}) and
``meta`` (JSON: 'model' hyper-parameters, as a training checkpoint stores them, and 'origin': what
made it) -- the layout of the weight importer's output less ``g`` and ``d``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from gantl_jax.errors import ConfigError
from gantl_jax.training import checkpoint
from gantl_jax.training import runs


def check_outdir(outdir: str) -> str:
  """The absolute ``outdir`` if a network checkpoint may be written there (missing or empty);
  raises ConfigError naming ``--outdir`` otherwise, so nothing is ever overwritten."""
  outdir = os.path.abspath(os.path.expanduser(outdir))
  if os.path.exists(outdir) and (not os.path.isdir(outdir) or os.listdir(outdir)):
    raise ConfigError(f"--outdir {outdir} exists and is not an empty directory: choose a new "
                      f"--outdir for the network checkpoint")
  return outdir


def write_network(outdir: str, variables: Any, hparams: dict, origin: dict) -> str:
  """Writes generator ``variables`` as a network checkpoint in ``outdir`` (missing or empty);
  ``hparams``: the model hyper-parameters, ``origin``: JSON-able provenance. Returns the path."""
  outdir = check_outdir(outdir)
  # Host copies: Orbax compiles a program per shape to save device arrays.
  host = jax.tree.map(np.asarray, jax.device_get(variables))
  return checkpoint.save_networks(outdir, g_ema=host, meta={"model": dict(hparams), "origin": origin})


def export(path: str, outdir: str = "", step: Optional[int] = None) -> str:
  """Writes the G-EMA at ``path`` (a run, checkpoint or network checkpoint; an adapter run's
  merged, see ``runs.generator_variables``) as a network checkpoint in ``outdir`` (default:
  ``exported/`` in the run or checkpoint directory). Returns the checkpoint's path."""
  if outdir:
    check_outdir(outdir)  # before the read
  network = runs.load_network(path, step)
  out = write_network(outdir or os.path.join(network.home, "exported"), network.variables,
                      network.hparams, {"mode": "export", "from": network.where, "step": network.step})
  print(f"exported G-EMA of {network.where} to {out}")
  return out
