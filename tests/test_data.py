"""tfds builders (folder, synthetic), bad input, n-shot subsets, and the input pipeline."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from configs import base
from gantl_jax import data
from gantl_jax import errors
from gantl_jax.data import builders, synthetic

RES = 16
GOOD = 30
# Planted files that are converted (and kept) or skipped.
CONVERTED = {"odd/gray.png": "L", "odd/rgba.png": "RGBA", "odd/gray16.png": "I;16", "odd/cmyk.jpg": "CMYK", "odd/palette.png": "P"}
SKIPPED = ["odd/truncated.png", "odd/corrupt.jpg", "odd/notimage.png"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  ims = synthetic.render("anime", range(GOOD), resolution=32, seed=5)
  for i, im in enumerate(ims):
    sub = root / ("a" if i % 2 else "b/deep")
    sub.mkdir(parents=True, exist_ok=True)
    # Non-square (crop), PNG and JPEG, upper- and lower-case extensions.
    img = Image.fromarray(im[:, 2:30])
    name = f"img{i:02d}." + ["png", "jpg", "JPEG", "webp"][i % 4]
    img.save(sub / name, quality=95)
  odd = root / "odd"
  odd.mkdir()
  rgb = ims[0]
  Image.fromarray(rgb).convert("L").save(odd / "gray.png")
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
  rgba[:, :8, 3] = 0  # transparent left strip: must come out white
  Image.fromarray(rgba, "RGBA").save(odd / "rgba.png")
  Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(odd / "gray16.png")  # mid-gray in 16 bits
  Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
  Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(odd / "palette.png")
  Image.fromarray(rgb[:8, :8]).save(root / "small.png")  # smaller than RES: upscaled
  good_png = (root / "a" / "img01.jpg").read_bytes()
  Image.fromarray(rgb).save(odd / "full.png")
  (odd / "truncated.png").write_bytes((odd / "full.png").read_bytes()[:300])
  (odd / "full.png").unlink()
  (odd / "corrupt.jpg").write_bytes(good_png[:20] + bytes(range(256)) * 4)
  (odd / "notimage.png").write_text("this is not an image")
  (root / "readme.txt").write_text("ignored: not an image extension")
  (root / ".hidden.png").write_text("ignored: hidden")
  return root


def _cfg(tmp_path, **kw):
  c = base.get_config().data
  c.data_dir = str(tmp_path / "tfds")
  c.prefetch = 0
  c.num_workers = 1
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def prepared(image_folder, tmp_path_factory):
  c = _cfg(tmp_path_factory.mktemp("prep"), source="folder", folder=str(image_folder))
  return data.prepare(c, resolution=RES, verbose=False), c


def test_folder_prepares_with_report(prepared, image_folder):
  p, _ = prepared
  report = p.report
  assert p.num_examples == GOOD + len(CONVERTED) + 1
  assert len(p.data_source) == p.num_examples
  assert sorted(s["file"] for s in report["skipped"]) == sorted(SKIPPED)
  assert {c["file"]: c["mode"] for c in report["converted"]} == CONVERTED
  assert report["upscaled"] == ["small.png"]
  assert report["ignored_other_files"] == 1
  on_disk = json.load(open(os.path.join(p.data_path, builders.REPORT_NAME)))
  assert on_disk["files"] == report["files"] and on_disk["complete"]
  assert "truncated.png" in builders.summarize(report)
  for i in (0, p.num_examples - 1):
    x = p.data_source[i]
    assert x.shape == (RES, RES, 3) and x.dtype == np.uint8


def test_conversions(prepared):
  p, _ = prepared
  files = p.report["files"]
  rgba = p.data_source[files.index("odd/rgba.png")]
  assert rgba[:, :3].min() > 240  # transparent strip composited on white
  gray16 = p.data_source[files.index("odd/gray16.png")]
  assert np.abs(gray16.astype(int) - 128).max() <= 1  # scaled, not clipped to 255
  gray = p.data_source[files.index("odd/gray.png")]
  assert (gray[..., 0] == gray[..., 1]).all()


def test_pipeline_batches(prepared):
  p, _ = prepared
  it = data.make_iterator(p, global_batch=8, seed=0, prefetch=2, num_workers=2)
  for _ in range(3):
    b = next(it)
    assert b.shape == (8, RES, RES, 3) and b.dtype == np.float32
    assert -1.0 <= b.min() and b.max() <= 1.0 and b.max() > 0.5
  it.close()


@pytest.mark.parametrize("xflip", [False, True])
def test_pipeline_pixels_are_the_source_images(tmp_path, xflip):
  """Every pixel of an epoch of batches is a source image (already at the resolution, so no
  resize), or its horizontal mirror exactly where the pipeline says it flipped; each image once."""
  n, batch = 12, 4
  rng = np.random.default_rng(7)
  folder = tmp_path / "images"
  folder.mkdir()
  sources = {}
  for i in range(n):
    # Random pixels: no image equals another or its own mirror.
    im = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    Image.fromarray(im).save(folder / f"im{i:02d}.png")
    sources[f"im{i:02d}.png"] = im
  c = _cfg(tmp_path, source="folder", folder=str(folder), xflip=xflip)
  p = data.prepare(c, resolution=RES, verbose=False)
  assert p.report["upscaled"] == [] and p.num_examples == n
  it = data.make_iterator(p, global_batch=batch, seed=3, prefetch=2, num_workers=2)
  seen, flips = [], []
  for step in range(n // batch):  # one epoch
    out = next(it)
    pixels = np.rint((out.astype(np.float64) + 1) * 127.5)
    assert np.abs(pixels - (out.astype(np.float64) + 1) * 127.5).max() < 1e-3  # exact uint8 levels
    indices, flipped = it.indices(step)
    for image, index, flip in zip(pixels.astype(np.uint8), indices, flipped):
      name = p.report["files"][index]
      want = sources[name][:, ::-1] if flip else sources[name]
      np.testing.assert_array_equal(image, want, err_msg=f"{name} flip={flip}")
      seen.append(name)
      flips.append(bool(flip))
  it.close()
  assert sorted(seen) == sorted(sources)  # each image exactly once per epoch
  if xflip:
    assert 0 < sum(flips) < n  # both orientations occur (seeded)
  else:
    assert not any(flips)


@pytest.mark.parametrize("kind", ["missing", "empty", "only_bad", "not_set"])
def test_folder_errors_name_the_path(tmp_path, kind):
  folder = tmp_path / "imgs"
  if kind == "empty":
    folder.mkdir()
  if kind == "only_bad":
    folder.mkdir()
    (folder / "x.png").write_text("no")
    (folder / "y.jpg").write_bytes(b"\xff\xd8\xff broken")
  c = _cfg(tmp_path, source="folder", folder="" if kind == "not_set" else str(folder))
  with pytest.raises(errors.DataError) as e:
    data.prepare(c, resolution=RES, verbose=False)
  assert ("data.folder" if kind == "not_set" else str(folder)) in str(e.value)
  if kind == "only_bad":
    assert "no valid image" in str(e.value)


def test_n_shot_subsets(image_folder, tmp_path):
  def files(n, seed):
    c = _cfg(tmp_path, source="folder", folder=str(image_folder), n_shot=n, seed=seed)
    p = data.prepare(c, resolution=8, verbose=False)
    assert p.num_examples == n
    return p.report["files"]

  a, b, c = files(5, 0), files(5, 0), files(5, 1)
  assert a == b and len(set(a)) == 5
  assert set(a) != set(c)
  every, _ = builders.list_images(str(image_folder))
  assert set(a) <= set(every) and not set(a) & set(SKIPPED)
  assert set(a) <= set(files(10, 0))  # one order per seed: nested subsets
  with pytest.raises(errors.DataError, match="n_shot"):
    files(1000, 0)


def test_synthetic_source_matches_renderer(tmp_path):
  c = _cfg(tmp_path, source="synthetic", domain="anime", num_images=12, seed=3)
  p = data.prepare(c, resolution=RES, verbose=False)
  assert p.num_examples == 12
  want = synthetic.render("anime", range(12), resolution=RES, seed=3)
  got = np.stack([p.data_source[i] for i in range(12)])
  np.testing.assert_array_equal(got, want)
  c.mirror_dataset = True
  m = data.prepare(c, resolution=RES, verbose=False)
  assert m.num_examples == 24 and m.report["reused"]
  np.testing.assert_array_equal(m.data_source[12 + 4], want[4][:, ::-1])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  c = _cfg(tmp_path_factory.mktemp("synth"), num_images=20)
  return data.prepare(c, resolution=8, verbose=False)


def test_processes_read_disjoint_shares_of_the_same_global_batch(synth):
  single = data.make_iterator(synth, global_batch=8, seed=1, prefetch=0)
  hosts = [data.make_iterator(synth, global_batch=8, process_index=i, process_count=2, seed=1, prefetch=2) for i in range(2)]
  seen = []
  for step in range(6):
    whole = next(single)
    parts = [next(h) for h in hosts]
    assert parts[0].shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # same examples, same flips
    i0, i1 = hosts[0].indices(step)[0], hosts[1].indices(step)[0]
    np.testing.assert_array_equal(np.concatenate([i0, i1]), single.indices(step)[0])
    if (step + 1) * 8 <= 20:  # inside one epoch: no example twice
      assert not set(i0) & set(i1) and len(set(i0) | set(i1)) == 8
    seen += list(single.indices(step)[0])
  # Positions 0..19 are one epoch: every example exactly once.
  assert sorted(seen[:20]) == list(range(20))
  for h in hosts:
    h.close()


def test_restored_state_continues_the_stream(synth):
  it = data.make_iterator(synth, global_batch=6, seed=2, prefetch=2)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 3
  want = [next(it) for _ in range(4)]
  resumed = data.make_iterator(synth, global_batch=6, seed=2, state=state, prefetch=1)
  for w in want:
    np.testing.assert_array_equal(next(resumed), w)
  it.set_state(state)  # rewinding a live iterator (prefetch thread restarted)
  np.testing.assert_array_equal(next(it), want[0])
  # Another process count resumes the same global stream.
  half = data.make_iterator(synth, global_batch=6, process_index=1, process_count=2, seed=2, state=state)
  np.testing.assert_array_equal(next(half), want[0][3:])
  with pytest.raises(errors.DataError, match="global_batch"):
    data.make_iterator(synth, global_batch=4, seed=2, state=state)
  for x in (it, resumed, half):
    x.close()


def test_prepare_reuses_and_separates_options(image_folder, tmp_path, monkeypatch):
  c = _cfg(tmp_path, source="folder", folder=str(image_folder))
  first = data.prepare(c, resolution=8, verbose=False)
  assert not first.report["reused"]

  def no_decode(*a, **k):
    raise AssertionError("re-decoded a prepared dataset")

  monkeypatch.setattr(builders, "load_image", no_decode)
  again = data.prepare(c, resolution=8, verbose=False)
  assert again.report["reused"] and again.data_path == first.data_path
  monkeypatch.undo()
  other = data.prepare(c, resolution=16, verbose=False)
  assert other.data_path != first.data_path and not other.report["reused"]
  # A changed file changes the fingerprint.
  victim = image_folder / "b" / "deep" / "img00.png"
  st = victim.stat()
  os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  changed = builders.folder_builder(str(image_folder), resolution=8, data_dir=c.data_dir)
  assert str(changed.data_path) != first.data_path
  os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_interrupted_prepare_is_not_trusted(tmp_path, monkeypatch):
  c = _cfg(tmp_path, num_images=10, domain="photo")
  calls = []
  real = synthetic.render

  def dies(*a, **k):
    calls.append(1)
    raise KeyboardInterrupt("simulated kill while preparing")

  monkeypatch.setattr(synthetic, "render", dies)
  with pytest.raises(KeyboardInterrupt):
    data.prepare(c, resolution=8, verbose=False)
  monkeypatch.setattr(synthetic, "render", real)
  p = data.prepare(c, resolution=8, verbose=False)
  assert not p.report["reused"] and p.num_examples == 10

  # A prepared folder without a complete report (e.g. a non-atomic copy) is rebuilt.
  report_path = os.path.join(p.data_path, builders.REPORT_NAME)
  r = json.load(open(report_path))
  r["complete"] = False
  json.dump(r, open(report_path, "w"))
  with pytest.warns(UserWarning, match="incomplete"):
    p2 = data.prepare(c, resolution=8, verbose=False)
  assert not p2.report["reused"] and p2.num_examples == 10
  os.remove(os.path.join(p2.data_path, builders.REPORT_NAME))
  with pytest.warns(UserWarning, match="incomplete"):
    p3 = data.prepare(c, resolution=8, verbose=False)
  assert not p3.report["reused"]
  leftovers = [d for d in os.listdir(os.path.dirname(p3.data_path)) if "incomplete" in d]
  assert leftovers == []


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
  """Three good images and a JPEG cut short, whose reason is long ('... (N bytes not processed)')."""
  root = tmp_path_factory.mktemp("messy")
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  for i in range(3):
    Image.fromarray(noise[:, ::1 + i % 2]).save(root / f"good{i}.png")
  Image.fromarray(noise).save(root / "cut.jpg", quality=95)
  raw = (root / "cut.jpg").read_bytes()
  (root / "cut.jpg").write_bytes(raw[: len(raw) * 2 // 3])
  return root


def test_skip_reasons_are_printed_whole(messy_folder, tmp_path, capsys):
  c = _cfg(tmp_path, source="folder", folder=str(messy_folder))
  p = data.prepare(c, resolution=8, verbose=True)
  (skipped,) = p.report["skipped"]
  assert skipped["file"] == "cut.jpg"
  assert skipped["reason"].startswith("corrupt or truncated: image file is truncated (")
  assert skipped["reason"].endswith(" bytes not processed)")
  out = capsys.readouterr().out
  assert skipped["reason"] in out
  lines = out.splitlines()
  assert "  skipped 1 unreadable image files:" in lines
  assert f"    cut.jpg: {skipped['reason']}" in lines


def test_n_shot_errors_name_the_key_and_the_fix(messy_folder, tmp_path):
  folder = str(messy_folder)
  with pytest.raises(errors.DataError) as e:
    data.prepare(_cfg(tmp_path, source="folder", folder=folder, n_shot=100), resolution=8, verbose=False)
  assert str(e.value) == (f"data.n_shot=100 but folder {folder} has only 4 image files; set data.n_shot "
                          f"to at most 4 (0 = all) or add images")
  with pytest.raises(errors.DataError) as e:
    data.prepare(_cfg(tmp_path, source="folder", folder=folder, n_shot=4), resolution=8, verbose=False)
  assert str(e.value) == (f"data.n_shot=4 but folder {folder} has only 3 valid images (1 of its 4 image "
                          f"files are unreadable); set data.n_shot to at most 3 (0 = all) or add images")


def _incomplete(c, resolution):
  """tfds' temporary folders of the synthetic dataset of data config ``c``."""
  builder = builders.synthetic_builder(c.domain, count=c.num_images, resolution=resolution, seed=c.seed,
                                       data_dir=c.data_dir)
  folder = os.path.dirname(os.fspath(builder.data_path))
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(n for n in names if n.startswith("incomplete.")), folder


