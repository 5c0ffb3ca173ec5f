"""MNIST test digits re-made as pictures from real sources: scans, photos, thumbnails, the web canvas.

Each variant turns one 28x28 MNIST digit (light ink on black) into the picture a user would
send: mostly black ink on white paper, 100-300 px, encoded as PNG (or JPEG where its
artefacts are the point). Shapes are changed at four times MNIST's resolution, where a stroke
is 8-12 px wide, so that thickening, thinning and skeletons stay smooth. Everything random
comes from the generator passed in, so a seed gives the same pictures every time.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage import morphology

WORK_SCALE = 4  # shapes are changed on a 112x112 copy of the 28x28 digit
WHITE, BLACK = 255, 0
CANVAS_SIDE = 280  # web/templates: the drawing pad's size
CANVAS_BRUSH = 20  # web/static/draw.js STROKE_WIDTH, round caps and joins
JPEG_QUALITY = 15
SHEAR = 0.35  # x shifts by 0.35 px per px of height: a ~19 degree slant
TIGHT_CROP_INK = 128  # a tight crop keeps the pixels at least this much darker than the paper


@dataclasses.dataclass(frozen=True)
class Variant:
    """How to make the picture, and how it is sent; ``light_ink`` when the ink is lighter than the paper."""

    render: Callable[[np.ndarray, np.random.Generator], Image.Image]
    what: str
    image_format: str = "PNG"
    light_ink: bool = False


def enlarged(digit: np.ndarray, scale: int = WORK_SCALE) -> np.ndarray:
    """The digit as ink coverage 0..1 on a grid ``scale`` times finer (bicubic, as a scanner resamples)."""
    side = digit.shape[0] * scale
    big = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float64) / 255.0


def on_paper(
    ink: np.ndarray, rng: np.random.Generator, paper: int = WHITE, ink_level: int = BLACK, margin: tuple[int, int] = (8, 40)
) -> Image.Image:
    """Ink coverage 0..1 drawn at ``ink_level`` on a page of ``paper`` grey, 100-300 px, with a random margin."""
    side = int(rng.integers(100, 221))
    coverage = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    coverage = np.asarray(coverage, dtype=np.float64) / 255.0
    top, bottom, left, right = (int(rng.integers(margin[0], margin[1] + 1)) for _ in range(4))
    page = np.pad(coverage, ((top, bottom), (left, right)))
    grey = paper + (ink_level - paper) * page
    return Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), mode="L")


def cropped_to_ink(picture: Image.Image, paper: int = WHITE) -> Image.Image:
    """The picture cut to the bounding box of its ink: the digit touches all four edges."""
    grey = np.asarray(picture, dtype=np.int16)
    rows, cols = np.nonzero(np.abs(grey - paper) >= TIGHT_CROP_INK)
    return picture.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))


def morphed(digit: np.ndarray, radius: int, operation: Callable) -> np.ndarray:
    return operation(enlarged(digit), morphology.disk(radius))


def render_clean(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(digit, mode="L")


def render_thick(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return on_paper(morphed(digit, 5, morphology.dilation), rng)


def render_thin(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return on_paper(morphed(digit, 3, morphology.erosion), rng)


def render_tight_crop(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return cropped_to_ink(on_paper(enlarged(digit), rng))


def render_fills_box(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A scanned form's box: a thick digit cut tight, so its ink touches every edge."""
    return cropped_to_ink(on_paper(morphed(digit, 6, morphology.dilation), rng))


