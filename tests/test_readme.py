"""The README's library snippet ('Using the steps from your own code') runs as written."""
import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_snippet() -> str:
  text = open(README).read()
  section = text[text.index("## Using the steps from your own code"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_library_snippet_runs():
  scope = {}
  exec(compile(readme_snippet(), "README.md", "exec"), scope)  # pylint: disable=exec-used
  state, metrics, images = scope["state"], scope["metrics"], scope["images"]
  assert int(state.step) == 8 and int(state.images_seen) == 64
  assert np.isfinite(float(metrics["g_loss"])) and np.isfinite(float(metrics["d_loss"]))
  assert images.shape == (4, 16, 16, 3) and np.all(np.isfinite(np.asarray(images)))
