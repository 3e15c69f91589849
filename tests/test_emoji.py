"""The emoji set writer on a small npm-layout package written here (emoji.json + 64 px PNGs), and
on the Noto Color Emoji font where it is installed."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import base
from gantl_jax import errors
from gantl_jax.data import emoji, pipeline

PKG = "emoji-datasource-twitter"
# (unified, category, subcategory, has a twitter image, skin variations)
ENTRIES = [
    ("1F600", "Smileys & Emotion", "face-smiling", True, None),
    ("1F62E-200D-1F4A8", "Smileys & Emotion", "face-neutral-skeptical", True, None),
    ("1F63A", "Smileys & Emotion", "cat-face", True, None),         # not a face-* subcategory
    ("1F92F", "Smileys & Emotion", "face-hat", False, None),        # no twitter image
    ("1F44B", "People & Body", "hand-fingers-open", True, ["1F3FB", "1F3FF"]),
    ("1F415", "Animals & Nature", "animal-mammal", True, None),
]
COLOURS = {"1f600": (250, 200, 0), "1f62e-200d-1f4a8": (0, 120, 240), "1f63a": (10, 10, 10),
           "1f44b": (200, 0, 0), "1f44b-1f3fb": (220, 180, 150), "1f44b-1f3ff": (90, 60, 40), "1f415": (0, 160, 0)}


def _png(path, colour, palette=False):
  # A 64 px disc of radius 16 of one colour on a transparent background.
  yy, xx = np.mgrid[:64, :64]
  inside = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 16 ** 2
  rgba = np.zeros((64, 64, 4), np.uint8)
  rgba[inside] = colour + (255,)
  if palette:  # as Twemoji's files: a palette with a transparent index
    img = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.ADAPTIVE, colors=4)
    img.save(path, transparency=img.getpixel((0, 0)))
  else:
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
  root = tmp_path_factory.mktemp("npm") / "node_modules"
  catalog = []
  for order, (unified, cat, sub, has_img, tones) in enumerate(ENTRIES):
    entry = dict(unified=unified, image=unified.lower() + ".png", category=cat, subcategory=sub,
                 sort_order=order, has_img_twitter=has_img, has_img_google=True)
    if tones:
      entry["skin_variations"] = {t: dict(unified=f"{unified}-{t}", image=f"{unified}-{t}".lower() + ".png",
                                          has_img_twitter=True) for t in tones}
    catalog.append(entry)
  for name in (PKG, "emoji-datasource-google"):
    img_dir = root / name / "img" / name.split("-")[-1] / "64"
    img_dir.mkdir(parents=True)
    (root / name / "emoji.json").write_text(json.dumps(catalog))
    for k, (stem, colour) in enumerate(COLOURS.items()):
      _png(img_dir / f"{stem}.png", colour, palette=k % 2 == 1)
  return root


def _open(path):
  return np.asarray(Image.open(path).convert("RGBA"))


def test_png_set_by_category(tmp_path, package):
  out = tmp_path / "faces"
  assert emoji.main(["--vendor", "twitter", "--category", "faces", "--out", str(out), "--size", "32",
                     "--package_dir", str(package)]) == 0
  # face-* only (no cat face), and not the face without a twitter image; names are the code points.
  assert sorted(os.listdir(out)) == ["1f600.png", "1f62e-200d-1f4a8.png"]
  for name in os.listdir(out):
    img = _open(out / name)
    assert img.shape == (32, 32, 4)
    # The disc's colour in the middle, transparent in the corners (the loader puts them on white).
    np.testing.assert_array_equal(img[16, 16], COLOURS[name[:-4]] + (255,))
    assert img[0, 0, 3] == 0 and img[31, 31, 3] == 0
    assert 0.17 < (img[..., 3] > 127).mean() < 0.22  # the disc's area, pi / 16 of the square
  c = base.get_config().data
  c.update(source="folder", folder=str(out), data_dir=str(tmp_path / "tfds"))
  prepared = pipeline.prepare(c, resolution=16, verbose=False)
  np.testing.assert_array_equal(prepared.data_source[0][0, 0], [255, 255, 255])


def test_skin_tones_categories_and_shots(tmp_path, package):
  summary = emoji.write_set("twitter", ["people", "animals"], str(tmp_path / "plain"), size=16,
                            package_dir=str(package))
  assert sorted(os.listdir(tmp_path / "plain")) == ["1f415.png", "1f44b.png"]
  assert summary["missing"] == []
  emoji.write_set("twitter", ["people"], str(tmp_path / "tones"), size=16, skin_tones=True,
                  package_dir=str(package / PKG))  # the package folder itself is accepted too
  assert sorted(os.listdir(tmp_path / "tones")) == ["1f44b-1f3fb.png", "1f44b-1f3ff.png", "1f44b.png"]
  split = emoji.write_set("twitter", ["faces", "people", "animals"], str(tmp_path / "split"), size=16,
                          shots=2, seed=1, package_dir=str(package))
  shots, held = (set(os.listdir(tmp_path / "split" / sub)) for sub in ("shots", "held_out"))
  assert len(shots) == 2 and len(held) == 2 and not shots & held
  assert shots | held == {"1f600.png", "1f62e-200d-1f4a8.png", "1f44b.png", "1f415.png"}
  assert split["counts"] == {str(tmp_path / "split" / "shots"): 2, str(tmp_path / "split" / "held_out"): 2}


def test_missing_package_and_bad_options_are_one_line(tmp_path, package, capsys):
  assert emoji.main(["--vendor", "twitter", "--category", "faces", "--out", str(tmp_path / "x"),
                     "--package_dir", str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"npm package {PKG} not found in --package_dir={tmp_path}" in err
  assert f"npm install {PKG}" in err
  with pytest.raises(errors.EmojiError, match="--category 'fruit' is not one of faces, people"):
    emoji.write_set("twitter", ["fruit"], str(tmp_path / "x"), package_dir=str(package))
  with pytest.raises(errors.EmojiError, match="--source font is the Noto Color Emoji font: use --vendor noto"):
    emoji.write_set("twitter", ["faces"], str(tmp_path / "x"), source="font", package_dir=str(package))
  with pytest.raises(errors.EmojiError, match="--shots=4 leaves no held-out emoji: the set has 2"):
    emoji.write_set("twitter", ["faces"], str(tmp_path / "x"), shots=4, package_dir=str(package))
  with pytest.raises(errors.EmojiError, match="--font=/nowhere.ttf is not a file"):
    emoji.write_set("noto", ["faces"], str(tmp_path / "x"), font="/nowhere.ttf", package_dir=str(package))
  assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not os.path.isfile(emoji.FONT_PATH), reason="fonts-noto-color-emoji is not installed")
def test_noto_font(tmp_path, package):
  summary = emoji.write_set("noto", ["faces"], str(tmp_path / "noto"), size=32, package_dir=str(package))
  assert summary["source"] == "font"
  # 1f92f has no twitter image but the font has it; a ZWJ sequence is one glyph (or left out
  # where Pillow has no raqm to join it).
  names = set(os.listdir(tmp_path / "noto"))
  assert {"1f600.png", "1f92f.png"} <= names <= {"1f600.png", "1f92f.png", "1f62e-200d-1f4a8.png"}
  grin = _open(tmp_path / "noto" / "1f600.png")
  assert grin.shape == (32, 32, 4) and grin[0, 0, 3] == 0
  r, g, b, _ = grin[16, 8]  # left cheek of the yellow face
  assert r > 200 and g > 150 and b < 100
