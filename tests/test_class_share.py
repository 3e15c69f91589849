"""The class-share metric: samples labelled by their nearest labelled real images (mirrors
included), the evaluator that reads the labelled folder, and the errors that name its keys."""
import numpy as np
import pytest

from gantl_jax import errors
from gantl_jax import images as image_io
from gantl_jax import metrics
from gantl_jax.defaults import get_config
from gantl_jax.metrics import class_share, distances, samples

RES = 16


def _column(x0: int, x1: int, level: int = 255) -> np.ndarray:
  image = np.zeros((RES, RES, 3), np.uint8)
  image[:, x0:x1] = level
  return image


def _grey(level: int = 85) -> np.ndarray:
  return np.full((RES, RES, 3), level, np.uint8)


def _noisy(image: np.ndarray, rng, amount: int = 20) -> np.ndarray:
  return np.clip(image.astype(int) + rng.integers(-amount, amount + 1, image.shape), 0, 255).astype(np.uint8)


def test_label_is_the_file_name_up_to_the_first_underscore():
  assert class_share.label_of("some/dir/9_00167.png") == "9"
  assert class_share.label_of("ankle_boot_3.png") == "ankle"
  for bad in ("00167.png", "_3.png"):
    with pytest.raises(ValueError, match=rf"^{bad}: a labelled reference image is named <label>_<anything>"):
      class_share.label_of(bad)


def test_nearest_labels_take_the_majority_and_break_ties_by_the_nearest():
  labels = ["a", "b", "b", "c", "a"]
  to_reference = np.array([
      [0.1, 0.2, 0.3, 0.4, 0.5],   # a, b, b: b has two votes
      [0.5, 0.1, 0.4, 0.2, 0.3],   # b, c, a: one vote each, b is nearest
      [0.3, 0.9, 0.9, 0.1, 0.2],   # c, a, a: a has two votes
  ])
  assert list(class_share.nearest_labels(to_reference, labels, k=3)) == ["b", "b", "a"]
  assert list(class_share.nearest_labels(to_reference, labels, k=1)) == ["a", "b", "c"]
  assert list(class_share.nearest_labels(to_reference, labels, k=99)) == ["a", "b", "a"]  # all five vote


def test_share_of_each_label_from_constructed_images():
  """References: bright left columns ('col') and flat grey frames ('grey'). Samples: 7 noisy
  columns and 3 noisy greys, so the share of 'col' is 0.7 whatever the distance's details."""
  rng = np.random.default_rng(0)
  references = np.stack([_noisy(_column(0, 5), rng) for _ in range(4)] + [_noisy(_grey(), rng) for _ in range(4)])
  labels = ["col"] * 4 + ["grey"] * 4
  fakes = np.stack([_noisy(_column(0, 5), rng) for _ in range(7)] + [_noisy(_grey(), rng) for _ in range(3)])
  out = class_share.class_share(distances.pyramid_distance(), fakes, references, labels, "col", k=3)
  assert out == {"class_share_col": 0.7, "class_share_grey": pytest.approx(0.3), "class_share": 0.7}


def test_a_mirrored_sample_gets_the_label_of_the_unmirrored_reference():
  """A right column is far from the left column it mirrors and nearer a flat grey frame, so
  without the references' mirror images it would be labelled 'grey'."""
  references = np.stack([_column(0, 5), _grey()])
  right_column = _column(RES - 5, RES)[None]
  plain = distances.distances(distances.pyramid_distance(), right_column, references)
  assert plain[0, 1] < plain[0, 0]  # the premise: unmirrored, grey is nearer
  assert class_share.class_share(distances.pyramid_distance(), right_column, references, ["col", "grey"],
                                 "col", k=1)["class_share"] == 1.0


def test_target_must_be_a_reference_label():
  with pytest.raises(ValueError, match=r"target label 'boot' is not among the reference labels \['col', 'grey'\]"):
    class_share.class_share(distances.pyramid_distance(), _grey()[None], np.stack([_column(0, 5), _grey()]),
                            ["col", "grey"], "boot")


def _labelled_folder(tmp_path, channels=3):
  rng = np.random.default_rng(1)
  folder = tmp_path / "labelled"
  folder.mkdir()
  for i in range(3):
    for label, image in (("col", _column(0, 5)), ("grey", _grey())):
      pixels = _noisy(image, rng)
      image_io.save_png(pixels[..., :1] if channels == 1 else pixels, str(folder / f"{label}_{i:03d}.png"))
  return str(folder)


@pytest.mark.parametrize("channels", [3, 1])
def test_evaluator_reads_the_folder_at_the_samples_size(tmp_path, channels):
  c = get_config().eval
  c.update(metrics="class_share", every_kimg=1.0, num_diagnostic=4, label_folder=_labelled_folder(tmp_path, channels),
           target_label="grey")
  evaluators = metrics.get_evaluators(c)
  rng = np.random.default_rng(2)
  fakes = np.stack([_noisy(_grey(), rng) for _ in range(3)] + [_noisy(_column(0, 5), rng)] * 2)[..., :channels]
  values = evaluators["class_share"](iter([fakes[:2], fakes[2:]]), None, c, None)
  assert values["class_share"] == values["class_share_grey"] == 0.75  # the first num_diagnostic samples
  assert values["class_share_col"] == 0.25
  assert samples.labelled_images(c.label_folder, RES, channels)[0].shape == (6, RES, RES, channels)
  assert metrics.best_mode("class_share") == "max"


def test_a_bad_label_folder_or_target_names_the_key(tmp_path):
  c = get_config().eval
  c.update(metrics="class_share", every_kimg=1.0)
  with pytest.raises(errors.ConfigError, match=r"^eval.metrics: 'class_share' .* set eval.label_folder"):
    metrics.get_evaluators(c)
  c.update(label_folder=str(tmp_path / "nope"), target_label="9")
  with pytest.raises(errors.ConfigError, match=r"^eval.label_folder='.*/nope': image folder does not exist"):
    metrics.get_evaluators(c)
  c.label_folder = _labelled_folder(tmp_path)
  with pytest.raises(errors.ConfigError, match=r"^eval.target_label='9' is not a label of eval.label_folder=.* "
                                               r"\(its labels: col, grey\)$"):
    metrics.get_evaluators(c)
  image_io.save_png(_grey(), str(tmp_path / "labelled" / "unlabelled.png"))
  c.target_label = "grey"
  with pytest.raises(errors.ConfigError, match=r"^eval.label_folder='.*labelled': unlabelled.png: a labelled "
                                               r"reference image is named"):
    metrics.get_evaluators(c)
