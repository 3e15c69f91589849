"""Optimizers: Adam per network with StyleGAN2's lazy-regularisation correction, freezing and
per-group learning-rate multipliers, both selected by regular expressions over parameter paths.

Freezing uses ``optax.multi_transform`` with ``optax.set_to_zero``: a frozen leaf gets a zero
update (it stays bit-identical) and the optimizer keeps no moments for it. ``optax.masked`` alone
would NOT freeze: leaves outside its mask receive the raw gradient as their update.
"""
from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import optax
from flax import traverse_util

from gantl_jax.errors import ConfigError
from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import cdc
from gantl_jax.models import stylegan2
from gantl_jax.resolutions import block_resolutions

FROZEN = "frozen"
FREEZE_PRESETS = ("none", "freezed", "freezeg", "mapping_only", "torgb_only", "affine", "noise")
# G's per-layer noise strengths (the `noise` preset).
NOISE_STRENGTHS = "/noise_strength$"


def as_patterns(value: Any) -> tuple[str, ...]:
  """Accepts a tuple/list of regexes or one comma-separated string (handy on the command line)."""
  if value is None:
    return ()
  if isinstance(value, str):
    return tuple(p.strip() for p in value.split(",") if p.strip())
  return tuple(value)


def parse_lr_mults(value: Any, what: str = "lr multipliers") -> tuple[tuple[str, float], ...]:
  """'regex=mult' entries (tuple, or comma-separated string) -> ((regex, mult), ...).

  Raises ConfigError, starting with ``what`` (the key, e.g. 'freeze.g_lr_mults'), for an entry
  without '=', an invalid regex, or a multiplier that is not a finite number >= 0.
  """
  out = []
  for entry in as_patterns(value):
    if "=" not in entry:
      raise ConfigError(f"{what}: entry {entry!r} must look like 'regex=multiplier'")
    pattern, text = entry.rsplit("=", 1)
    try:
      mult = float(text)
    except ValueError:
      raise ConfigError(f"{what}: entry {entry!r}: {text!r} is not a number") from None
    # A negative multiplier would ascend the loss; 0 freezes.
    if not (math.isfinite(mult) and mult >= 0):
      raise ConfigError(f"{what}: entry {entry!r}: the multiplier must be a finite number >= 0")
    _compile([pattern], what)
    out.append((pattern, mult))
  return tuple(out)


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern]:
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ConfigError(f"{what}: invalid regular expression {p!r} ({e}); give comma-separated "
                        f"Python regular expressions") from None
  return out


def check_freeze(freeze: ml_collections.ConfigDict, resolution: int) -> None:
  """Raises ConfigError naming the ``freeze.*`` key whose preset, regex or multiplier cannot work.

  ``config.resolve`` calls it, so a typo stops the run before any work is done. Whether each
  pattern matches a parameter is :func:`check_freeze_matches`.
  """
  preset_patterns(freeze, resolution)
  for net in ("g", "d"):
    _compile(as_patterns(freeze[net]), f"freeze.{net}")
    parse_lr_mults(freeze[f"{net}_lr_mults"], f"freeze.{net}_lr_mults")


