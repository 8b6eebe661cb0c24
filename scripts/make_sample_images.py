#!/usr/bin/env python3
"""Write the shipped sample image data/street_1600x2560.jpg (photo-like, deterministic).

    .venv/bin/python scripts/make_sample_images.py [--check]

The scene comes from trtflow.decode.synth.photo(1600, 2560, seed=0) (numpy only) and is encoded by
Pillow (libjpeg-turbo) at quality 90, 4:2:0: about 0.74 MB, 1/17 of the 12.3 MB of decoded uint8
pixels, like the 0.71 MB photograph measured in shared/notes/environment.md. --check regenerates the
image in memory and compares the decoded pixels with the committed file (JPEG bytes can differ
between libjpeg-turbo versions; the pixels of one encoder version cannot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trtflow.decode import host, inspect, synth

TARGET = ROOT / "data" / "street_1600x2560.jpg"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = ap.parse_args()
    data = host.encode(synth.photo(1600, 2560, seed=0), "jpeg", quality=90)
    if args.check:
        have = TARGET.read_bytes()
        a, b = host.decode_rgb(have, inspect(have)), host.decode_rgb(data, inspect(data))
        diff = int(np.abs(a.astype(int) - b).max())
        print(f"{TARGET.name}: {len(have)} B committed, {len(data)} B regenerated, max pixel difference {diff}")
        return 0 if diff <= 1 else 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(data)
    print(f"wrote {TARGET} ({len(data)} B, {inspect(data).describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
