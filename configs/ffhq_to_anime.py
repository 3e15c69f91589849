"""The real job: StyleGAN2 FFHQ (256 or 1024 px, imported) -> a folder of anime faces at 256 px, FreezeD.

    python -m gantl_jax.cli.import_stylegan2 stylegan2-ffhq-config-f.pkl pretrained/ffhq
    python launch.py --config configs/ffhq_to_anime.py --workdir runs/ffhq_to_anime \\
        --config.transfer.source=pretrained/ffhq --config.data.folder=/data/anime_faces

Both paths are required: without them (or if they do not exist) the run stops at once and says
what to provide. The model section is StyleGAN2 config F (channel_base 32768, 8 mapping layers),
which fits the official FFHQ networks and rosinality's 256 px FFHQ checkpoint; if the importer's
source differs, the transfer names the ``--config.model.*`` flag to set. A 1024 px source gives
its b4..b256 blocks to the 256 px target; D's new b256/fromrgb starts at init (on_mismatch='init'),
as transfer_report.json lists.
"""
from ml_collections import config_dict

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(resolution=256, z_dim=512, w_dim=512, mapping_layers=8, mapping_lr_mul=0.01,
                 channel_base=32768, channel_max=512)
  c.train.update(batch_size=32, total_kimg=500, log_every=100, sample_every=1000)
  c.data.update(source="folder", folder=config_dict.placeholder(str), n_shot=0, mirror_dataset=True)
  c.checkpoint.update(every_steps=1000, max_to_keep=3)
  c.transfer.update(source=config_dict.placeholder(str), g_from="g_ema", g_ema_from="g_ema",
                    d_from="d", on_mismatch="init")
  # FreezeD: D's three highest-resolution blocks (b256, b128, b64) keep FFHQ's features.
  c.freeze.update(preset="freezed", d_blocks=3)
  return c
