"""Few-shot adaptation: augmentation of what D sees, CDC, EWC and kernel-modulation adapters."""
