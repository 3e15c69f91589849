"""Few-shot transfer with kernel-modulation adapters (in the spirit of AdAM, Zhao et al. 2022,
"Few-shot image generation via adaptation-aware kernel modulation"): the demo's anime transfer
(configs/demo_anime.py) where the important source kernels of G are kept and modulated, the others
fine-tuned.

    python launch.py --config configs/fewshot_adapter.py --workdir runs/fewshot_adapter

Settings after the paper's code: the conv layers whose mean Fisher is above the median
(``adapter_fisher_quantile=0.5``, AdAM's --fisher_quantile 50 for its 10-shot runs) keep their
source kernel W and train a rank-1 modulation W * (1 + v u^T); the other conv layers, the style
affines and the biases are fine-tuned; G's mapping network, its 4x4 constant and its toRGB layers
stay frozen, and D is fine-tuned except its fromRGB layer, as AdAM does. G's Fisher is estimated
from 1000 source samples (AdAM probes with 250 batches of 4). Differences from AdAM (README,
"Few-shot"): the unit is a layer, not an output filter; the Fisher is that of the source kernels on
source samples, not that of the modulation after a probing run on the target; D gets no modulation.
The transfer report (transfer_report.json and the printed summary) lists the modulated and
fine-tuned layers and the trainable-parameter counts.
"""
from configs import demo_anime


def get_config():
  c = demo_anime.get_config()
  c.fewshot.update(adapter="kernel_modulation", adapter_fisher_quantile=0.5, fisher_samples=1000)
  c.freeze.update(preset="none", g=r"^mapping/,^synthesis/b4/const$,/torgb/", d="/fromrgb/")
  c.augment.update(kind="none")  # as the AdAM paper: no augmentation (the demo adds ADA)
  return c