def param_paths(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
  """{'g': G's parameter paths, 'd': D's} of the networks ``state.build_networks`` makes from
  ``config`` (adapter leaves and CDC's patch head included), from shapes alone: no weights are
  initialised and no XLA backend is started (a multi-process job joins after the config check)."""
  model = config.model.to_dict()
  # The convolution implementation changes no parameter, and 'auto' would ask for the backend.
  model["conv_impl"] = "xla"
  key = json.dumps(dict(model=model, patch_resolution=cdc.patch_resolution(config),
                        adapters=adapters.kind(config) != "none"), sort_keys=True, default=str)
  return _param_paths(key)


@functools.lru_cache(maxsize=8)
def _param_paths(key: str) -> dict[str, tuple[str, ...]]:
  """:func:`param_paths` of a JSON key (``resolve`` runs several times per launch)."""
  spec = json.loads(key)
  model = ml_collections.ConfigDict(spec["model"])
  g = stylegan2.generator_from_config(model)
  d = stylegan2.discriminator_from_config(model, patch_resolution=spec["patch_resolution"])
  rng = jax.eval_shape(lambda: jax.random.key(0))
  shapes = jax.eval_shape(lambda k: dict(g=adapters.init_g_variables(g, k, spec["adapters"]),
                                         d=stylegan2.init_discriminator(d, k)), rng)
  return {net: tuple(traverse_util.flatten_dict(shapes[net]["params"], sep="/")) for net in ("g", "d")}


def _natural(text: str) -> list:
  """Sort key in which 'b8' comes before 'b16'."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def layer_summary(paths: Iterable[str]) -> str:
  """The layers of parameter ``paths``, compactly: 'b16/{conv0,conv1,fromrgb,skip}, b4/{conv,fc,out}'.

  A layer is a path cut after the component that follows a block ('b16'), or after its second
  component where it has no block ('mapping/fc0')."""
  groups: dict[str, set] = {}
  for path in paths:
    parts = path.split("/")
    block = next((i for i, part in enumerate(parts[:-1]) if re.fullmatch(r"b\d+", part)), 0)
    parent, child = "/".join(parts[:block + 1]), parts[block + 1] if block + 1 < len(parts) else ""
    groups.setdefault(parent, set()).add(child)
  out = []
  for parent in sorted(groups, key=_natural):
    children = sorted(groups[parent], key=_natural)
    out.append(f"{parent}/{children[0]}" if len(children) == 1 else f"{parent}/{{{','.join(children)}}}")
  return ", ".join(out)


def check_freeze_matches(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``freeze.*`` key and the pattern of it that matches no
  parameter path of its network (a typo, or a block the model's resolution lacks, would otherwise
  silently train what it meant to freeze), with the layers it could have named.

  Each entry is checked alone: of ``freeze.preset``'s patterns, ``freeze.g`` / ``freeze.d`` and the
  regexes of ``freeze.g_lr_mults`` / ``freeze.d_lr_mults``. Call it after the other checks of
  ``config.resolve`` (it builds the model's parameter tree from ``config.model`` and ``config.fewshot``).
  """
  f = config.freeze
  resolution = config.model.resolution
  preset = dict(zip(("g", "d"), preset_patterns(f, resolution)))
  paths = param_paths(config)
  names = dict(g="G", d="D")
  for net in ("g", "d"):
    entries = ([(f"freeze.preset={f.preset!r}", p) for p in preset[net]]
               + [(f"freeze.{net}", p) for p in as_patterns(f[net])]
               + [(f"freeze.{net}_lr_mults", p) for p, _ in parse_lr_mults(f[f"{net}_lr_mults"])])
    for key, pattern in entries:
      regex = re.compile(pattern)
      if not any(regex.search(p) for p in paths[net]):
        raise ConfigError(
            f"{key}: the pattern {pattern!r} matches no parameter of {names[net]} at {resolution} px, "
            f"whose parameter paths start with {layer_summary(paths[net])}; fix or remove the pattern")


def _group_name(mult: float) -> str:
  """'lr=<mult>', exact: the optimizer reads the multiplier back from it. The short form ('lr=1',
  'lr=0.1') where it is exact, because the names are keys of the optimizer state in checkpoints."""
  short = f"{mult:g}"
  return f"lr={short if float(short) == mult else repr(float(mult))}"


def label_params(params: Any, freeze: Sequence[str] = (), lr_mults: Sequence[tuple[str, float]] = ()) -> Any:
  """Pytree of labels: 'frozen' where a freeze regex matches (re.search), else 'lr=<mult>' from
  the first matching multiplier entry (1.0 if none)."""
  freeze_re = _compile(freeze, "freeze pattern")
  mult_re = [(r, m) for r, (_, m) in zip(_compile([p for p, _ in lr_mults], "lr_mult pattern"), lr_mults)]
  flat = traverse_util.flatten_dict(params, sep="/")
  labels = {}
  for path in flat:
    if any(r.search(path) for r in freeze_re):
      labels[path] = FROZEN
      continue
    mult = next((m for r, m in mult_re if r.search(path)), 1.0)
    labels[path] = FROZEN if mult == 0 else _group_name(mult)
  return traverse_util.unflatten_dict(labels, sep="/")


def reg_intervals(train: ml_collections.ConfigDict) -> dict[str, int | None]:
  """The lazy regularisers' intervals in steps, None where one is off: G's path length ('g') and
  D's R1 ('d'). The optimizers' lazy correction and the step schedule both follow them."""
  return dict(g=train.pl_interval if train.pl_weight > 0 else None,
              d=train.r1_interval if train.r1_gamma > 0 else None)


def adam(learning_rate: float, beta1: float, beta2: float, eps: float, reg_interval: int | None) -> optax.GradientTransformation:
  """Adam with StyleGAN2's lazy-regularisation correction of the learning rate and betas.

  When a regulariser runs every ``reg_interval`` steps as an extra optimizer step, the main loss
  and the regulariser together take (interval+1)/interval steps per interval; scaling lr and the
  betas by interval/(interval+1) keeps the effective schedule of the non-lazy formulation.
  """
  if reg_interval:
    ratio = reg_interval / (reg_interval + 1)
    learning_rate, beta1, beta2 = learning_rate * ratio, beta1 ** ratio, beta2 ** ratio
  return optax.adam(learning_rate, b1=beta1, b2=beta2, eps=eps)


def make_optimizer(params: Any, opt: ml_collections.ConfigDict, *, freeze: Any = (), lr_mults: Any = (),
                   reg_interval: int | None = None) -> optax.GradientTransformation:
  """Adam over ``params`` with frozen leaves and per-group lr multipliers.

  ``opt`` holds ``lr``, ``beta1``, ``beta2``, ``eps``. ``freeze`` are regexes of frozen paths,
  ``lr_mults`` 'regex=mult' entries.
  """
  labels = label_params(params, as_patterns(freeze), parse_lr_mults(lr_mults))
  # Sorted: the groups' order is the order of their updates in the compiled step, which must not
  # depend on the process's string hashing, or the persistent compilation cache misses.
  groups = sorted(set(jax.tree.leaves(labels)))
  transforms = {}
  for group in groups:
    if group == FROZEN:
      transforms[group] = optax.set_to_zero()
    else:
      mult = float(group.split("=", 1)[1])
      transforms[group] = adam(opt.lr * mult, opt.beta1, opt.beta2, opt.eps, reg_interval)
  return optax.multi_transform(transforms, labels)


def frozen_paths(params: Any, freeze: Any = (), lr_mults: Any = ()) -> list[str]:
  """Paths that :func:`make_optimizer` would freeze."""
  labels = traverse_util.flatten_dict(label_params(params, as_patterns(freeze), parse_lr_mults(lr_mults)), sep="/")
  return sorted(p for p, l in labels.items() if l == FROZEN)


def preset_patterns(freeze: ml_collections.ConfigDict, resolution: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(G regexes, D regexes) of ``freeze.preset``, a name or comma-separated names of
  FREEZE_PRESETS, for a model of ``resolution`` px.

  none          fine-tune everything (TransferGAN)
  freezed       D's first ``freeze.d_blocks`` blocks from the image side: b{R}, b{R/2}, ... (FreezeD)
  freezeg       G's mapping network (``freeze.g_mapping``) and its ``freeze.g_blocks`` lowest-resolution
                synthesis blocks b4, b8, ... (FreezeG)
  mapping_only  train only G's mapping network (synthesis frozen)
  torgb_only    train only G's toRGB layers (mapping and all convolutions frozen)
  affine        train only G's style affines and toRGB layers (StyleDomain's "Affine+")
  noise         G's per-layer noise strengths stay the source's: fine-tuned on a few shots, G raises
                them (70-fold at 32 px in 4 kimg on 10 emoji) and draws per-pixel speckle

  The G-only presets leave D fully trainable and vice versa.
  """
  blocks = block_resolutions(resolution)
  g, d = [], []
  for name in as_patterns(freeze.preset):
    if name == "none":
      continue
    if name == "freezed":
      k = freeze.d_blocks
      if not 1 <= k <= len(blocks):
        raise ConfigError(f"freeze.d_blocks={k}: the {resolution} px discriminator has blocks "
                         f"b{resolution}..b4, so choose 1..{len(blocks)}")
      d += [f"^b{r}/" for r in blocks[::-1][:k]]
    elif name == "freezeg":
      k = freeze.g_blocks
      if not 0 <= k <= len(blocks) or (k == 0 and not freeze.g_mapping):
        raise ConfigError(f"freeze.g_blocks={k}, freeze.g_mapping={freeze.g_mapping}: freezeg needs "
                         f"0..{len(blocks)} synthesis blocks (b4, b8, ...) and/or the mapping network")
      g += (["^mapping/"] if freeze.g_mapping else []) + [f"^synthesis/b{r}/" for r in blocks[:k]]
    elif name == "mapping_only":
      g += ["^synthesis/"]
    elif name == "torgb_only":
      g += ["^mapping/", r"^synthesis/b\d+/(?!torgb/)"]
    elif name == "affine":
      g += ["^mapping/", r"^synthesis/(?!.*/(affine|torgb)/)"]
    elif name == "noise":
      g += [NOISE_STRENGTHS]
    else:
      raise ConfigError(f"freeze.preset: unknown preset {name!r}; choose from {FREEZE_PRESETS} "
                       f"(several may be joined with commas)")
  # Keep the order, drop duplicates (presets may overlap).
  return tuple(dict.fromkeys(g)), tuple(dict.fromkeys(d))


def freeze_patterns(freeze: ml_collections.ConfigDict, resolution: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(G regexes, D regexes) to freeze: the preset's, then the explicit ``freeze.g`` / ``freeze.d``."""
  g, d = preset_patterns(freeze, resolution)
  return g + as_patterns(freeze.g), d + as_patterns(freeze.d)
