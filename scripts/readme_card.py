"""Make the README's concept-card picture from a demo run's card.

    make demo
    .venv/bin/python scripts/readme_card.py            # -> docs/img/concept_card_demo.png

Reads ``data/08_reporting/<concept>/concept_card.png`` (written by ``evaluate``), trims the white
margin, scales it to at most ``--width`` pixels wide, stores it as a palette PNG and refuses to
write more than ``--max-kb`` (the doc image stays small in git). The demo's photos are public
domain (scikit-image's astronaut, matplotlib's Grace Hopper); its model is a tiny random one, so
the generations are noise.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, ImageChops


def shrink(card: Image.Image, width: int) -> Image.Image:
    """``card`` without its white margin (8 px kept), at most ``width`` wide, 256 colours."""
    rgb = card.convert("RGB")
    box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, "white")).getbbox()
    if box is not None:
        left, top, right, bottom = box
        rgb = rgb.crop((max(left - 8, 0), max(top - 8, 0),
                        min(right + 8, rgb.width), min(bottom + 8, rgb.height)))  # fmt: skip
    if rgb.width > width:
        rgb = rgb.resize((width, round(rgb.height * width / rgb.width)), Image.Resampling.LANCZOS)
    return rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="demo")
    parser.add_argument("--out", default="docs/img/concept_card_demo.png")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--max-kb", type=int, default=300)
    args = parser.parse_args(argv)
    source = Path("data/08_reporting") / args.concept / "concept_card.png"
    if not source.is_file():
        print(f"{source} not found: run `make demo` first")  # noqa: T201
        return 1
    buffer = io.BytesIO()
    shrink(Image.open(source), args.width).save(buffer, format="PNG", optimize=True)
    size_kb = len(buffer.getvalue()) / 1024
    if size_kb > args.max_kb:
        print(f"{size_kb:.0f} KB > --max-kb {args.max_kb}: lower --width")  # noqa: T201
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    print(f"{out}: {size_kb:.0f} KB")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
