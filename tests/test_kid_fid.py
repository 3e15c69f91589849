"""FID and KID (gantl_jax.metrics.kid_fid): closed forms, the reference implementations' values on
random features (``fixtures/kid_fid_reference.npz``, see fixtures/README.md), unbiasedness, and the
'kid' / 'fid' evaluators with their real-statistics cache."""
import types

import numpy as np
import pytest

from gantl_jax import defaults
from gantl_jax import metrics
from gantl_jax.errors import ConfigError
from gantl_jax.metrics import kid_fid
from test_inception import FIXTURE as INCEPTION_FIXTURE
from test_inception import pytorch_fid_state, write_pth

REFERENCE = INCEPTION_FIXTURE.replace("fid_inception_reference", "kid_fid_reference")


@pytest.fixture(scope="module")
def ref():
  with np.load(REFERENCE) as f:
    return {k: float(v) for k, v in f.items()}


def random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d)) / np.sqrt(d)
  return a @ a.T + (0 if rank else 0.1 * np.eye(d))


def sqrt_spd(s):
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ---------------------------------------------------------------------------
# FID.


def test_fid_closed_forms():
  rng = np.random.default_rng(0)
  d = 200
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  # Non-commuting covariances with a known root: S1 = A^2 and S2 = A^-1 C^2 A^-1 make
  # S1 S2 = A C^2 A^-1, whose square root A C A^-1 has trace tr(C).
  a, c = sqrt_spd(random_spd(rng, d)), sqrt_spd(random_spd(rng, d))
  a_inv = np.linalg.inv(a)
  s1, s2 = a @ a, a_inv @ c @ c @ a_inv
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(c)
  assert kid_fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
  assert kid_fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)
  # Singular covariances (fewer images than dimensions): a common eigenbasis, half the
  # eigenvalues of S1 zero, so tr((S1 S2)^(1/2)) = sum sqrt(l1 l2).
  u = np.linalg.qr(rng.standard_normal((d, d)))[0]
  l1 = np.where(np.arange(d) < d // 2, rng.uniform(0.5, 2, d), 0.0)
  l2 = rng.uniform(0.5, 2, d)
  s1, s2 = (u * l1) @ u.T, (u * l2) @ u.T
  expected = np.sum((mu1 - mu2) ** 2) + l1.sum() + l2.sum() - 2 * np.sqrt(l1 * l2).sum()
  assert kid_fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
  # Identical Gaussians: 0, up to rounding (against a trace of ~200).
  assert abs(kid_fid.frechet_distance(mu1, s2, mu1, s2)) < 1e-8


def feats_gauss(seed, n, d):
  g = np.random.default_rng(seed)
  a = g.standard_normal((d, d)) / np.sqrt(d)
  return g.standard_normal((n, d)) @ a + g.standard_normal(d)


@pytest.mark.parametrize("key,n,d,rel", [("d64", 600, 64, 1e-10), ("d64_lowrank", 40, 64, 1e-7)])
def test_fid_matches_pytorch_fid(ref, key, n, d, rel):
  # pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm, with its eps offset when the
  # product is singular) on the same means and np.cov covariances. Measured relative
  # differences: 8e-14 (full rank), 6e-9 (rank 39 of 64); 2e-13 at d = 2048 (not run here: 9 s).
  f1, f2 = feats_gauss(100, n, d), feats_gauss(200, n, d)
  got = kid_fid.frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
  assert got == pytest.approx(ref[f"fid_{key}"], rel=rel)


def test_trace_sqrt_product_against_scipy_sqrtm_and_an_exact_singular_form():
  linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(1)
  s1, full = random_spd(rng, 128), random_spd(rng, 128)
  assert kid_fid.trace_sqrt_product(s1, full) == pytest.approx(np.trace(linalg.sqrtm(s1 @ full)).real, rel=1e-10)
  # S2 = B B^T of rank 50: tr((S1 S2)^(1/2)) = tr((B^T S1 B)^(1/2)), a full-rank 50 x 50 problem.
  b = rng.standard_normal((128, 50)) / 16
  s2 = b @ b.T
  exact = np.sqrt(np.linalg.eigvalsh(b.T @ s1 @ b)).sum()
  assert kid_fid.trace_sqrt_product(s1, s2) == pytest.approx(exact, rel=1e-13)
  assert kid_fid.trace_sqrt_product(s2, s1) == pytest.approx(exact, rel=1e-13)
  # scipy's sqrtm of the singular product carries the rounding noise of its null directions
  # (measured +2.2e-8 relative at rank 100 of 256); ours drops them.
  assert np.trace(linalg.sqrtm(s1 @ s2)).real == pytest.approx(exact, rel=1e-7)


def test_feature_stats_are_running_sums():
  rng = np.random.default_rng(2)
  # A large common offset: the sums are taken around the first batch's mean, so the covariance
  # keeps its digits (raw sums of squares would lose ~8 of them).
  x = (rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16)) + 1e4).astype(np.float32)
  whole = kid_fid.FeatureStats(keep_features=True)
  whole.add(x)
  parts = kid_fid.FeatureStats()
  for chunk in np.array_split(x, [1, 7, 100, 299]):
    parts.add(chunk)
  mean, cov = parts.mean_cov()
  np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False, bias=True), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(whole.mean_cov()[1], cov, rtol=1e-9, atol=1e-9)
  back = kid_fid.FeatureStats.from_arrays(whole.to_arrays())
  assert back.num == 300 and back.keep_features
  np.testing.assert_array_equal(back.features(), x)
  np.testing.assert_array_equal(back.mean_cov()[1], whole.mean_cov()[1])
  with pytest.raises(ValueError, match="not kept"):
    parts.features()


