"""Demo transfer source: a small 32 px StyleGAN2 pretrained on the synthetic 'photo' domain.

    python launch.py --config configs/demo_photo.py --workdir runs/demo_photo

A few minutes on a 2-core CPU. Its checkpoints (runs/demo_photo/checkpoints) are the default
transfer source of configs/demo_anime.py.
"""
from configs import base


def get_config():
  c = base.get_config()
  # Small channels and a short mapping network: the point is a quick, real source checkpoint.
  c.model.update(resolution=32, z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=64)
  c.train.update(batch_size=16, total_kimg=6.4, log_every=20, sample_every=100, sample_grid=(8, 4),
                 r1_interval=16, pl_interval=4)
  c.data.update(source="synthetic", domain="photo", num_images=1000)
  c.checkpoint.update(every_steps=100, max_to_keep=2)
  return c
