"""Lookahead (Zhang et al., NeurIPS 2019), as TransMIL wraps RAdam with it (``k=5, alpha=0.5``)."""

from __future__ import annotations

import torch


class Lookahead(torch.optim.Optimizer):
    """Every ``k`` steps of the inner optimiser, move the slow weights ``alpha`` of the way to the fast
    weights and restart the fast weights from there."""

    def __init__(self, inner: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 < alpha <= 1, got k={k}, alpha={alpha}")
        self.inner, self.k, self.alpha = inner, k, alpha
        self.param_groups = inner.param_groups  # schedulers see the inner lr
        self.defaults = inner.defaults
        self.state = inner.state
        self._steps = 0
        self._slow = [[p.detach().clone() for p in g["params"]] for g in inner.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure)
        self._steps += 1
        if self._steps % self.k == 0:
            for group, slow in zip(self.inner.param_groups, self._slow):
                for p, q in zip(group["params"], slow):
                    q.add_(p - q, alpha=self.alpha)
                    p.copy_(q)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "steps": self._steps, "slow": self._slow}

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state["inner"])
        self._steps, self._slow = state["steps"], state["slow"]
