"""The demo on real images: the shipped Fashion-MNIST source (pretrained/fmnist32: t-shirts, trousers,
pullovers, dresses, coats, sandals, shirts and sneakers, never a boot) adapted to 10 ankle boots
(targets/fmnist_9/shots) and measured against 1,000 held-out boots.

    python launch.py --config configs/demo_fmnist.py --workdir runs/demo_fmnist
    python launch.py --mode compare --workdir runs/demo_fmnist     # comparison.png + results table

The recipe, from the transfer study (docs/transfer_study.md, Fashion-MNIST): FreezeD (D's two
highest-resolution blocks frozen) with G's noise strengths kept at the source's (fine-tuned on 10
shots, G raises them and its samples fill with speckle), no augmentation and no random x-flips
(every Fashion-MNIST shoe points left; with flips the boots are learnt facing both ways, and SWD
rates real boots, mirrored, farther from real boots than the source's shirts), stopped after 24 steps
(0.77 kimg): 10-shot FreezeD turns most samples into boots within 1 kimg and then loses variety.
"""
from configs import fmnist_boot


def get_config():
  c = fmnist_boot.get_config()
  c.data.update(xflip=False)
  c.augment.update(kind="none")
  c.freeze.update(preset="freezed,noise")
  c.train.update(total_kimg=0.75, sample_every=8)
  c.eval.update(every_kimg=0.25)
  c.checkpoint.update(every_steps=8)
  return c
