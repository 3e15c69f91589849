"""Speed benchmark config: ``bench32`` at 64 px (channel_max 128 at every resolution, batch 16).

Run ``python -m gantl_jax.cli.bench --config configs/bench64.py``.
"""
from configs import bench32


def get_config():
  c = bench32.get_config()
  c.model.update(resolution=64, channel_base=8192, channel_max=128)
  return c
