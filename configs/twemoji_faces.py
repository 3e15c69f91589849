"""Few-shot style transfer with known correspondence: 10 Twemoji faces (targets/twemoji_faces/shots),
measured against the other 108 (targets/twemoji_faces/held_out), from the shipped Noto source
(pretrained/noto32, trained by configs/noto_source.py), which holds the same emoji in Noto's
drawing (same file names). FreezeD + ADA, as the synthetic demo's transfer; configs/demo_emoji.py
is the recipe that keeps the samples apart.

    python launch.py --config configs/twemoji_faces.py --workdir runs/twemoji_faces
"""
import os

from configs import noto_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = os.path.join(REPO, "targets")


def get_config():
  c = noto_source.get_config()
  c.train.update(total_kimg=16.0, log_every=25, sample_every=250)
  c.data.update(folder=os.path.join(TARGETS, "twemoji_faces", "shots"))
  c.eval.update(every_kimg=4.0, metrics="swd,diversity,copies,correspondence", num_real=108,
                real_folder=os.path.join(TARGETS, "twemoji_faces", "held_out"))
  c.checkpoint.update(every_steps=250)
  c.transfer.update(source=os.path.join(REPO, "pretrained", "noto32"), on_mismatch="error")
  c.freeze.update(preset="freezed", d_blocks=2)
  c.augment.update(kind="ada")
  return c
