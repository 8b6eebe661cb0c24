#!/usr/bin/env python3
"""Serve a trtflow artifact over HTTP: Starlette + uvicorn in front of a RunnerPool (asyncio end to end).

    pip install 'trtflow[serve]'
    trtflow build examples/serve/cls_jpeg.yaml      # or cls_u8.yaml (raw pixels in)
    python examples/serve/app.py artifacts/cls_jpeg --port 8000 [--instances 2] [--devices all]

``POST /infer``: the body is the (single) input; what that is depends on the artifact's input.

- An encoded input (``encoding: jpeg|png|image`` in the recipe, e.g. recipes/seg_hd_jpeg.yaml): the image
  file's bytes (``image/jpeg``, ``image/png``; the content type is not needed, the file's header says
  what it is). The server does not decode: it hands the bytes to the runner as they came, and the runner
  checks the header and decodes into the engine's input (on the GPU with nvImageCodec when present,
  else on the host with Pillow). A 1600x2560 photo is then ~0.74 MB on the wire and on the bus to the GPU
  instead of 12.3 MB of pixels, and no server CPU time goes to decoding.
- Any other input: the array at its plan shape and dtype, C order, as raw bytes
  (``application/octet-stream``: e.g. the 1600x2560x3 uint8 image of recipes/seg_hd.yaml, 12.3 MB).
  An ``image/*`` body is refused (415): decoding belongs to the runner, build with ``encoding: image``.

The answer:

- outputs computed by ``topk`` reducers: JSON ``{"logits": {"indices": [[...]], "values": [[...]]}}``;
- otherwise the first output's raw bytes (a uint8 mask for seg_hd), ``application/octet-stream``,
  with ``X-Shape`` (e.g. ``1,1600,2560``) and ``X-Dtype`` headers.

``GET /stats``: the input the server takes, where the runner decodes, requests, errors and requests in
flight per instance, and the dispatcher's queue. Errors (JSON ``{"error": ...}``, naming tensor, expected
and got): 400 for a body that does not fit the input (wrong size; for a file: corrupt, truncated, not
JPEG/PNG, not RGB, an image size the engine does not take: the runner's own checks), 413 for a body over
the input's size (for a file: twice its decoded pixels plus 1 MiB), 415 for an image body to a raw input,
503 with ``Retry-After`` when the pool's queue is full (``serving.max_queue``), 500 otherwise. The server
listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import InputError, Overloaded, RunnerClosed
from trtflow.plan.model import TensorPlan
from trtflow.runtime.memory import np_dtype
from trtflow.runtime.pool import RunnerPool

METADATA = 1 << 20  # an image file's room for EXIF, ICC profiles and the like, beyond its pixels


class BodyTooLarge(InputError):
    """A request body over what the input can take (413)."""


class WrongMediaType(InputError):
    """An image body for a raw input (415)."""


def body_limit(t: TensorPlan) -> tuple[int, str]:
    """The most bytes a body for input ``t`` may have, and what that is in words."""
    if t.encoding:
        n, h, w, c = t.max_shape
        return 2 * n * h * w * c + METADATA, f"a {w}x{h} image file: twice its pixels + 1 MiB"
    return int(np.prod(t.shape)) * np_dtype(t.dtype).itemsize, f"{np_dtype(t.dtype)} {list(t.shape)}"


def as_feed(t: TensorPlan, body: bytes, content_type: str) -> Any:
    """The request body as the runner's feed for input ``t``: the file's bytes for an encoded input
    (the runner checks and decodes them), else the raw array at the plan shape."""
    if t.encoding:
        return body
    dtype = np_dtype(t.dtype)
    want = int(np.prod(t.shape)) * dtype.itemsize
    if content_type.startswith("image/"):
        raise WrongMediaType(f"input {t.name!r}: expected the raw {dtype} {list(t.shape)} array "
                         f"(application/octet-stream), got a {content_type} body",
                         hint="send the array's bytes, or serve an artifact whose input declares `encoding: image` "
                              "(the runner decodes; examples/serve/cls_jpeg.yaml)")
    if len(body) != want:
        raise InputError(f"input {t.name!r}: expected {want} bytes ({dtype} {list(t.shape)}), got {len(body)}",
                         hint="send the raw array (C order)")
    return np.frombuffer(body, dtype=dtype).reshape(t.shape)


async def read_body(request: Any, t: TensorPlan) -> bytes:
    """The request body, refused (BodyTooLarge) as soon as its declared or received length is over the limit."""
    limit, what = body_limit(t)

    def too_large(n: int) -> BodyTooLarge:
        return BodyTooLarge(f"input {t.name!r}: expected at most {limit} bytes ({what}), got {n}")

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared))
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise too_large(n)
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(pool: RunnerPool) -> Any:
    """The Starlette application over ``pool`` (which the caller opens and closes)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if len(pool.plan.inputs) != 1:
        raise SystemExit(f"this example serves single-input models; {pool.plan.name} has {len(pool.plan.inputs)}")
    t_in = pool.plan.inputs[0]
    topk = [t for t in pool.plan.outputs if (t.reduce or {}).get("op") == "topk"]
    json_out = len(topk) == len(pool.plan.outputs)
    limit, what = body_limit(t_in)
    takes = {"name": t_in.name, "encoding": t_in.encoding, "body": what if t_in.encoding else
             f"raw {what} (application/octet-stream)", "max_bytes": limit, "decoder": pool.runners[0].decoder}

    async def infer(request: Request) -> Response:
        try:
            body = await read_body(request, t_in)
            out = await pool.infer_feeds({t_in.name: as_feed(t_in, body, request.headers.get("content-type", ""))})
        except InputError as exc:
            code = 413 if isinstance(exc, BodyTooLarge) else 415 if isinstance(exc, WrongMediaType) else 400
            return JSONResponse({"error": str(exc)}, status_code=code)
        except Overloaded as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        except RunnerClosed as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        # the outputs are views into the runner's buffers: serialize them before the next await
        if json_out:
            result: dict[str, dict[str, Any]] = {}
            for t in topk:
                src = str(t.source)
                part = "values" if t.name.endswith("_values") else "indices"
                result.setdefault(src, {})[part] = out[t.name].tolist()
            return JSONResponse(result)
        first = pool.plan.outputs[0]
        y = out[first.name]
        return Response(y.tobytes(), media_type="application/octet-stream",
                        headers={"X-Shape": ",".join(str(d) for d in y.shape), "X-Dtype": str(y.dtype)})

    async def stats(request: Request) -> Response:
        return JSONResponse({"model": pool.plan.name, "backend": pool.backend, "device": pool.device,
                             "input": takes, "queued": pool.queued, "instances": [vars(s) for s in pool.stats()]})

    return Starlette(routes=[Route("/infer", infer, methods=["POST"]), Route("/stats", stats, methods=["GET"])])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path, help="artifact folder (trtflow build ...)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--instances", type=int, default=None, help="engine instances per device (default: the recipe's)")
    ap.add_argument("--devices", default=None, help="'all' or a comma list of GPU indices (default: the recipe's)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = ap.parse_args(argv)
    import uvicorn

    devices: Any = args.devices
    if devices and devices != "all":
        devices = [int(d) for d in devices.split(",")]
    with RunnerPool(args.artifact, instances=args.instances, devices=devices, backend=args.backend,
                    device=args.device) as pool:
        print(json.dumps({"serving": pool.plan.name, "instances": len(pool.runners), "backend": pool.backend,
                          "device": pool.device, "url": f"http://{args.host}:{args.port}/infer"}), flush=True)
        uvicorn.run(make_app(pool), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    sys.exit(main())
