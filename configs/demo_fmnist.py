"""The demo on real images: the shipped Fashion-MNIST source (pretrained/fmnist32: t-shirts, trousers,
pullovers, dresses, coats, sandals, shirts and sneakers, never a boot) adapted to 10 ankle boots
(targets/fmnist_9/shots) and measured against 1,000 held-out boots.

    python launch.py --config configs/demo_fmnist.py --workdir runs/demo_fmnist
    python launch.py --mode compare --workdir runs/demo_fmnist     # comparison.png + results table

FreezeD (D's two highest-resolution blocks frozen) with G's noise strengths kept at the source's
(fine-tuned on 10 shots, G raises them and its samples fill with speckle) and no augmentation,
stopped at 1 kimg: in the transfer study (docs/transfer_study.md, Fashion-MNIST) that is about
where 10-shot FreezeD has turned most samples into boots while they still vary as much as the
held-out boots do; trained on, they become all boots and lose variety.
"""
from configs import fmnist_boot


def get_config():
  c = fmnist_boot.get_config()
  c.augment.update(kind="none")
  c.freeze.update(preset="freezed,noise")
  c.train.update(total_kimg=1.0, sample_every=16)
  c.eval.update(every_kimg=0.5)
  c.checkpoint.update(every_steps=16)
  return c
