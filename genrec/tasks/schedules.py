"""Learning-rate schedules that depend on the run's length.

The task calls a scheduler partial with `total_steps` (Lightning's
`trainer.estimated_stepping_batches`: max_epochs x optimizer steps per epoch) when the
partial takes that argument, so a schedule follows `trainer.max_epochs` without a step
count written into the config.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 final_factor: float = 0.0) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then a half cosine from the optimizer's lr down to
    `final_factor` x lr at `total_steps` (held there if training runs longer)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"task.scheduler: need 0 <= warmup_steps < total_steps, got {warmup_steps} "
                         f"and {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
