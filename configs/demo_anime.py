"""The demo: the shipped photo source (pretrained/photo32) adapted to 32 synthetic 'anime' faces.

    python launch.py --config configs/demo_anime.py --workdir runs/demo_anime
    python launch.py --mode compare --workdir runs/demo_anime     # comparison.png + results table

FreezeD (D's two highest-resolution blocks keep the source's features) with ADA (StyleGAN2-ADA's
augmentation at the adaptive probability, 100 kimg to move p by 1 as the official code sets it
for transfer). The model section must equal the source's (it comes from configs/demo_photo.py);
transfer_report.json in the workdir says what was restored and frozen. To transfer from a source
of your own: --config.transfer.source=runs/demo_photo/checkpoints.
"""
import os

from configs import demo_photo

# The shipped source checkpoint, found from this file so the demo runs from any directory.
SHIPPED_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained", "photo32")


def get_config():
  c = demo_photo.get_config()
  c.train.update(total_kimg=16.0, log_every=25, sample_every=250)
  c.data.update(domain="anime", num_images=32)  # the few-shot target set
  c.checkpoint.update(every_steps=250)
  c.transfer.update(source=SHIPPED_SOURCE, on_mismatch="error")
  c.freeze.update(preset="freezed", d_blocks=2)
  c.augment.update(kind="ada")
  return c
