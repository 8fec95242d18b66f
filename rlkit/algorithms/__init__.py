"""Algorithm core: advantage estimators, policy losses and regularizers (pure tensor math).

See docs/algorithms.md for formulas, references and defaults, docs/custom_loss.md for
writing your own loss.
"""

from rlkit.algorithms.advantages import (
    UnknownNameError,
    available_advantages,
    get_advantage,
    register_advantage,
)
from rlkit.algorithms.hapo import HAPOLoss  # registers the `hapo` loss
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
from rlkit.algorithms.regularizers import (
    LLDS,
    Regularizer,
    available_regularizers,
    build_regularizer,
    register_regularizer,
)

__all__ = [
    "HAPOLoss",
    "AGG_MODES",
    "KL_KINDS",
    "LLDS",
    "CISPOLoss",
    "DAPOLoss",
    "DrGRPOLoss",
    "GRPOLoss",
    "GSPOLoss",
    "LossInputs",
    "LossOutput",
    "PolicyLoss",
    "Regularizer",
    "ReinforceLoss",
    "UnknownNameError",
    "aggregate",
    "available_advantages",
    "available_losses",
    "available_regularizers",
    "build_loss",
    "build_regularizer",
    "get_advantage",
    "get_loss_class",
    "kl_penalty",
    "register_advantage",
    "register_loss",
    "register_regularizer",
    "tis_weights",
]
