"""A 32 px source on real images: the Noto Color Emoji faces and people (about 500 emoji, no
skin-tone variants), written by the emoji tool into runs/data/noto_faces_people:

    apt-get install fonts-noto-color-emoji && npm install emoji-datasource-google   # the font, the emoji list
    python -m gantl_jax.data.emoji --vendor noto --category faces,people --size 32 \
        --out runs/data/noto_faces_people
    python launch.py --config configs/noto_source.py --workdir runs/noto_source

The shipped pretrained/noto32 is this run's step 6850 (pretrained/README.md: how long it trained
and its SWD against held-out emoji). configs/demo_emoji.py and configs/twemoji_faces.py transfer
it to 10 Twemoji faces (targets/twemoji_faces): the same emoji drawn by another vendor.
"""
from configs import demo_photo


def get_config():
  c = demo_photo.get_config()  # the demo's small 32 px model
  c.train.update(total_kimg=256.0)
  c.data.update(source="folder", folder="runs/data/noto_faces_people", n_shot=0)
  return c