def render_blur(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    blurred = Image.fromarray((enlarged(digit) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5 * WORK_SCALE))
    return on_paper(np.asarray(blurred, dtype=np.float64) / 255.0, rng)


def low_resolution(side: int) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    def render(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
        small = Image.fromarray(digit).resize((side, side), Image.Resampling.BOX)
        return on_paper(np.asarray(small, dtype=np.float64) / 255.0, rng)  # on_paper enlarges it again, bilinear

    return render


def slanted(direction: int) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    def render(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
        big = Image.fromarray((enlarged(digit) * 255).astype(np.uint8))
        shear = direction * SHEAR
        centre = big.height / 2
        # PIL maps each output (x, y) to the input (x + shear * (y - centre), y).
        sheared = big.transform(big.size, Image.Transform.AFFINE, (1, shear, -shear * centre, 0, 1, 0), Image.Resampling.BICUBIC)
        return on_paper(np.asarray(sheared, dtype=np.float64) / 255.0, rng)

    return render


def render_off_centre_small(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A small digit near a corner of a big page: 30-45 px on 400x300."""
    side = int(rng.integers(30, 46))
    small = Image.fromarray(WHITE - digit).resize((side, side), Image.Resampling.BILINEAR)
    page = Image.new("L", (400, 300), WHITE)
    left = int(rng.choice([rng.integers(0, 40), rng.integers(400 - side - 40, 400 - side)]))
    top = int(rng.choice([rng.integers(0, 30), rng.integers(300 - side - 30, 300 - side)]))
    page.paste(small, (left, top))
    return page


def render_light_on_dark(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Chalk on a blackboard, or white ink on a dark screen."""
    return on_paper(enlarged(digit), rng, paper=int(rng.integers(20, 70)), ink_level=int(rng.integers(200, 256)))


def render_dark_on_grey(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A photo of paper in poor light: grey paper, ink that is not black."""
    return on_paper(enlarged(digit), rng, paper=int(rng.integers(150, 201)), ink_level=int(rng.integers(20, 71)))


def render_pencil(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Graphite on white: 50-80 grey levels of contrast."""
    return on_paper(enlarged(digit), rng, paper=int(rng.integers(230, 251)), ink_level=int(rng.integers(160, 181)))


def render_jpeg(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return on_paper(enlarged(digit), rng).convert("RGB")  # a camera's JPEG is colour


def render_canvas(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The digit's skeleton drawn with the web pad's round brush on its white 280x280 canvas (RGBA PNG, as toBlob)."""
    skeleton = morphology.skeletonize(enlarged(digit) > 0.5)
    rows, cols = np.nonzero(skeleton)
    supersample = 2  # browsers antialias strokes: draw at twice the size, then shrink
    scale = rng.uniform(0.7, 1.0) * CANVAS_SIDE / skeleton.shape[0]
    offset = rng.uniform(0, CANVAS_SIDE - scale * skeleton.shape[0], size=2)
    pad = Image.new("L", (CANVAS_SIDE * supersample, CANVAS_SIDE * supersample), WHITE)
    draw = ImageDraw.Draw(pad)
    radius = CANVAS_BRUSH * supersample / 2
    for row, col in zip(rows, cols, strict=True):
        x, y = (offset[0] + col * scale) * supersample, (offset[1] + row * scale) * supersample
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=BLACK)
    return pad.resize((CANVAS_SIDE, CANVAS_SIDE), Image.Resampling.BOX).convert("RGBA")


VARIANTS: dict[str, Variant] = {
    "clean": Variant(render_clean, "the 28x28 test image itself, light on black", light_ink=True),
    "thick": Variant(render_thick, "strokes dilated by ~1.25 px each side (at 28 px)"),
    "thin": Variant(render_thin, "strokes eroded by ~0.75 px each side"),
    "tight_crop": Variant(render_tight_crop, "cut to the ink's bounding box: touches every edge"),
    "fills_box": Variant(render_fills_box, "thick strokes cut to the ink: a scanned form's box"),
    "blur": Variant(render_blur, "Gaussian blur, sigma 1.5 px at 28 px"),
    "low_res_16": Variant(low_resolution(16), "shrunk to 16x16, then enlarged"),
    "low_res_8": Variant(low_resolution(8), "shrunk to 8x8, then enlarged"),
    "slant_right": Variant(slanted(1), "sheared 0.35 (~19 degrees) to the right"),
    "slant_left": Variant(slanted(-1), "sheared 0.35 (~19 degrees) to the left"),
    "off_centre_small": Variant(render_off_centre_small, "30-45 px near a corner of a 400x300 page"),
    "light_on_dark": Variant(render_light_on_dark, "light ink on a dark board", light_ink=True),
    "dark_on_grey": Variant(render_dark_on_grey, "dark ink on grey paper (150-200)"),
    "pencil": Variant(render_pencil, "faint grey ink (160-180) on white: low contrast"),
    "jpeg": Variant(render_jpeg, f"black on white, JPEG quality {JPEG_QUALITY}", image_format="JPEG"),
    "canvas": Variant(render_canvas, f"skeleton drawn with the pad's {CANVAS_BRUSH} px round brush on {CANVAS_SIDE} px"),
}


def picture_bytes(picture: Image.Image, image_format: str) -> bytes:
    """The file a user would upload."""
    buffer = io.BytesIO()
    # PNG's compression level changes the file's size, not its pixels: the fastest will do.
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {"compress_level": 1}
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def render_variant(name: str, images: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    """Every digit of ``images`` (N, 28, 28) as the uploaded file of variant ``name``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    return [picture_bytes(variant.render(image, rng), variant.image_format) for image in images]
