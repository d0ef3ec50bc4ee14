"""FitNets (Romero et al., ICLR 2015): a student layer, through a trainable regressor, regresses a teacher layer.

loss = feature_weight · Σ_pairs MSE(regressor(s), t) + alpha · CE + beta · KD, defaults 1, 1, 0. (mdistiller's CIFAR
baseline weighs the hint 100; with a bare 1x1-convolution regressor and SGD at 0.05 that diverged on the digits
CNNs here, so the default is 1: raise it with ``feature_weight``.) The paper's stage 1 — train the student up to the
guided layer on the hint alone — is ``hint_epochs``: during the first epochs the hint is the only term, so only
the parameters that feed the guided layer (and the regressor) move.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from .base import Outputs, SetupContext, StepState, register
from .features import FeatureMethod, FeatureParams, align, projection


class FitNetsParams(FeatureParams):
    hint_epochs: int = Field(0, ge=0, description="stage 1: epochs trained on the hint alone")


@register("fitnets")
class FitNetsMethod(FeatureMethod):
    Params = FitNetsParams
    params: FitNetsParams

    def __init__(self, params: FitNetsParams, num_classes: int) -> None:
        super().__init__(params, num_classes)
        self.regressors: nn.ModuleList | None = None

    def setup(self, ctx: SetupContext) -> None:
        self.regressors = nn.ModuleList(projection(s[0], t[0], image=len(s) == 3) for s, t in self.paired_shapes(ctx))

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.regressors is None else {"regressors": self.regressors}

    def compute(
        self, batch: dict[str, Tensor], student: Outputs, teacher: Outputs | None, state: StepState
    ) -> dict[str, Tensor]:
        assert teacher is not None and self.regressors is not None, "fitnets needs setup() and a teacher"
        hint = sum(
            F.mse_loss(*align(regressor(s), t))
            for regressor, (s, t) in zip(self.regressors, self.pairs(student, teacher), strict=True)
        )
        terms = {"hint": self.params.feature_weight * hint}
        if state.epoch >= self.params.hint_epochs:
            terms.update(self.logit_terms(batch, student, teacher))
        return terms  # type: ignore[return-value]
