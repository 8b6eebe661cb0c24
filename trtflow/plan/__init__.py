"""Plan: the resolved, frozen description of what gets built and run."""

from trtflow.plan.model import BuildInfo, Plan, TensorPlan
from trtflow.plan.planner import make_plan

__all__ = ["BuildInfo", "Plan", "TensorPlan", "make_plan"]
