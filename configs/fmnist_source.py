"""A 32 px source on real images: Fashion-MNIST classes 0-7 (t-shirt/top, trouser, pullover,
dress, coat, sandal, shirt, sneaker), 50,000 of their 56,000 train + test images; the other 6,000
are its held-out set, against which SWD is measured every 32 kimg.

    apt-get install dataset-fashion-mnist       # or --config.data.idx_dir=DIR of the IDX files
    python launch.py --config configs/fmnist_source.py --workdir runs/fmnist_source

Classes 8 (bag) and 9 (ankle boot) are left out for the targets: configs/fmnist_boot.py transfers
to ankle boots (targets/fmnist_9). The images are grayscale; the pipeline gives them to the model
with its model.img_channels, here the demo model's 3 (three equal channels, as pretrained/fmnist32
was trained); --config.model.img_channels=1 trains a one-channel source.
"""
from configs import demo_photo


def get_config():
  c = demo_photo.get_config()  # the demo's small 32 px model
  c.train.update(total_kimg=512.0)
  c.data.update(source="idx", classes="0,1,2,3,4,5,6,7", n_shot=50000)
  c.eval.update(heldout=True, every_kimg=32.0, metrics="swd")
  return c
