"""Demo transfer source: a small 32 px StyleGAN2 pretrained on the synthetic 'photo' domain.

    python launch.py --config configs/demo_photo.py --workdir runs/demo_photo

The recipe of the shipped source checkpoint (pretrained/photo32); README, "The demo", says how
long it takes. configs/demo_anime.py transfers from the shipped copy.
"""
from configs import base


def get_config():
  c = base.get_config()
  # Small channels and a short mapping network: the point is a quick, real source checkpoint.
  c.model.update(resolution=32, z_dim=64, w_dim=64, mapping_layers=2, channel_base=2048, channel_max=64)
  c.train.update(batch_size=32, total_kimg=128.0, log_every=50, sample_every=500, sample_grid=(8, 4))
  c.data.update(source="synthetic", domain="photo", num_images=5000)
  c.checkpoint.update(every_steps=500, max_to_keep=2)
  return c