# ---------------------------------------------------------------------------
# KID.


def kid_feats(seed, n, shift):
  g = np.random.default_rng(seed)
  return (g.gamma(0.5, 0.6, (n, 2048)) + shift).astype(np.float32)


def test_kid_matches_nvidias_formula(ref):
  # NVIDIA's kernel_inception_distance.py formula, run on the same features (and for the second
  # case the same subsets, drawn as ours are), in float32 as NVIDIA's code and in float64.
  gen, real = kid_feats(300, 300, 0.02), kid_feats(400, 300, 0.0)
  got = kid_fid.kernel_inception_distance(gen, real)  # 300 <= 1000: every subset is the whole set
  assert got == pytest.approx(ref["kid_full_float64"], rel=1e-6)  # measured 3e-8
  assert got == pytest.approx(ref["kid_full"], rel=2e-4)  # measured 6e-5: NVIDIA's float32 sums
  gen, real = kid_feats(300, 150, 0.02), kid_feats(400, 170, 0.0)
  got = kid_fid.kernel_inception_distance(gen, real, num_subsets=10, max_subset_size=100, seed=0)
  assert got == pytest.approx(ref["kid_subsets_float64"], rel=1e-6)
  assert got == pytest.approx(ref["kid_subsets"], rel=2e-4)
  with pytest.raises(ValueError, match="at least 2"):
    kid_fid.kernel_inception_distance(gen[:1], real)


def test_kid_equals_a_direct_implementation_with_unequal_sets():
  # Written out: per subset, the unbiased MMD^2 (off-diagonal means of the within-set kernels
  # minus twice the mean cross kernel), subsets drawn as documented. One set no larger than the
  # subset size (it is then permuted, not subsampled) and one larger.
  rng = np.random.default_rng(6)
  fake, real = rng.gamma(0.5, 0.6, (40, 16)).astype(np.float32), rng.gamma(0.5, 0.6, (55, 16)).astype(np.float32)
  k = lambda a, b: (a.astype(np.float64) @ b.T.astype(np.float64) / 16 + 1) ** 3
  draws, values = np.random.default_rng(9), []
  for _ in range(7):
    x, y = fake[draws.choice(40, 40, replace=False)], real[draws.choice(55, 40, replace=False)]
    off = lambda m: (m.sum() - np.trace(m)) / (40 * 39)
    values.append(off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean())
  got = kid_fid.kernel_inception_distance(fake, real, num_subsets=7, max_subset_size=100, seed=9)
  assert got == pytest.approx(np.mean(values), rel=1e-6)


