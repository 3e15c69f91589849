"""Speed benchmark config: the setting the official PyTorch StyleGAN2-ADA was timed at on CPU.

32 px, batch 16, 128 channels at every resolution, 2 mapping layers, fp32, R1 every 16 steps
(gamma 0.01), path length every 4 steps (batch shrink 2), style mixing 0.9, EMA, no augmentation.
Reference: stylegan2-ada-pytorch trains it at 24-30 images/s (median 28.2) on the 2-core dev box
(benchmarks/official_bench.py; docs/bench.md).
Run ``python -m gantl_jax.cli.bench --config configs/bench32.py``.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(resolution=32, z_dim=512, w_dim=512, mapping_layers=2,
                 channel_base=4096, channel_max=128, conv_clamp=None, mbstd_group_size=4)
  c.train.update(batch_size=16, r1_gamma=0.01, r1_interval=16, pl_weight=2.0, pl_interval=4,
                 pl_batch_shrink=2, style_mixing_prob=0.9)
  return c
