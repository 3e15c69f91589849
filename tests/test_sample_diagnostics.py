"""The diversity and copies evaluators share one embedding of each image set per distance, and give
the values of the image-level functions."""
import ml_collections
import numpy as np

from gantl_jax import defaults
from gantl_jax.metrics import distances, diversity, memorisation, samples


def images(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_one_evaluation_embeds_each_set_once_and_matches_the_image_level_functions(monkeypatch):
  embedded_counts = []

  def counting_embed(x):
    embedded_counts.append(len(x))
    return distances.pyramid_embed(x)

  counting = distances.Distance("pyramid", counting_embed)
  monkeypatch.setattr(distances, "pyramid_distance", lambda: counting)
  fakes, train, heldout = images(40, 1), images(10, 2), images(12, 3)
  eval_config = ml_collections.ConfigDict(defaults.get_config().eval.to_dict())
  eval_config.update(metrics="diversity,copies", num_diagnostic=40, num_real=12)
  context = samples.SampleContext(train_images=train, reals_held_out=True)
  out = samples.evaluate(iter([fakes[:25], fakes[25:]]), [heldout], eval_config, context)
  assert sorted(embedded_counts) == [10, 12, 40]  # samples, training images, held-out reals: once each
  expected = diversity.diversity(counting, fakes, train, heldout, seed=int(eval_config.seed))
  expected.update(memorisation.memorisation(counting, fakes, train, heldout))
  assert {k: out[k] for k in expected} == expected
  assert out["diversity"] == expected["pyramid_intra_cluster"] and out["copies"] == expected["pyramid_copies"]
