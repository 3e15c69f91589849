"""IDX (Fashion-MNIST layout) reader, class selection, held-out sets and the PNG export tool,
on small IDX files written here."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from configs import base, tiny
from gantl_jax import config as config_lib
from gantl_jax import metrics
from gantl_jax.data import builders, idx, pipeline
from gantl_jax.data.checks import check_config
from gantl_jax.errors import DataError

RES = 16
# Labels of the pooled train (first 30) and test (last 10) images: class 9 has 14, class 3 has 2.
TRAIN_LABELS = np.array([9, 0, 1] * 10, np.uint8)
TEST_LABELS = np.array([9, 9, 9, 9, 3, 3, 1, 0, 0, 1], np.uint8)


def _write_idx(path, array, compress):
  # The format from its spec (yann.lecun.com/exdb/mnist): 0, 0, type 0x08, ndim; big-endian dims.
  raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
  if compress:
    path = path.with_name(path.name + ".gz")
    raw = gzip.compress(raw)
  path.write_bytes(raw)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("idx")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
  # One gzipped and one plain file of each kind: the reader takes either.
  _write_idx(root / "train-images-idx3-ubyte", images[:30], compress=True)
  _write_idx(root / "train-labels-idx1-ubyte", TRAIN_LABELS, compress=False)
  _write_idx(root / "t10k-images-idx3-ubyte", images[30:], compress=False)
  _write_idx(root / "t10k-labels-idx1-ubyte", TEST_LABELS, compress=True)
  return root, images


def _cfg(tmp_path, idx_root, **kw):
  c = base.get_config().data
  c.update(source="idx", idx_dir=str(idx_root), data_dir=str(tmp_path / "tfds"), **kw)
  return c


def test_read_idx_plain_and_gzipped(idx_dir):
  root, images = idx_dir
  np.testing.assert_array_equal(idx.read_idx(str(root / "train-images-idx3-ubyte.gz")), images[:30])
  np.testing.assert_array_equal(idx.read_idx(str(root / "t10k-images-idx3-ubyte")), images[30:])
  x, y = idx.load(str(root))
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, np.concatenate([TRAIN_LABELS, TEST_LABELS]))


def test_damaged_and_missing_files_name_the_file(tmp_path, idx_dir):
  root, _ = idx_dir
  bad = tmp_path / "short"
  bad.write_bytes((root / "t10k-images-idx3-ubyte").read_bytes()[:-5])
  with pytest.raises(DataError, match=r"short: header says shape \(10, 28, 28\).*holds 7835"):
    idx.read_idx(str(bad))
  (tmp_path / "text").write_text("not idx")
  with pytest.raises(DataError, match="text is not an IDX file"):
    idx.read_idx(str(tmp_path / "text"))
  with pytest.raises(DataError, match=r"data.idx_dir=.*nowhere is not a directory: install Fashion-MNIST "
                                      r"\(apt-get install dataset-fashion-mnist.*--config.data.idx_dir"):
    pipeline.prepare(_cfg(tmp_path, tmp_path / "nowhere"), resolution=RES, verbose=False)
  with pytest.raises(DataError, match=r"has no train-images-idx3-ubyte or train-images-idx3-ubyte.gz"):
    idx.find_files(str(tmp_path))


def test_bad_classes_name_the_key(tmp_path, idx_dir):
  root, _ = idx_dir
  with pytest.raises(DataError, match="data.classes must be comma-separated class numbers"):
    check_config(_cfg(tmp_path, root, classes="boot"))
  with pytest.raises(DataError, match=r"data.classes: class 5 has no image in .* \(its classes: 0,1,3,9\)"):
    pipeline.prepare(_cfg(tmp_path, root, classes="5"), resolution=RES, verbose=False)
  with pytest.raises(DataError, match="data.n_shot=3 but class.*3 of .* have only 2 images"):
    pipeline.prepare(_cfg(tmp_path, root, classes="3", n_shot=3), resolution=RES, verbose=False)


def test_n_shot_and_held_out_sets(tmp_path, idx_dir):
  root, images = idx_dir
  labels = np.concatenate([TRAIN_LABELS, TEST_LABELS])
  class9 = set(np.flatnonzero(labels == 9))
  c = _cfg(tmp_path, root, classes="9", n_shot=5, seed=3)
  shots = pipeline.prepare(c, resolution=RES, verbose=False)
  held = pipeline.prepare_held_out(c, resolution=RES, num=100, verbose=False)
  assert shots.num_examples == 5 and held.num_examples == 14 - 5  # the held-out set has what is left
  # File names are <class>_<index in the pooled train + test files>.
  index_of = lambda prepared: [int(f.split("_")[1]) for f in prepared.report["files"]]
  shot_ids, held_ids = index_of(shots), index_of(held)
  assert set(shot_ids) | set(held_ids) == class9 and not set(shot_ids) & set(held_ids)
  # Same seed, more shots: the 5-shot set is inside the 8-shot one; another seed picks other images.
  more = pipeline.prepare(_cfg(tmp_path, root, classes="9", n_shot=8, seed=3), resolution=RES, verbose=False)
  assert index_of(more)[:5] == shot_ids
  other = pipeline.prepare(_cfg(tmp_path, root, classes="9", n_shot=5, seed=4), resolution=RES, verbose=False)
  assert index_of(other) != shot_ids
  # Grayscale (res, res, 1) for a 1-channel model: the 28 px image resized with PIL's Lanczos; an
  # RGB model reads the same stored image with its channel repeated.
  first = pipeline.prepare(c, resolution=RES, channels=1, verbose=False).data_source[0]
  assert first.shape == (RES, RES, 1) and first.dtype == np.uint8
  want = np.asarray(Image.fromarray(images[shot_ids[0]]).resize((RES, RES), Image.LANCZOS))
  np.testing.assert_array_equal(first[:, :, 0], want)
  np.testing.assert_array_equal(shots.data_source[0], np.repeat(first, 3, axis=2))
  # n_shot = 0: every image of the classes trains, none is left to hold out.
  every = pipeline.prepare(_cfg(tmp_path, root, classes="1,3"), resolution=RES, verbose=False)
  assert sorted(index_of(every)) == list(np.flatnonzero(np.isin(labels, [1, 3])))
  with pytest.raises(DataError, match="held-out images of an IDX set need data.n_shot > 0"):
    pipeline.prepare_held_out(_cfg(tmp_path, root, classes="1,3"), resolution=RES, num=10, verbose=False)


def test_eval_heldout_takes_the_held_out_classes_images(tmp_path, idx_dir):
  root, _ = idx_dir
  c = tiny.get_config()
  c.data.update(source="idx", idx_dir=str(root), classes="9", n_shot=10, data_dir=str(tmp_path / "tfds"))
  c.eval.update(heldout=True, num_real=3, metrics="swd")
  c = config_lib.resolve(c)  # eval.heldout is allowed for an IDX source
  train = pipeline.prepare(c.data, resolution=c.model.resolution, verbose=False)
  reals = metrics.prepare_reals(c, train, verbose=False)
  assert reals.num_examples == 3 and not set(reals.report["files"]) & set(train.report["files"])
  assert metrics.describe_reals(c, reals).startswith("3 held-out images of classes 9 of ")


def test_export_writes_shots_and_held_out_pngs(tmp_path, idx_dir):
  root, _ = idx_dir
  out = tmp_path / "fmnist_9"
  assert idx.main(["--idx_dir", str(root), "--classes", "9", "--shots", "5", "--held_out", "100",
                   "--resolution", str(RES), "--seed", "3", "--out", str(out)]) == 0
  shots = sorted(p.name for p in (out / "shots").iterdir())
  held = sorted(p.name for p in (out / "held_out").iterdir())
  assert len(shots) == 5 and len(held) == 9 and not set(shots) & set(held)
  # The same images as the tfds builder's, read back as a folder (grayscale PNG -> RGB).
  c = _cfg(tmp_path, root, classes="9", n_shot=5, seed=3)
  prepared = pipeline.prepare(c, resolution=RES, verbose=False)
  for i, name in enumerate(prepared.report["files"]):
    png = np.asarray(Image.open(out / "shots" / f"{name}.png"))
    np.testing.assert_array_equal(png, prepared.data_source[i][:, :, 0])
  folder = builders.folder_builder(str(out / "shots"), resolution=RES, data_dir=str(tmp_path / "tfds"))
  assert len(folder.builder_config.files) == 5
  assert idx.main(["--idx_dir", str(tmp_path / "nowhere"), "--classes", "9", "--shots", "5",
                   "--out", str(tmp_path / "x")]) == 1
