"""Code generation: the artifact's ``runner.py`` from its plan (see :mod:`trtflow.codegen.runner`)."""

from trtflow.codegen.runner import CodegenError, generate_runner, write_runner

__all__ = ["CodegenError", "generate_runner", "write_runner"]
