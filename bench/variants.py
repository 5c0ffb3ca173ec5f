"""MNIST test digits re-made as pictures from real sources: scans, photos, thumbnails, the web canvas.

Each variant turns one 28x28 MNIST digit (light ink on black) into the picture a user would
send: mostly black ink on white paper, 100-300 px, encoded as PNG (or JPEG where its
artefacts are the point); a phone photo of a page is bigger, up to 1000 px.
Shapes are changed at four times MNIST's resolution, where a stroke
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
PHOTO_SIZE = (1000, 750)  # at most: a phone photo sent scaled down, as a messaging app or the browser sends it
PHOTO_JPEG_QUALITY = 80
# Inks as a camera sees them (RGB): blue and black ballpoint, red and green felt pens, purple gel.
INKS = ((25, 45, 150), (30, 30, 40), (185, 25, 35), (25, 110, 55), (90, 40, 130))
RULING = ((150, 190, 235), (170, 170, 175), (120, 175, 220))  # light blue and grey printed lines


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
    ink: np.ndarray,
    rng: np.random.Generator,
    paper: int = WHITE,
    ink_level: int = BLACK,
    margin: tuple[int, int] = (8, 40),
) -> Image.Image:
    """Ink coverage 0..1 drawn at ``ink_level`` on a page of ``paper`` grey, 100-300 px, with a random margin."""
    side = int(rng.integers(100, 221))
    coverage = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
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
    blurred = Image.fromarray((enlarged(digit) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.5 * WORK_SCALE)
    )
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
        sheared = big.transform(
            big.size, Image.Transform.AFFINE, (1, shear, -shear * centre, 0, 1, 0), Image.Resampling.BICUBIC
        )
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


def coloured(coverage: np.ndarray, paper: np.ndarray, ink: tuple[int, int, int]) -> Image.Image:
    """Ink coverage 0..1 laid over ``paper`` (H, W, 3 floats) as a pen lays ink: it darkens, never lightens."""
    strength = np.clip(coverage, 0, 1)[..., np.newaxis]
    rgb = paper * (1 - strength) + np.asarray(ink, dtype=np.float64) * strength
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), mode="RGB")


def page_coverage(ink: np.ndarray, rng: np.random.Generator, margin: tuple[int, int] = (8, 40)) -> np.ndarray:
    """``on_paper``'s page as ink coverage 0..1, to be coloured."""
    return 1 - np.asarray(on_paper(ink, rng, margin=margin), dtype=np.float64) / 255.0


def ruled(shape: tuple[int, int], rng: np.random.Generator, spacing: float, vertical: bool) -> np.ndarray:
    """A page's printed lines (1-2 px, light blue or grey) every ``spacing`` px, as a factor 0..1 on the paper."""
    height, width = shape
    colour = np.asarray(RULING[int(rng.integers(len(RULING)))], dtype=np.float64) / 255.0
    thickness = int(rng.integers(1, 3))
    factor = np.ones((height, width, 3))
    for rows, length in ((True, height), (False, width)) if vertical else ((True, height),):
        start = rng.uniform(0, spacing)
        for line in np.arange(start, length, spacing).astype(int):
            lines = slice(line, line + thickness)
            if rows:
                factor[lines, :] = colour
            else:
                factor[:, lines] = colour
    return factor


