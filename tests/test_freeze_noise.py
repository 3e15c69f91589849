"""The 'noise' freeze preset keeps exactly G's per-layer noise strengths, alone or joined to FreezeD."""
import re

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.training import optim


def frozen(preset):
  c = tiny.get_config()
  c.freeze.preset = preset
  c = config_lib.resolve(c)
  paths = optim.param_paths(c)
  g, d = optim.freeze_patterns(c.freeze, c.model.resolution)
  match = lambda names, patterns: {p for p in names if any(re.search(x, p) for x in patterns)}
  return paths, match(paths["g"], g), match(paths["d"], d)


def test_noise_preset_freezes_every_noise_strength_of_g_and_nothing_else():
  paths, g, d = frozen("noise")
  expected = {p for p in paths["g"] if p.split("/")[-1] == "noise_strength"}
  assert len(expected) == 2 * len([p for p in paths["g"] if p.endswith("conv1/weight")]) - 1  # b4 has one conv
  assert g == expected and not d


def test_noise_joins_freezed():
  paths, g, d = frozen("freezed,noise")
  _, _, d_freezed = frozen("freezed")
  assert d == d_freezed and d
  assert all(p.endswith("/noise_strength") for p in g) and g == frozen("noise")[1]
