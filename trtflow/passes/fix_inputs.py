"""Pass ``fix_inputs``: model inputs the recipe fixes to a value (``inputs.<name>.value``) become constants.

A mode input such as a sample rate (``sr``, rank 0) that the model only branches on is a graph input
the engine would have to read on the host at every call, with an ``If`` on its value that TensorRT
builds both branches of. Fixed, it is an initializer: ``fold_shapes`` then folds the comparison and
inlines the branch taken (see :func:`trtflow.passes.fold.inline_constant_ifs`), so the engine holds one
branch and the runner no longer takes the input. The value is recorded in ``plan.fixed_inputs``;
validation feeds it to the original model.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from trtflow.errors import ModelError
from trtflow.passes._graph import note
from trtflow.plan.model import Plan


def fix_inputs(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Each ``plan.fixed_inputs`` graph input -> an initializer holding its value."""
    if not plan.fixed_inputs:
        return model
    graph = model.graph
    by_name = {vi.name: vi for vi in graph.input}
    for f in plan.fixed_inputs:
        vi = by_name.get(f.name)
        if vi is None:
            raise ModelError(f"fixed input {f.name!r} is not a graph input of the model")
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(f.array(), f.name))
        note(f"input {f.name!r} fixed to {f.value!r} ({f.why})")
    return model
