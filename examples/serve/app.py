#!/usr/bin/env python3
"""Serve a trtflow artifact over HTTP: Starlette + uvicorn in front of a RunnerPool (asyncio end to end).

    pip install 'trtflow[serve]'
    trtflow build examples/serve/cls_u8.yaml
    python examples/serve/app.py artifacts/cls_u8 --port 8000 [--instances 2] [--devices all]

``POST /infer``: the body is the (single) input at its plan shape and dtype, as raw bytes
(``application/octet-stream``: e.g. the 1600x2560x3 uint8 image of recipes/seg_hd.yaml, 12.3 MB), or
a PNG/JPEG of that size (``image/png``, ``image/jpeg``: decoded with Pillow). The answer:

- outputs computed by ``topk`` reducers: JSON ``{"logits": {"indices": [[...]], "values": [[...]]}}``;
- otherwise the first output's raw bytes (a uint8 mask for seg_hd), ``application/octet-stream``,
  with ``X-Shape`` (e.g. ``1,1600,2560``) and ``X-Dtype`` headers.

``GET /stats``: requests, errors and requests in flight per instance, and the dispatcher's queue.
Errors: 400 for a body that does not fit the input (the message names tensor, expected and got),
413 for a body over the input's size, 503 with ``Retry-After`` when the pool's queue is full
(``serving.max_queue``), 500 otherwise. The server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import InputError, Overloaded, RunnerClosed
from trtflow.runtime.memory import np_dtype
from trtflow.runtime.pool import RunnerPool


def _decode(body: bytes, content_type: str, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """The request body as the input array: raw bytes, or an image decoded with Pillow."""
    want = int(np.prod(shape)) * dtype.itemsize
    if content_type.startswith("image/"):
        try:
            from PIL import Image
        except ImportError:
            raise InputError("image bodies need Pillow on the server", hint="pip install pillow, or send raw bytes") from None
        try:
            img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's body
            raise InputError(f"input {name!r}: cannot decode the {content_type} body ({exc})") from None
        if img.size != int(np.prod(shape)):
            raise InputError(f"input {name!r}: expected an image of {int(np.prod(shape)) // 3} RGB pixels "
                             f"(shape {list(shape)}), got {list(img.shape)}")
        return img.reshape(shape)
    if len(body) != want:
        raise InputError(f"input {name!r}: expected {want} bytes ({dtype} {list(shape)}), got {len(body)}",
                         hint="send the raw array (C order), or a PNG/JPEG with Content-Type image/png|jpeg")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def make_app(pool: RunnerPool) -> Any:
    """The Starlette application over ``pool`` (which the caller opens and closes)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if len(pool.plan.inputs) != 1:
        raise SystemExit(f"this example serves single-input models; {pool.plan.name} has {len(pool.plan.inputs)}")
    t_in = pool.plan.inputs[0]
    in_dtype = np_dtype(t_in.dtype)
    in_bytes = int(np.prod(t_in.shape)) * in_dtype.itemsize
    topk = [t for t in pool.plan.outputs if (t.reduce or {}).get("op") == "topk"]
    json_out = len(topk) == len(pool.plan.outputs)

    async def infer(request: Request) -> Response:
        body = await request.body()
        if len(body) > 4 * in_bytes + (1 << 20):  # an image file is smaller than the raw array it decodes to
            return JSONResponse({"error": f"body of {len(body)} bytes is too large"}, status_code=413)
        try:
            x = _decode(body, request.headers.get("content-type", ""), t_in.name, t_in.shape, in_dtype)
            out = await pool.infer_feeds({t_in.name: x})
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
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
                             "queued": pool.queued, "instances": [vars(s) for s in pool.stats()]})

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