def test_killed_prepare_leaves_nothing_after_the_next(tmp_path):
  """SIGKILL runs no clean-up, so tfds' temporary folder stays; the next prepare deletes it."""
  c = _cfg(tmp_path, num_images=10, domain="photo")
  script = f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from configs import base
from gantl_jax import data
from gantl_jax.data import synthetic
c = base.get_config().data
c.update(data_dir={c.data_dir!r}, num_images=10, domain="photo")
synthetic.render = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
data.prepare(c, resolution=8, verbose=False)
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  left, _ = _incomplete(c, 8)
  assert len(left) == 1 and left[0].endswith("_1.0.0")  # what a killed preparation leaves
  p = data.prepare(c, resolution=8, verbose=False)
  assert not p.report["reused"] and p.num_examples == 10
  assert _incomplete(c, 8)[0] == []


def test_prepare_waits_for_a_live_preparation_and_keeps_its_folder(tmp_path, monkeypatch):
  """A temporary folder is deleted only by the holder of the preparation lock, so never while the
  process writing it lives; a second preparation waits, then reuses what the first prepared."""
  c = _cfg(tmp_path, num_images=10, domain="photo")
  go, real = threading.Event(), synthetic.render

  def held(*a, **k):
    go.wait(60)
    return real(*a, **k)

  monkeypatch.setattr(synthetic, "render", held)
  results = {}

  def prepare(name):
    results[name] = data.prepare(c, resolution=8, verbose=False)

  first = threading.Thread(target=prepare, args=("first",))
  first.start()
  for _ in range(600):  # until the first is writing its temporary folder
    live = _incomplete(c, 8)[0]
    if live:
      break
    time.sleep(0.05)
  assert live
  second = threading.Thread(target=prepare, args=("second",))
  second.start()
  second.join(1.0)
  assert second.is_alive() and _incomplete(c, 8)[0] == live
  go.set()
  first.join(60)
  second.join(60)
  assert not results["first"].report["reused"] and results["second"].report["reused"]
  assert results["second"].data_path == results["first"].data_path
  assert _incomplete(c, 8)[0] == []
