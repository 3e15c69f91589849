"""The demo on real images: the shipped Noto emoji source (pretrained/noto32) adapted to 10 Twemoji
faces (targets/twemoji_faces/shots) and measured against the 108 held-out Twemoji faces.

    python launch.py --config configs/demo_emoji.py --workdir runs/demo_emoji
    python launch.py --mode compare --workdir runs/demo_emoji     # comparison.png + results table

The recipe that kept 10-shot samples apart in the transfer study (docs/transfer_study.md, arm
freezed_cdc_r1_nf): FreezeD with CDC (the source's pairwise structure kept by the
distance-consistency loss and the anchor-region patch discriminator, configs/fewshot_cdc.py), R1
at gamma 1 instead of the auto value for 32 px (0.0064), and G's noise strengths frozen at the
source's (fine-tuned on 10 shots, G raises them and draws per-pixel speckle), for 4 kimg. The
same emoji drawn by another vendor: every target shot has its Noto counterpart in the source's
training set.
"""
from configs import fewshot_cdc
from configs import twemoji_faces


def get_config():
  c = twemoji_faces.get_config()
  c.fewshot.update(fewshot_cdc.get_config().fewshot)
  c.augment.update(kind="none")
  c.freeze.update(preset="freezed,noise")
  c.train.update(total_kimg=4.0, r1_gamma=1.0, sample_every=125)
  c.eval.update(every_kimg=1.0)
  c.checkpoint.update(every_steps=125)
  return c
