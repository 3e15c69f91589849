"""Demo few-shot transfer with CDC: configs/demo_anime.py (the demo photo source adapted to 32
synthetic 'anime' faces) with cross-domain correspondence (Ojha et al. 2021) at the paper's
settings.

    python launch.py --config configs/fewshot_cdc.py --workdir runs/fewshot_cdc

What CDC adds to the demo's FreezeD fine-tuning (README, "Few-shot methods"):
* distance consistency: weight 1000 on the KL between the source G's and the adapted G's
  softmax-normalised pairwise feature similarities of 4 shared latents per step;
* the anchor-region patch discriminator: every 4th step draws latents near 10 fixed anchors
  (offset std 0.1) and D judges whole images; the other steps D judges 4x4 patch logits of its
  block outputs (resolution / 8, at least 4) through a new head, initialised fresh at transfer.
metrics.jsonl logs the weighted KL as cdc_loss.
"""
from configs import demo_anime


def get_config():
  c = demo_anime.get_config()
  c.fewshot.update(cdc_weight=1000.0, cdc_batch=4, cdc_anchor_interval=4, cdc_anchors=10,
                   cdc_anchor_std=0.1)
  c.augment.update(kind="none")  # as the CDC paper: no augmentation (the demo adds ADA)
  return c