def test_kid_is_unbiased():
  # Two samples of one distribution: KID's expectation is 0, so its mean over many independent
  # draws is within a few standard errors of 0. The biased estimate (keeping the diagonal of the
  # within-set kernels) sits far above that band, so a broken estimator fails this test.
  rng = np.random.default_rng(3)
  d, n = 32, 60
  unbiased, biased = [], []
  for _ in range(60):
    x = rng.gamma(0.5, 0.6, (n, d)).astype(np.float32)
    y = rng.gamma(0.5, 0.6, (n, d)).astype(np.float32)
    unbiased.append(kid_fid.kernel_inception_distance(x, y))
    k = lambda a, b: (a.astype(np.float64) @ b.T.astype(np.float64) / d + 1) ** 3
    biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
  unbiased, biased = np.array(unbiased), np.array(biased)
  stderr = unbiased.std() / np.sqrt(len(unbiased))
  assert abs(unbiased.mean()) < 3 * stderr
  assert biased.mean() > 10 * stderr
  # A shifted distribution is clearly positive.
  x = rng.gamma(0.5, 0.6, (n, d)).astype(np.float32)
  assert kid_fid.kernel_inception_distance(x + 0.3, y) > 20 * stderr


# ---------------------------------------------------------------------------
# The evaluators.


def eval_config(weights="", metrics_="kid,fid", batch_size=8):
  config = defaults.get_config().eval
  config.update(every_kimg=1.0, metrics=metrics_, num_fake=6, num_real=5, batch_size=batch_size,
                seed=123, inception_weights=weights)
  return config


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
  with np.load(INCEPTION_FIXTURE) as f:
    ref = dict(f)
  path = tmp_path_factory.mktemp("weights") / "pt_inception.pth"
  path.write_bytes(write_pth(pytorch_fid_state(ref, unit_scale=False)))
  return str(path)


def test_no_weights_skips_kid_and_fid_and_never_fakes_them(caplog):
  config = eval_config(metrics_="swd,kid,fid")
  assert list(metrics.get_evaluators(config)) == ["swd"]
  assert kid_fid.evaluate(iter([]), iter([]), config) == {}
  with pytest.raises(ConfigError, match="keep_best='fid' needs eval.inception_weights"):
    metrics.get_evaluators(config, keep_best="fid")
  with pytest.raises(ConfigError, match="eval.inception_weights='/nonexistent/inception.pt': cannot read"):
    metrics.get_evaluators(eval_config("/nonexistent/inception.pt"))


def test_unreadable_weights_are_a_config_error(tmp_path):
  bad = tmp_path / "inception.pt"
  bad.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(ConfigError, match="eval.inception_weights=.*inception.pt"):
    metrics.get_evaluators(eval_config(str(bad)))


class Prepared(types.SimpleNamespace):
  """The parts of pipeline.PreparedData that the evaluators use."""


def test_evaluator_values_and_real_statistics_cache(weight_file, tmp_path):
  config = eval_config(weight_file)
  evaluators = metrics.get_evaluators(config)
  assert list(evaluators) == ["kid", "fid"] and evaluators["kid"] is evaluators["fid"]
  rng = np.random.default_rng(4)
  real_images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  fake_images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  data_path = tmp_path / "gantl_folder" / "x_r32" / "1.0.0"
  prepared = Prepared(data_source=list(real_images), data_path=str(data_path))
  calls = []

  def fake_batches(num):
    calls.append(num)
    return iter([fake_images[:4], fake_images[4:num]])

  values = metrics.run_evaluators(evaluators, fake_batches, prepared, config)
  assert calls == [6] and set(values) == {"kid", "fid"}  # one pass serves both
  # The real statistics went to the cache beside the data, keyed by count, the seed that chose
  # 5 of the 7 images, and weight hash ...
  weights = kid_fid.load_configured_weights(config)
  cached = list((data_path / "eval_cache").iterdir())
  assert [p.name for p in cached] == [f"inception_{weights.sha256[:16]}_v1_n5_s123.npz"]
  # ... and are read back instead of recomputed (real images that cannot be read prove it).
  reals = metrics.RealImages(prepared, 5, 8, seed=123)
  reals.data_source = None  # iterating would fail
  real = kid_fid.cached_real_stats(reals, weights, keep_features=True)
  assert real.num == 5
  # The values are the formulas on the features (the sharded path itself is compared with the
  # reference network in test_inception).
  fake = kid_fid.feature_stats(weights, [fake_images], keep_features=True, batch_size=8)
  assert values["fid"] == pytest.approx(kid_fid.fid_from_stats(fake, real), rel=1e-9)
  assert values["kid"] == pytest.approx(kid_fid.kernel_inception_distance(fake.features(), real.features(), seed=123),
                                        rel=1e-9)
  # A cache that cannot be read is recomputed, not trusted.
  cached[0].write_bytes(b"garbage")
  with pytest.raises(TypeError):  # the fallback iterates the (unreadable) images
    kid_fid.cached_real_stats(reals, weights, keep_features=True)


