"""Few-shot transfer with EWC (Li et al. 2020, "Few-shot image generation with elastic weight
consolidation"): the demo's anime transfer (configs/demo_anime.py), all of G and D fine-tuned as in
the paper, with G pulled towards the source by ``ewc_weight * sum F * (theta - theta_source)^2``.

    python launch.py --config configs/fewshot_ewc.py --workdir runs/fewshot_ewc

G's Fisher F (gantl_jax/fewshot/ewc.py) is computed once at the start from 1000 source samples and
stored in the workdir (g_fisher.npz).

The weight: the paper's lambda = 5e8 belongs to its own Fisher's scale, which ours does not share
(ours is the per-sample mean of squared gradients of log sigmoid(D(G(z))); on a demo source
checkpoint, configs/demo_photo.py after 32 kimg, its sum over G's 314k parameters is about 470,
most of it on the biases, and the kernel weights average 9e-6). Read as a Laplace
approximation, the penalty is the source data's log-prior, N_source/2 * sum F * dtheta^2, against
the target's loss, a mean over N_target images; per target image that gives
lambda = N_source / (2 * N_target) = 5000 / (2 * 32) ~ 80 for the demo (5000 source images, 32
target images). At that weight a drift of 0.1 in every kernel weight (unit scale) costs about as
much as the adversarial loss, and the biases are held within a few thousandths. Scale it with the
data: e.g. 70k FFHQ images and 10 targets give 3500.
"""
from configs import demo_anime


def get_config():
  c = demo_anime.get_config()
  c.freeze.update(preset="none")  # the paper adapts every weight; EWC is what holds G back
  c.fewshot.update(ewc_weight=80.0, fisher_samples=1000)
  c.augment.update(kind="none")  # as the EWC paper: no augmentation (the demo adds ADA)
  return c
