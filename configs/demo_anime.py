"""Demo few-shot transfer: the demo photo source fine-tuned on 32 synthetic 'anime' faces, FreezeD.

    python launch.py --config configs/demo_photo.py --workdir runs/demo_photo   # the source, first
    python launch.py --config configs/demo_anime.py --workdir runs/demo_anime

Run from the repository root (the default source path is relative), or pass
``--config.transfer.source=runs/demo_photo/checkpoints`` explicitly. The model section must equal
the source's (it is copied from configs/demo_photo.py); transfer_report.json in the workdir says
what was restored and frozen.
"""
from configs import demo_photo


def get_config():
  c = demo_photo.get_config()
  c.train.update(total_kimg=3.2, sample_every=50)
  c.data.update(domain="anime", num_images=32)  # the few-shot target set
  c.checkpoint.update(every_steps=50)
  c.transfer.update(source="runs/demo_photo/checkpoints", on_mismatch="error")
  # FreezeD: D's two highest-resolution blocks (b32, b16) keep the source's features.
  c.freeze.update(preset="freezed", d_blocks=2)
  return c
