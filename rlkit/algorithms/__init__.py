"""Algorithm core: advantage estimators and policy losses (pure tensor math).

See docs/algorithms.md for formulas, references and defaults, docs/custom_loss.md for
writing your own loss.
"""

from rlkit.algorithms.advantages import (
    UnknownNameError,
    available_advantages,
    get_advantage,
    register_advantage,
)
from rlkit.algorithms.losses import (
    AGG_MODES,
    KL_KINDS,
    CISPOLoss,
    DAPOLoss,
    DrGRPOLoss,
    GRPOLoss,
    GSPOLoss,
    LossInputs,
    LossOutput,
    PolicyLoss,
    ReinforceLoss,
    aggregate,
    available_losses,
    build_loss,
    get_loss_class,
    kl_penalty,
    register_loss,
    tis_weights,
)

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "CISPOLoss",
    "DAPOLoss",
    "DrGRPOLoss",
    "GRPOLoss",
    "GSPOLoss",
    "LossInputs",
    "LossOutput",
    "PolicyLoss",
    "ReinforceLoss",
    "UnknownNameError",
    "aggregate",
    "available_advantages",
    "available_losses",
    "build_loss",
    "get_advantage",
    "get_loss_class",
    "kl_penalty",
    "register_advantage",
    "register_loss",
    "tis_weights",
]
