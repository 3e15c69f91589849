"""Writes a folder of emoji images of one vendor and category: real, freely licensed targets.

    python -m gantl_jax.data.emoji --vendor twitter --category faces --out DIR [--size 64]
        [--source font|png] [--skin_tones] [--shots 10 --seed 0] [--package_dir DIR] [--font FILE]

One RGBA PNG per emoji (transparent background: the folder loader composites it on white), named
by its code points, e.g. ``1f600.png`` or ``1f469-200d-1f4bb.png``, so the same emoji of two
vendors has the same name: a style transfer with known correspondence. With ``--shots N`` the
emoji go to ``DIR/shots`` (N of them, chosen by `shots.n_shot_order` for ``--seed``) and
``DIR/held_out`` (the others).

Where the images come from:
  * ``--source png`` (the default for google and twitter): the 64 px PNGs of the npm packages
    ``emoji-datasource-google`` (Noto artwork, Apache-2.0) and ``emoji-datasource-twitter``
    (Twemoji, CC-BY 4.0), ``img/<vendor>/64/<code points>.png``;
  * ``--source font`` (the default for noto): the Noto Color Emoji font (Debian
    ``fonts-noto-color-emoji``), rendered by Pillow at the font's bitmap size 109.
The list of emoji and their categories is the npm package's ``emoji.json`` (for the font, that of
``emoji-datasource-google``): ``category`` and ``subcategory`` decide `CATEGORIES`. Skin-tone
variants are left out unless ``--skin_tones``. Apple's and Facebook's sets are not offered: they
have no licence to use them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Callable

from PIL import Image, ImageDraw, ImageFont, features
from gantl_jax.data.shots import n_shot_order
from gantl_jax.errors import EmojiError

VENDORS = ("noto", "google", "twitter")
# The npm package of each vendor's PNGs; noto's artwork is the google set.
PACKAGES = {"noto": "emoji-datasource-google", "google": "emoji-datasource-google",
            "twitter": "emoji-datasource-twitter"}
FONT_NAME = "Noto Color Emoji"
FONT_PATH = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
# The size of the font's bitmap strikes (CBDT): Pillow renders a bitmap font only at that size.
FONT_SIZE = 109
CATEGORIES: dict[str, Callable[[dict], bool]] = {
    "faces": lambda e: e["category"] == "Smileys & Emotion" and e["subcategory"].startswith("face-"),
    "people": lambda e: e["category"] == "People & Body",
    "animals": lambda e: e["category"] == "Animals & Nature" and e["subcategory"].startswith("animal-"),
    "plants": lambda e: e["category"] == "Animals & Nature" and e["subcategory"].startswith("plant-"),
    "food": lambda e: e["category"] == "Food & Drink",
    "travel": lambda e: e["category"] == "Travel & Places",
    "activities": lambda e: e["category"] == "Activities",
    "objects": lambda e: e["category"] == "Objects",
    "symbols": lambda e: e["category"] == "Symbols",
    "flags": lambda e: e["category"] == "Flags",
}


def find_package(name: str, package_dir: str = "") -> str:
  """The directory of npm package ``name`` (the one holding its emoji.json): ``package_dir``
  (the package itself or a node_modules folder holding it), else ./node_modules, else the
  global npm root. EmojiError saying what to install or pass when none has it."""
  candidates = []
  if package_dir:
    candidates += [package_dir, os.path.join(package_dir, name), os.path.join(package_dir, "node_modules", name)]
  else:
    candidates.append(os.path.join("node_modules", name))
    npm_root = _npm_root()
    if npm_root:
      candidates.append(os.path.join(npm_root, name))
  for path in candidates:
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(os.path.join(path, "emoji.json")):
      return path
  where = f"--package_dir={package_dir}" if package_dir else "./node_modules or the global npm root"
  raise EmojiError(f"npm package {name} not found in {where}: run `npm install {name}` and pass "
                   f"--package_dir=DIR (its node_modules folder or the package folder)")


def _npm_root() -> str:
  if not shutil.which("npm"):
    return ""
  try:
    return subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=60).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def find_font(font: str = "") -> str:
  """The Noto Color Emoji font file: ``font``, else what fc-match names, else the Debian path."""
  if font:
    if not os.path.isfile(font):
      raise EmojiError(f"--font={font} is not a file: pass the path of NotoColorEmoji.ttf")
    return font
  if shutil.which("fc-match"):
    try:
      found = subprocess.run(["fc-match", "-f", "%{file}", FONT_NAME], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      found = ""
    if os.path.basename(found) == "NotoColorEmoji.ttf" and os.path.isfile(found):
      return found
  if os.path.isfile(FONT_PATH):
    return FONT_PATH
  raise EmojiError(f"the {FONT_NAME} font is not installed: apt-get install fonts-noto-color-emoji, "
                   f"or pass --font=FILE (NotoColorEmoji.ttf), or use --source png")


def select(catalog: list[dict], categories: list[str], *, skin_tones: bool = False,
           vendor_key: str = "") -> list[dict]:
  """The catalog's emoji (entries with ``unified`` and ``image``) of ``categories``, in the
  catalog's ``sort_order``; with ``skin_tones`` also their skin-tone variants. With
  ``vendor_key`` ('google', 'twitter'), only those the vendor has an image of."""
  unknown = [c for c in categories if c not in CATEGORIES]
  if unknown:
    raise EmojiError(f"--category {unknown[0]!r} is not one of {', '.join(CATEGORIES)}")
  chosen = []
  for entry in sorted(catalog, key=lambda e: e.get("sort_order", 0)):
    if not any(CATEGORIES[c](entry) for c in categories):
      continue
    variants = [entry] + (list((entry.get("skin_variations") or {}).values()) if skin_tones else [])
    chosen += [v for v in variants if not vendor_key or v.get(f"has_img_{vendor_key}", False)]
  return chosen


def code_points(unified: str) -> str:
  """'1F469-200D-1F4BB' -> the string of those code points."""
  return "".join(chr(int(h, 16)) for h in unified.split("-"))


def to_size(img: Image.Image, size: int) -> Image.Image:
  """An RGBA image padded (transparent) to a centred square and resized with Lanczos to ``size``."""
  img = img.convert("RGBA")
  side = max(img.size)
  if img.size != (side, side):
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    img = square
  # Pillow resizes RGBA with premultiplied alpha, so transparent pixels' colours do not bleed in.
  return img if side == size else img.resize((size, size), Image.LANCZOS)


def read_png(package: str, vendor_key: str, entry: dict, size: int) -> Image.Image | None:
  """The package's 64 px image of ``entry`` at ``size``, or None when the file is missing."""
  path = os.path.join(package, "img", vendor_key, "64", entry["image"])
  if not os.path.isfile(path):
    return None
  with Image.open(path) as img:
    return to_size(img, size)


