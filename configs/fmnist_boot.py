"""Few-shot transfer to a real class: ankle boots (targets/fmnist_9: 100 shots and 1,000 held-out
boots), from the Fashion-MNIST source of configs/fmnist_source.py (pretrained/fmnist32), which
never saw a boot (classes 0-7) but saw sandals and sneakers. data.n_shot picks the training
images from the 100 shots (10 here; the 10 are inside every larger set of the same data.seed).
FreezeD + ADA, as configs/twemoji_faces.py; the transfer study compares the other methods on it.

    python launch.py --config configs/fmnist_boot.py --workdir runs/fmnist_boot
    python launch.py --config configs/fmnist_boot.py --workdir runs/fmnist_boot100 --config.data.n_shot=100
"""
import os

from configs import fmnist_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = os.path.join(REPO, "targets")


def get_config():
  c = fmnist_source.get_config()
  c.train.update(total_kimg=16.0, log_every=25, sample_every=250)
  c.data.update(source="folder", folder=os.path.join(TARGETS, "fmnist_9", "shots"), n_shot=10)
  c.eval.update(heldout=False, every_kimg=4.0, metrics="swd,diversity,copies,correspondence", num_real=1000,
                real_folder=os.path.join(TARGETS, "fmnist_9", "held_out"))
  c.checkpoint.update(every_steps=250)
  c.transfer.update(source=os.path.join(REPO, "pretrained", "fmnist32"), on_mismatch="error")
  c.freeze.update(preset="freezed", d_blocks=2)
  c.augment.update(kind="ada")
  return c
