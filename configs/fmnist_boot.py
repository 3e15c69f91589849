"""Few-shot transfer to a real class: the 10 ankle boots of targets/fmnist_9/shots, measured
against its 1,000 held-out ankle boots, from the Fashion-MNIST source of configs/fmnist_source.py.

    python launch.py --config configs/fmnist_boot.py --workdir runs/fmnist_boot \
        --config.transfer.source=runs/fmnist_source/checkpoints

The source never saw a boot (classes 0-7), but it saw sandals and sneakers. FreezeD + ADA as the
demo transfer.
"""
import os

from configs import fmnist_source

TARGETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "targets")


def get_config():
  c = fmnist_source.get_config()
  c.train.update(total_kimg=16.0, log_every=25, sample_every=250)
  c.data.update(source="folder", folder=os.path.join(TARGETS, "fmnist_9", "shots"), n_shot=0)
  c.eval.update(every_kimg=4.0, metrics="swd", num_real=1000,
                real_folder=os.path.join(TARGETS, "fmnist_9", "held_out"))
  c.checkpoint.update(every_steps=250)
  c.transfer.update(source="runs/fmnist_source/checkpoints", on_mismatch="error")
  c.freeze.update(preset="freezed", d_blocks=2)
  c.augment.update(kind="ada")
  return c
