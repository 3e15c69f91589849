"""The training core: state, the step and its parts, optimizers, checkpoints, the drivers and the loop."""
