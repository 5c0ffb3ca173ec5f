"""Screenshots for the documentation site, taken by the browser and monitoring tests.

With ``MNIST_DOCS_SCREENSHOTS=docs/images`` (as .ci/run sets it) those tests write the pictures the
docs pages embed into that folder, so every CI run builds its site with pictures of the pages as
they are; without it they write nothing there, and an ordinary run leaves the tree as it was. A
relative folder is taken from the project's root.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from tests.support.services import PROJECT_ROOT

FOLDER_VARIABLE = "MNIST_DOCS_SCREENSHOTS"
# A page of flat colours and anti-aliased text loses nothing a reader sees in a palette of 256
# colours, and its PNG is a third or less of the true-colour one.
PALETTE_COLOURS = 256
MARGIN = 24  # px kept below the last element shown, so a cropped page does not end on its text
RELAYOUT_MS = 300  # for a page that redraws on a resize (Prometheus' graphs) to have done so
# What holds a page's content: the web's <main>; Prometheus' classic UI has no <main>, its <body> then.
CONTENT_BOTTOM = """() => {
  const content = document.querySelector('main') || document.body;
  return Math.ceil(content.getBoundingClientRect().bottom + window.scrollY);
}"""


def docs_folder() -> Path | None:
    """Where the docs' pictures go, or None when this run should not write them."""
    folder = os.environ.get(FOLDER_VARIABLE, "").strip()
    if not folder:
        return None
    path = Path(folder)
    return path if path.is_absolute() else PROJECT_ROOT / path


def save_for_docs(page, name: str) -> Path | None:
    """A screenshot of ``page`` down to the end of its content, as docs folder/``name``; None when off."""
    folder = docs_folder()
    if folder is None:
        return None
    viewport = page.viewport_size
    # The viewport made as tall as the content, rather than a full-page screenshot: a header fixed
    # at the top (Prometheus') stays at the top of the picture instead of where the view was.
    page.set_viewport_size({"width": viewport["width"], "height": page.evaluate(CONTENT_BOTTOM) + MARGIN})
    try:
        page.wait_for_timeout(RELAYOUT_MS)
        png = page.screenshot()
    finally:
        page.set_viewport_size(viewport)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(small_png(png))
    return target


def small_png(png: bytes) -> bytes:
    """The same picture in a palette, compressed as far as Pillow goes."""
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    palette = picture.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()
