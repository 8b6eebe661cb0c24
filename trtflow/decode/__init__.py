"""Encoded images (JPEG, PNG) as engine inputs: header checks, the GPU decoder, the host decoder.

| module | owns | imports |
|---|---|---|
| ``header``     | what a file is, from its header: codec, size after EXIF orientation, colour model, bits, truncation | nothing |
| ``nvimgcodec`` | every nvImageCodec call (GPU decode into the engine's input buffer) | ``nvidia.nvimgcodec``, lazily |
| ``host``       | decoding on the CPU: libjpeg-turbo / libpng through Pillow | ``PIL``, lazily |
| ``synth``      | deterministic photo-like test images | numpy |

The runner's input stage (``trtflow.runtime.encoded``) stages the file bytes and orders the decode with
the engine; these modules know nothing about streams or buffers beyond the addresses they are given.
"""

from trtflow.decode.header import ImageHeader, ImageProblem, check_rgb, inspect, sniff

__all__ = ["ImageHeader", "ImageProblem", "check_rgb", "inspect", "sniff"]
