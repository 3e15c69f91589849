"""A 32 px source on real images: Fashion-MNIST classes 0-7 (t-shirt/top, trouser, pullover,
dress, coat, sandal, shirt, sneaker), all 56,000 of their train + test images.

    apt-get install dataset-fashion-mnist       # or --config.data.idx_dir=DIR of the IDX files
    python launch.py --config configs/fmnist_source.py --workdir runs/fmnist_source

Classes 8 (bag) and 9 (ankle boot) are left out for the targets: configs/fmnist_boot.py transfers
to the 10 ankle boots shipped in targets/fmnist_9. The images are grayscale; the data pipeline
gives the model its model.img_channels.
"""
from configs import demo_photo


def get_config():
  c = demo_photo.get_config()  # the demo's small 32 px model
  c.train.update(total_kimg=512.0)
  c.data.update(source="idx", classes="0,1,2,3,4,5,6,7", n_shot=0)
  return c