def render_font(font: ImageFont.FreeTypeFont, entry: dict, size: int) -> Image.Image | None:
  """``entry`` drawn with the colour font at ``size``, or None when the font has no single glyph
  for it (nothing drawn, or a sequence laid out as several glyphs side by side)."""
  text = code_points(entry["unified"])
  left, top, right, bottom = font.getbbox(text)
  if right <= left or bottom <= top or right - left > 1.5 * (bottom - top):
    return None
  canvas = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
  ImageDraw.Draw(canvas).text((-left, -top), text, font=font, embedded_color=True)
  if canvas.getchannel("A").getbbox() is None:
    return None
  return to_size(canvas, size)


def write_set(vendor: str, categories: list[str], out: str, *, size: int = 64, source: str = "",
              skin_tones: bool = False, shots: int = 0, seed: int = 0, package_dir: str = "",
              font: str = "") -> dict:
  """Writes the emoji set (see the module docstring); returns a summary: counts per folder and
  the emoji the vendor has no image of."""
  if vendor not in VENDORS:
    raise EmojiError(f"--vendor must be one of {', '.join(VENDORS)}, got {vendor!r}")
  source = source or ("font" if vendor == "noto" else "png")
  if source not in ("font", "png"):
    raise EmojiError(f"--source must be 'font' or 'png', got {source!r}")
  if source == "font" and vendor != "noto":
    raise EmojiError(f"--source font is the Noto Color Emoji font: use --vendor noto, or --source png for {vendor}")
  if not 8 <= size <= 1024:
    raise EmojiError(f"--size must be from 8 to 1024, got {size}")
  try:
    package = find_package(PACKAGES[vendor], package_dir)
  except EmojiError as e:
    raise EmojiError(f"{e} (the font too: its emoji.json lists the emoji and their categories)"
                     if source == "font" else str(e)) from None
  with open(os.path.join(package, "emoji.json"), encoding="utf-8") as f:
    catalog = json.load(f)
  vendor_key = "google" if vendor == "noto" else vendor
  entries = select(catalog, categories, skin_tones=skin_tones, vendor_key="" if source == "font" else vendor_key)
  if source == "font":
    # Raqm (where Pillow has it) joins ZWJ sequences into their one glyph; without it they are skipped.
    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    face = ImageFont.truetype(find_font(font), FONT_SIZE, layout_engine=engine)
    draw = lambda e: render_font(face, e, size)
  else:
    draw = lambda e: read_png(package, vendor_key, e, size)
  images, missing = {}, []
  for entry in entries:
    img = draw(entry)
    if img is None:
      missing.append(entry["image"])
    else:
      images[entry["image"]] = img
  if not images:
    raise EmojiError(f"no {vendor} image of category {','.join(categories)} in {package}"
                     + (" or the font" if source == "font" else ""))
  names = list(images)
  if shots:
    if shots >= len(names):
      raise EmojiError(f"--shots={shots} leaves no held-out emoji: the set has {len(names)}")
    order = [names[i] for i in n_shot_order(len(names), seed)]
    folders = {"shots": order[:shots], "held_out": order[shots:]}
  else:
    folders = {"": names}
  counts = {}
  for sub, chosen in folders.items():
    folder = os.path.join(out, sub) if sub else out
    os.makedirs(folder, exist_ok=True)
    for name in chosen:
      images[name].save(os.path.join(folder, name), optimize=True)
    counts[folder] = len(chosen)
  return dict(counts=counts, missing=missing, package=package, source=source)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Write a folder of emoji PNGs of one vendor and category.")
  p.add_argument("--vendor", required=True, choices=VENDORS)
  p.add_argument("--category", required=True, help=f"comma-separated: {', '.join(CATEGORIES)}")
  p.add_argument("--out", required=True)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--source", default="", choices=("", "font", "png"), help="default: font for noto, png otherwise")
  p.add_argument("--skin_tones", action="store_true", help="also the skin-tone variants")
  p.add_argument("--shots", type=int, default=0, help="N > 0: N emoji to OUT/shots, the others to OUT/held_out")
  p.add_argument("--seed", type=int, default=0, help="which emoji are the shots")
  p.add_argument("--package_dir", default="", help="node_modules folder (or package folder) of the npm package")
  p.add_argument("--font", default="", help="NotoColorEmoji.ttf (default: fc-match, then the Debian path)")
  a = p.parse_args(argv)
  try:
    summary = write_set(a.vendor, [c.strip() for c in a.category.split(",") if c.strip()], a.out, size=a.size,
                        source=a.source, skin_tones=a.skin_tones, shots=a.shots, seed=a.seed,
                        package_dir=a.package_dir, font=a.font)
  except (EmojiError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(", ".join(f"wrote {n} images to {folder}" for folder, n in summary["counts"].items()))
  if summary["missing"]:
    print(f"left out {len(summary['missing'])} emoji without a {a.vendor} image: "
          f"{' '.join(summary['missing'][:10])}{' ...' if len(summary['missing']) > 10 else ''}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