class MirroredSource:
  """pipeline.ImageSource's shape: ``size`` images, then their mirrors."""

  def __init__(self, size):
    self.size, self.mirror = size, True

  def __len__(self):
    return 2 * self.size


def test_real_images_cache_tag():
  reals = metrics.RealImages(Prepared(data_source=[0] * 8, data_path="/data/x/1.0.0"), 100, 4)
  assert (reals.num, reals.cache_tag, reals.cache_dir) == (8, "n8", "/data/x/1.0.0/eval_cache")
  # Counts that reach into the x-flipped copies are other images: another tag.
  assert metrics.RealImages(Prepared(data_source=MirroredSource(4), data_path="/d"), 4, 4).cache_tag == "n4"
  assert metrics.RealImages(Prepared(data_source=MirroredSource(4), data_path="/d"), 6, 4).cache_tag == "n6_mirror"
  assert metrics.RealImages(Prepared(data_source=[0] * 8, data_path=""), 3, 4).cache_dir is None


def test_fewer_real_images_than_the_set_holds_are_a_seeded_choice_not_the_first():
  """A folder sorted class by class (50 of one class, then 50 of another): 50 real images are
  drawn from both classes, the same ones for the same eval.seed, and cached under their own tag."""
  source = [np.full((2, 2, 3), i, np.uint8) for i in range(100)]

  def values(reals):
    return np.concatenate([batch[:, 0, 0, 0] for batch in reals])

  reals = metrics.RealImages(Prepared(data_source=source, data_path="/d"), 50, 16, seed=123)
  chosen = values(reals)
  assert len(set(chosen)) == 50 and list(chosen) == sorted(chosen)
  assert 15 < np.sum(chosen < 50) < 35  # the first 50 would all be of the first class
  assert reals.cache_tag == "n50_s123"
  assert list(values(metrics.RealImages(Prepared(data_source=source, data_path="/d"), 50, 16, seed=123))) == list(chosen)
  assert list(values(metrics.RealImages(Prepared(data_source=source, data_path="/d"), 50, 16, seed=7))) != list(chosen)
  every = metrics.RealImages(Prepared(data_source=source, data_path="/d"), 100, 16, seed=123)
  assert list(values(every)) == list(range(100)) and every.cache_tag == "n100"


def test_take_images_chooses_as_the_evaluators_do():
  from gantl_jax.data import pipeline
  prepared = types.SimpleNamespace(data_source=[np.full((2, 2, 3), i, np.uint8) for i in range(100)], num_examples=100)
  taken = pipeline.take_images(prepared, 50, seed=123)[:, 0, 0, 0]
  reals = metrics.RealImages(Prepared(data_source=prepared.data_source, data_path=""), 50, 64, seed=123)
  assert list(taken) == list(np.concatenate([b[:, 0, 0, 0] for b in reals]))
  assert list(pipeline.take_images(prepared, 5)[:, 0, 0, 0]) == [0, 1, 2, 3, 4]
  assert len(pipeline.take_images(prepared, 500, seed=1)) == 100
