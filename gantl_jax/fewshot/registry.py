"""The few-shot and data-efficiency methods the train step composes, each through one interface.

A :class:`Method` says what a method adds to the step of ``steps.py``: the state extras it keeps,
the transfer-source networks it reads from ``frozen``, its static step flags, the latents it
draws, whether D judges patches, the terms it adds to G main's loss, what D sees of an image, and
what it updates after the step. Each hook is optional; the step runs the hooks of the methods
that :func:`active` finds enabled by the config, in :data:`REGISTRY` order (which fixes the order
of their loss terms and metrics).

A method's hooks live in its own module (``cdc.py``, ``ewc.py``, ``augment.py``,
``adapters.py``); adding one means writing them there and one entry in :data:`REGISTRY`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections

from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import augment
from gantl_jax.fewshot import cdc
from gantl_jax.fewshot import ewc

Array = jax.Array
ConfigDict = ml_collections.ConfigDict


class StepContext(NamedTuple):
  """What a method's step hooks see of one train step. The first group is fixed when the step is
  built, the second is the step's own (``state``, ``key`` and ``frozen`` traced; ``flags`` and ``n``
  static), the third is what the methods chose for this step (static)."""
  config: ConfigDict        # resolved
  nets: Any                 # state.Networks
  axis_name: Optional[str]  # pmap's axis, or None
  num_shards: int           # devices a jit step's batch is split over
  methods: tuple            # the enabled Methods, in REGISTRY order
  state: Any                # the GANState the step starts from
  key: Array                # this step's key: fold_in(state.key, state.step)
  flags: Any                # steps.StepFlags (static)
  frozen: Any               # source-network variables, or None
  n: int                    # examples in this device's (or the global) batch
  global_batch: int
  latents: Optional[Callable[[Array], Array]] = None  # z from examples' latent keys; None: the prior
  patch: bool = False       # D judges patches instead of whole images


class Method(NamedTuple):
  """One method's part in the train step; see the module docstring. Hooks left None add nothing."""
  name: str
  enabled: Callable[[ConfigDict], bool]
  # The state extras it keeps, with their initial values (ADA: p and its accumulators).
  extras: Optional[Callable[[ConfigDict], dict]] = None
  # {name in ``frozen``: transfer-source item} it reads (CDC, EWC: {'g': 'g_ema'}).
  frozen: Optional[Callable[[ConfigDict], dict[str, str]]] = None
  # Its static StepFlags fields as (name, config -> interval in steps, None: never). The names
  # are StepFlags fields whatever the config; each value compiles to its own program.
  flags: tuple[tuple[str, Callable[[ConfigDict], Optional[int]]], ...] = ()
  # ctx -> a function from the examples' latent keys [N] to z [N, z_dim] where the method draws
  # this step's latents (G main and D main; no style mixing, no w_avg tracking), else None.
  latents: Optional[Callable[[StepContext], Optional[Callable[[Array], Array]]]] = None
  # ctx -> whether D judges patches on this step (static).
  d_patch: Optional[Callable[[StepContext], bool]] = None
  # G's params -> the plain params the generator takes (adapters: merged kernels).
  g_weights: Optional[Callable[[Any], Any]] = None
  # (ctx, G variables) -> {metric name: (term added to G main's loss, value logged)}.
  g_terms: Optional[Callable[[StepContext, Any], dict[str, tuple[Array, Array]]]] = None
  # (ctx, images, one key per image) -> the images D sees.
  d_view: Optional[Callable[[StepContext, Array, Array], Array]] = None
  # (ctx, extras, metrics) -> (extras, more metrics): after the phases (ADA's controller).
  after_step: Optional[Callable[[StepContext, dict, dict], tuple[dict, dict]]] = None


REGISTRY: tuple[Method, ...] = (
    Method("cdc", cdc.cdc_enabled, frozen=cdc.frozen_networks, g_terms=cdc.cdc_terms),
    Method("cdc_anchors", cdc.anchors_enabled, flags=(("anchor", cdc.anchor_interval),),
           latents=cdc.anchor_latents, d_patch=cdc.patch_step),
    Method("ewc", ewc.ewc_enabled, frozen=ewc.frozen_networks, g_terms=ewc.ewc_terms),
    Method("ada", augment.ada_enabled, extras=augment.method_extras, d_view=augment.d_view,
           after_step=augment.after_step),
    Method("diffaug", augment.diffaug_enabled, d_view=augment.d_view),
    Method("adapters", adapters.enabled, g_weights=adapters.merge),
)


def active(config: ConfigDict) -> tuple[Method, ...]:
  """The methods ``config`` enables, in :data:`REGISTRY` order."""
  return tuple(m for m in REGISTRY if m.enabled(config))


def flag_names() -> tuple[str, ...]:
  """The StepFlags fields the registered methods declare, whatever the config."""
  return tuple(name for m in REGISTRY for name, _ in m.flags)


def flag_intervals(config: ConfigDict) -> dict[str, Optional[int]]:
  """Each method flag -> its interval in steps for ``config``, None where its method is off."""
  on = set(active(config))
  return {name: (interval(config) if m in on else None) for m in REGISTRY for name, interval in m.flags}


def _merged(config: ConfigDict, field: str) -> dict[str, Any]:
  """The dicts that the enabled methods' ``field`` hook returns for ``config``, merged in order."""
  out = {}
  for m in active(config):
    hook = getattr(m, field)
    if hook is not None:
      out.update(hook(config))
  return out


def frozen_networks(config: ConfigDict) -> dict[str, str]:
  """{name in ``frozen``: transfer-source item} that the enabled methods read."""
  return _merged(config, "frozen")


def initial_extras(config: ConfigDict) -> dict[str, Any]:
  """The state extras the enabled methods keep, with their initial values."""
  return _merged(config, "extras")
