"""The README's library snippet ('Using the steps from your own code') runs as written."""
import os
import re

import jax
import numpy as np

from gantl_jax.training import state as state_lib

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_snippet() -> str:
  text = open(README).read()
  section = text[text.index("## Using the steps from your own code"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_library_snippet_runs():
  """It trains: 8 steps on uniform noise (unseeded, as the snippet is written) leave the losses
  near their values at chance and move the weights by about Adam's steps. Measured over three
  runs: d_loss 1.22-1.25 (2 ln 2 = 1.39 at chance), g_loss 0.91-0.94; the largest weight change
  0.027 (G) and 0.025-0.026 (D); G-EMA 8e-4 from G; image std 0.83-0.99."""
  scope = {}
  exec(compile(readme_snippet(), "README.md", "exec"), scope)  # pylint: disable=exec-used
  state, metrics, images = scope["state"], scope["metrics"], scope["images"]
  assert int(state.step) == 8 and int(state.images_seen) == 64
  assert 1.0 < float(metrics["d_loss"]) < 1.5 and 0.6 < float(metrics["g_loss"]) < 1.3, metrics
  init = jax.jit(lambda: state_lib.init_state(scope["nets"], 0))()
  g_moved, d_moved = max_abs_diff(state.g.params, init.g.params), max_abs_diff(state.d.params, init.d.params)
  assert 0.01 < g_moved < 0.05 and 0.01 < d_moved < 0.05, (g_moved, d_moved)
  assert 0 < max_abs_diff(state.g_ema.params, state.g.params) < g_moved / 10
  images = np.asarray(images)
  assert images.shape == (4, 16, 16, 3) and np.all(np.isfinite(images)) and 0.3 < images.std() < 2