def render_lined_paper(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Ruled paper: lines about one digit-height apart cross or touch the digit; blue or black ballpoint."""
    coverage = page_coverage(enlarged(digit), rng)
    digit_height = coverage.shape[0] * 0.6
    paper = 250.0 * ruled(coverage.shape, rng, digit_height * rng.uniform(0.55, 1.1), vertical=False)
    return coloured(coverage, paper, INKS[int(rng.integers(2))])


def render_squared_paper(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Squared (maths) paper: a grid of thin lines, two to four squares to the digit's height."""
    coverage = page_coverage(enlarged(digit), rng)
    square = coverage.shape[0] * 0.6 / rng.uniform(2, 4)
    paper = 250.0 * ruled(coverage.shape, rng, square, vertical=True)
    return coloured(coverage, paper, INKS[int(rng.integers(2))])


def render_coloured_ink(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Coloured pens on white or cream paper."""
    cream = np.asarray([(252, 252, 252), (250, 244, 222), (240, 240, 232)][int(rng.integers(3))], dtype=np.float64)
    coverage = page_coverage(enlarged(digit), rng)
    return coloured(coverage, np.broadcast_to(cream, (*coverage.shape, 3)), INKS[int(rng.integers(len(INKS)))])


def render_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A phone photo of a page: a digit of 50-110 px somewhere on a large page lit unevenly, sensor noise, JPEG."""
    width, height = int(rng.integers(700, PHOTO_SIZE[0] + 1)), int(rng.integers(500, PHOTO_SIZE[1] + 1))
    side = int(rng.integers(50, 111))
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    coverage = np.zeros((height, width))
    top, left = int(rng.integers(20, height - side - 20)), int(rng.integers(20, width - side - 20))
    coverage[top : top + side, left : left + side] = ink
    # Light falls off smoothly across the page (a lamp to one side, the lens' vignette): down to 45-85 % of full.
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:height, 0:width] / np.array([height, width])[:, np.newaxis, np.newaxis]
    ramp = np.cos(angle) * cols + np.sin(angle) * rows
    vignette = (rows - 0.5) ** 2 + (cols - 0.5) ** 2
    fall = ramp - ramp.min() + rng.uniform(0, 1) * vignette
    light = (1.0 - fall / fall.max() * rng.uniform(0.15, 0.55))[..., np.newaxis]
    paper = np.asarray((238, 234, 225), dtype=np.float64) * light + rng.normal(0, 3, (height, width, 1))
    picture = np.asarray(coloured(coverage, paper, INKS[int(rng.integers(2))]), dtype=np.float64)
    ink_lit = picture * np.where(coverage[..., np.newaxis] > 0, light, 1.0)  # ink is lit as the paper is
    return Image.fromarray(np.clip(ink_lit, 0, 255).round().astype(np.uint8), mode="RGB")


def render_marker(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A broad felt marker in a small box: strokes ~2.25 px each side at 28 px, a few px of paper around the digit."""
    return on_paper(morphed(digit, 9, morphology.dilation), rng, margin=(0, 6))


def render_specks(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A dusty scan: a few dark specks and a crumb far from the digit, on a wider margin."""
    page = np.asarray(on_paper(enlarged(digit), rng, margin=(30, 70)), dtype=np.uint8).copy()
    height, width = page.shape
    picture = Image.fromarray(page)
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):
        # In the margin band: within 20 px of an edge, so never on the digit.
        radius = float(rng.uniform(1, 3.5))
        along, across = rng.uniform(0, 1), rng.uniform(4, 20)
        edge = int(rng.integers(4))
        top_bottom = [(along * width, across), (along * width, height - across)]
        left_right = [(across, along * height), (width - across, along * height)]
        x, y = (top_bottom + left_right)[edge]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=int(rng.integers(0, 90)))
    return picture


def render_fineliner(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The digit's skeleton drawn with a fine pen: strokes of even width, 2-4 % of the digit's height."""
    skeleton = morphology.skeletonize(enlarged(digit) > 0.5)
    rows, cols = np.nonzero(skeleton)
    side = int(rng.integers(150, 251))
    supersample = 2
    scale = side / skeleton.shape[0] * supersample
    pad = Image.new("L", (side * supersample, side * supersample), WHITE)
    draw = ImageDraw.Draw(pad)
    radius = rng.uniform(0.01, 0.02) * side * supersample
    for row, col in zip(rows, cols, strict=True):
        x, y = col * scale, row * scale
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=BLACK)
    return pad.resize((side, side), Image.Resampling.BOX)


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
    "canvas": Variant(
        render_canvas, f"skeleton drawn with the pad's {CANVAS_BRUSH} px round brush on {CANVAS_SIDE} px"
    ),
    # Appended, never inserted: a variant's seed is its place in this table.
    "lined_paper": Variant(render_lined_paper, "ruled lines ~1 digit-height apart crossing it; blue/black ballpoint"),
    "squared_paper": Variant(render_squared_paper, "a grid of thin lines, 2-4 squares to the digit's height"),
    "coloured_ink": Variant(render_coloured_ink, "blue, black, red, green or purple ink on white or cream"),
    "photo": Variant(render_photo, "50-110 px digit on a 700-1000 px page, uneven light, JPEG 80", image_format="JPEG"),
    "marker": Variant(render_marker, "broad marker (~2.25 px each side) with 0-6 px of paper around it"),
    "specks": Variant(render_specks, "3-8 dark specks in the margin, far from the digit"),
    "fineliner": Variant(render_fineliner, "skeleton drawn with an even fine pen, 2-4 % of the height"),
}


def picture_bytes(picture: Image.Image, image_format: str) -> bytes:
    """The file a user would upload."""
    buffer = io.BytesIO()
    # PNG's compression level changes the file's size, not its pixels: the fastest will do.
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {"compress_level": 1}
    if image_format == "JPEG" and picture.width > 400:  # a photo's JPEG, not a thumbnail's
        options = {"quality": PHOTO_JPEG_QUALITY}
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def render_variant(name: str, images: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    """Every digit of ``images`` (N, 28, 28) as the uploaded file of variant ``name``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    return [picture_bytes(variant.render(image, rng), variant.image_format) for image in images]
