"""Parameter-tree surgery for transfer: load / rename / graft / vocab-map a pretrained tree into
a new model's tree by the encoders' roles, insert parameter-efficient modules from outside the
model, freeze and scale via optimizer labels, named strategy presets.

Entry point for a trainer: `xrec.transfer.apply.prepare(config.transfer, overlap)` (see its docstring).
"""

from xrec.transfer.apply import SourceEncoder, TransferPlan, prepare
from xrec.transfer.strategies import STRATEGIES, Strategy, applicable, get_strategy

__all__ = ["SourceEncoder", "TransferPlan", "prepare", "STRATEGIES", "Strategy", "applicable", "get_strategy"]
