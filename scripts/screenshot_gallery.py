"""Render a gallery page (``serving/gallery.py``) in headless Chromium: a screenshot and its DOM.

    .venv/bin/python scripts/screenshot_gallery.py data/08_reporting/demo/gallery/index.html \\
        --out gallery.png

Chromium (Debian ``chromium``: ``apt-get install -y chromium``) runs with ``--headless
--no-sandbox --disable-gpu --disable-background-networking --disable-component-update
--disable-sync --no-first-run`` and a fresh ``--user-data-dir`` (deleted afterwards). Prints
the number of images the browser decoded (``naturalWidth > 0``, read from the rendered DOM) and
exits 1 when an ``<img>`` did not load (a broken relative path) or the screenshot is missing;
exit 3 when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-file-access-from-files",
)
# Written into the DOM after load, so --dump-dom shows how many images decoded.
PROBE = (
    "<script>addEventListener('load',()=>{const i=[...document.images];"
    "document.body.setAttribute('data-loaded',i.filter(x=>x.naturalWidth>0).length+'/'+i.length)"
    "})</script>"
)
NO_CHROMIUM = 3


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(binary: str, *args: str, timeout: float = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="gallery-chromium-") as profile:
        done = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 1600) -> tuple[int, int]:
    """Screenshot ``page`` into ``out``; returns (images decoded, images on the page)."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium")
    page = page.resolve()
    # the probe goes into a copy beside the page, so relative image paths stay the same
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8")
    try:
        common = (f"--window-size={width},{height}", "--virtual-time-budget=5000")
        dom = run_chromium(binary, *common, "--dump-dom", probe.as_uri())
        run_chromium(binary, *common, f"--screenshot={out.resolve()}", page.as_uri())
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    if not found:
        raise RuntimeError("the page did not finish loading in Chromium (no load event)")
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot at {out}")
    return int(found.group(1)), int(found.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the gallery's index.html")
    parser.add_argument("--out", type=Path, default=Path("gallery.png"))
    args = parser.parse_args(argv)
    if chromium_binary() is None:
        sys.stderr.write("CHROMIUM NOT INSTALLED: apt-get install -y chromium\n")
        return NO_CHROMIUM
    loaded, total = screenshot(args.page, args.out)
    sys.stdout.write(f"{args.out}: {loaded}/{total} images decoded\n")
    if loaded != total or total == 0:
        sys.stderr.write(f"{total - loaded} of {total} images did not load in Chromium\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
