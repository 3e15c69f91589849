"""Speed benchmark config: the 256 px, batch 32 GPU setting.

configs/base.py with batch 32 and its StyleGAN2 settings spelled out so that the benchmark stays
put if the defaults move: channel_base 16384, channel_max 512, 2 mapping layers, mbstd groups of 4,
R1 every 16 steps (gamma by the 'auto' heuristic: 0.4096), path length every 4 (batch shrink 2),
style mixing 0.9, float32 (TF32 convolutions at XLA's default precision on NVIDIA GPUs), no
clamping. There the official stylegan2-ada-pytorch trains at 66.8 images/s in fp32, 120.5 in TF32
and 134.6 with its fp16 mixed precision (num_fp16_res 4, conv_clamp 256) on one H100; mixed
precision here: ``--config.model.compute_dtype=bfloat16 --config.model.num_low_precision_res=4``.
Run ``python -m gantl_jax.cli.bench --config configs/bench256.py``.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(resolution=256, z_dim=512, w_dim=512, mapping_layers=2, channel_base=16384,
                 channel_max=512, conv_clamp=None, mbstd_group_size=4, mbstd_num_channels=1,
                 compute_dtype="float32", num_low_precision_res=0)
  c.train.update(batch_size=32, r1_gamma=-1.0, r1_interval=16, pl_weight=2.0, pl_interval=4,
                 pl_batch_shrink=2, style_mixing_prob=0.9)
  return c
