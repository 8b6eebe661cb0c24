"""Plan: the resolved, frozen description of what gets built and run.

``make_plan`` (recipe -> plan) needs pydantic and onnx; it is imported lazily so that the runtime, which
only reads ``plan.json``, runs with numpy and the engine's library alone.
"""

from typing import TYPE_CHECKING, Any

from trtflow.plan.model import BuildInfo, Plan, TensorPlan

if TYPE_CHECKING:
    from trtflow.plan.planner import make_plan

__all__ = ["BuildInfo", "Plan", "TensorPlan", "make_plan"]


def __getattr__(name: str) -> Any:
    if name == "make_plan":
        from trtflow.plan.planner import make_plan

        return make_plan
    raise AttributeError(name)
