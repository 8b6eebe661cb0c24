"""Shared test helpers, one module per subject; test files import them as ``from helpers import runtime as sup``.

pytest puts tests/ on sys.path (the folder of tests/conftest.py, prepend import mode), so no test inserts
paths itself. Modules: ``runtime`` (fake CUDA runtime, fake CUDA engine, artifact builders), ``models``
(small ONNX models, plan_for, ROOT/MODELS), ``passes``, ``numerics``, ``ecosystem`` (real builds for
init/inspect/export), ``trt_fake`` (a faithful fake of the TensorRT bindings), ``docs_snippets``,
``image_files``.
"""
