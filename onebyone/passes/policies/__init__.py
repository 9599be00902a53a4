"""Rank policies: how many bottleneck channels (per group) each candidate conv gets. One file per policy; a policy
registers its name with `register`, and `RankPolicy(name, **options)` builds one by name (the CLI's --policy).

A policy is an object with `kind` (its registered name), `round_to`, `describe()` and `assign(decisions, gains)`,
which gives each candidate conv a rank (plan.accept) or a reason to leave it alone (plan.reject). Class flags say
what else it needs: `uses_gains` (the factor source's model-output gains, for global budgets) and `searched`
(a search over budgets run by onebyone.optimize with calibration data, not by the pass)."""

from __future__ import annotations

from onebyone.passes.policies.base import POLICIES, Policy, RankPolicy, register
from onebyone.passes.policies import budget, energy, error, exact, rank, saving  # noqa: E402,F401 - registration

__all__ = ["POLICIES", "Policy", "RankPolicy", "register"]
