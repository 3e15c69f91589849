"""A tiny 16 px run for tests and smoke checks: seconds per step on a CPU."""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
  c.train.update(batch_size=8, total_kimg=0.08, log_every=5, sample_every=0, sample_grid=(4, 2),
                 r1_interval=4, pl_interval=4)
  c.data.update(source="synthetic", domain="anime", num_images=64, data_dir="/tmp/gantl_jax_tfds")
  c.checkpoint.update(every_steps=5, max_to_keep=2)
  return c
