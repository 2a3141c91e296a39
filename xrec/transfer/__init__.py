"""Parameter-tree surgery for transfer: load / rename / graft / vocab-map a pretrained tree into
a new model's tree, freeze and scale via optimizer labels, named strategy presets.

Entry point for a training loop: `xrec.transfer.apply.prepare(config)` (see its docstring).
"""

from xrec.transfer.apply import TransferPlan, prepare
from xrec.transfer.strategies import STRATEGIES, Strategy, get_strategy

__all__ = ["TransferPlan", "prepare", "STRATEGIES", "Strategy", "get_strategy"]
