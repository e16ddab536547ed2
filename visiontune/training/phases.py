"""`Phase`: one `fit` call, and how phase 2 becomes one phase or gradual stages."""

import dataclasses

from visiontune.common import checks
from visiontune.training.optimizers import OPTIMIZERS, SCHEDULES
from visiontune.tuning import freezing


@dataclasses.dataclass(frozen=True)
class Phase:
    """One `fit` call: what is unfrozen, for how long, and how fast it learns.

    `method` says what trains in the top `unfreeze_blocks` blocks (see
    `freezing.set_trainable_blocks`); `lora_rank` is used by `"lora"`.
    """

    name: str
    epochs: int
    learning_rate: float
    unfreeze_blocks: int = 0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_epochs: int = 0
    lr_decay: float = 1.0
    method: str = "two-phase"
    lora_rank: int = 8
    ema: float = 0.0
    block_patterns: tuple = None  # None: the registry's grouping (freezing._blocks)

    def __post_init__(self):
        checks.check_int(self.epochs, "epochs", 0, where=f" (phase {self.name!r})")
        if not self.learning_rate > 0:
            raise ValueError(
                f"Expected a {self.name} learning rate > 0. Received: {self.learning_rate!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected `optimizer` in {OPTIMIZERS}. "
                             f"Received: {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Expected `schedule` in {SCHEDULES}. Received: {self.schedule!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Expected `lr_decay` in (0, 1]. Received: {self.lr_decay!r}")
        if self.method not in freezing.METHODS:
            raise ValueError(f"Expected `method` in {freezing.METHODS}. "
                             f"Received: {self.method!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"Expected `ema` in [0, 1). Received: {self.ema!r}")
        if self.epochs and not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"Expected `warmup_epochs` between 0 and {self.epochs}. "
                             f"Received: {self.warmup_epochs!r}")


def finetune_phases(epochs, learning_rate, unfreeze_blocks, optimizer="adam",
                    schedule="cosine", warmup_epochs=1, lr_decay=1.0, gradual_epochs=0,
                    method="two-phase", lora_rank=8, ema=0.0, block_patterns=None):
    """Phase 2 as one `Phase`, or with `gradual_epochs` as one stage per unfrozen block."""
    if not gradual_epochs:
        return [Phase("finetune", epochs, learning_rate, unfreeze_blocks, optimizer, schedule,
                      warmup_epochs, lr_decay, method, lora_rank, ema, block_patterns)]
    last = epochs - gradual_epochs * (unfreeze_blocks - 1)
    if unfreeze_blocks < 1 or last < 1:
        raise ValueError(
            f"Gradual unfreezing of {unfreeze_blocks} blocks, {gradual_epochs} epochs each "
            f"before the last, needs finetune_epochs > {gradual_epochs * (unfreeze_blocks - 1)}."
            f" Received: finetune_epochs={epochs}. Raise it, or lower gradual_epochs.")
    return [Phase(f"finetune-{n}", gradual_epochs if n < unfreeze_blocks else last,
                  learning_rate, n, optimizer, schedule, warmup_epochs if n == 1 else 0,
                  lr_decay, method, lora_rank, ema, block_patterns)
            for n in range(1, unfreeze_blocks + 1)]
