"""A user's picture -> a 28x28 digit in MNIST form, refusing what is not a picture of one.

Used by the web (uploads and drawings) and by ``producer ingest folder``. Decoding is
guarded: the format, the pixel count (judged from the header, before decoding, so a
decompression bomb costs milliseconds) and animation are checked first.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import threading

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.digits import IMAGE_SHAPE, IMAGE_SIDE
from shared.images.page import LINE_CONTRAST, digit_box, evenly_lit, ruling

# Bumped whenever to_mnist_form's output for some picture changes: a stored digit records the version
# that made it, so digits made before and after a change can be told apart (and made again from the picture).
PREPROCESS_VERSION = 2
# MNIST digits were scaled to fit a 20x20 box, then centred by mass in the 28x28 field.
DIGIT_BOX_SIDE = 20
INK_THRESHOLD = (
    30  # grey levels beyond the paper's that count as ink when cropping (and the least contrast taken as a digit)
)
# The border decides which side of Otsu's threshold is paper when this share of it agrees;
# a border held mostly by the digit (a tight crop of a boxy 0) leaves it to the overall minority.
BORDER_DECIDES = 0.75
INK_LEVEL_PERCENTILE = 99  # the ink's level, ignoring a few stray pixels, is stretched to 255
# Shrink by whole factors (a box filter) to within this many times the 20 px box before Lanczos:
# Pillow's own shortcut, indistinguishable at 20 px, and a big crop costs a fraction of full Lanczos.
RESIZE_REDUCING_GAP = 3.0
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})
# Pictures are analysed at no more than this many pixels a side: far beyond what a 20 px digit
# needs, and it keeps every step after the decode small whatever the picture's size.
ANALYSIS_SIDE = 1024
# Defaults of MAX_DECODE_MEGABYTES and CONCURRENT_DECODES: together they bound a process's
# memory whatever its clients send.
DEFAULT_MAX_DECODE_BYTES = 100 * 2**20
DEFAULT_CONCURRENT_DECODES = 2


def open_user_image(data: bytes, max_pixels: int, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """Open an uploaded file, refusing non-images, decompression bombs and pictures that would cost
    more than ``max_decode_bytes`` to decode, all judged from the header before decoding."""
    if not data:
        raise ValueError("the file is empty")
    try:
        picture = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise ValueError("the file is not an image in a supported format (PNG, JPEG, GIF, BMP, WebP)") from None
    except Image.DecompressionBombError:
        # Pillow's own guard fires at open for absurd sizes, before ours can name the limit.
        raise ValueError(f"the image has too many pixels; at most {max_pixels} pixels are accepted") from None
    if picture.format not in ACCEPTED_FORMATS:
        raise ValueError(f"image format {picture.format} is not accepted (PNG, JPEG, GIF, BMP, WebP)")
    width, height = picture.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ValueError(f"image is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    if picture.format == "JPEG":  # decoded straight to grey at a reduced scale: the one format that can
        side = max(width, height)
        if side > ANALYSIS_SIDE:
            # At least a pixel a side: a long thin picture's short side would round to none.
            scaled = (max(1, width * ANALYSIS_SIDE // side), max(1, height * ANALYSIS_SIDE // side))
            try:
                picture.draft("L", scaled)
            except Exception as error:  # a corrupt header may make Pillow raise any kind
                raise ValueError(f"the image could not be decoded: {error or 'a corrupt header'}") from None
    if decode_bytes(picture) > max_decode_bytes:
        limit = max_decode_bytes * width * height // decode_bytes(picture)
        raise ValueError(
            f"image is {width}x{height} pixels, too large to decode as {picture.format};"
            f" at most about {limit} pixels are accepted in this format"
        )
    try:
        animated = getattr(picture, "is_animated", False)
        picture.load()
    except Image.DecompressionBombError as error:
        raise ValueError(f"the image could not be decoded: {error}") from None
    except Exception as error:  # Pillow's decoders raise many kinds for corrupt data, not only OSError
        raise ValueError(f"the image could not be decoded: {error or 'truncated data'}") from None
    if animated:
        # Which frame holds the digit is a guess; a wrong guess would be a confident wrong answer.
        raise ValueError("animated or multi-frame images are not accepted: send a single still picture of one digit")
    return picture


def decode_bytes(picture: Image.Image) -> int:
    """The memory that decoding and greying ``picture`` holds at its peak, from its header.

    Pillow's WebP decoder keeps the decoder's RGBA buffer, a copy and the picture at once; the
    other formats hold the decoded bands plus a grey band and an alpha band.
    """
    pixels = picture.width * picture.height
    if picture.format == "WEBP":
        return pixels * 16
    bands = 4 if picture.mode == "P" and "transparency" in picture.info else len(picture.getbands())
    return pixels * (bands + 2)


@functools.cache
def decode_slots(count: int) -> threading.BoundedSemaphore:
    """The process's permits to decode: a burst of big pictures waits here rather than piling up in memory."""
    return threading.BoundedSemaphore(count)


def to_mnist_form(picture: Image.Image) -> np.ndarray:
    """Greyscale, light ink on black paper, cropped to the ink, 20 px box, centred by mass: as MNIST was made.

    Ink and paper are told apart by Otsu's threshold rather than by the median, which is ink
    when the digit fills the frame (a tight crop of a thick 0). Paper goes to 0 and the ink's
    level to 255, so grey paper leaves no grey box and faint pencil is as strong as MNIST's ink;
    an MNIST digit (paper 0, ink 255) comes through with its grey levels as they are.
    """
    return form_of_grey(grey_pixels(picture))


def grey_pixels(picture: Image.Image) -> np.ndarray:
    """The picture's grey levels as ``to_mnist_form`` analyses them: ink on white, at most ANALYSIS_SIDE a side."""
    return np.asarray(_reduced(_grey_on_white(picture)))


def form_of_grey(grey: np.ndarray) -> np.ndarray:
    """``to_mnist_form`` of a picture whose ``grey_pixels`` are ``grey``."""
    pixels = evenly_lit(grey)
    levels = _light_ink_levels(pixels, np.bincount(pixels.ravel(), minlength=256))
    if levels is None:
        return np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    ink = levels.ink(pixels)
    lines = ruling(levels.marks(pixels), ink)
    if lines is not None:
        ink &= ~lines
    box = digit_box(ink)
    if box is None:  # the ink's level only just clears the paper's, and no pixel lies beyond it
        return np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    # Only the crop is mapped through the table: a small digit on a big page costs its own pixels.
    crop = levels.stretch[pixels[box]]
    if lines is not None:
        crop[lines[box]] = 0
    return scaled_and_centred(crop)


def scaled_and_centred(crop: np.ndarray) -> np.ndarray:
    """The digit's crop (light ink on black, uint8) in the 20 px box, centred by mass in the 28x28 field."""
    return _centre_by_mass(scaled(crop))


def scaled(crop: np.ndarray) -> np.ndarray:
    """The digit's crop scaled to fit the 20 px box, its aspect kept."""
    cropped = Image.fromarray(crop)
    scale = DIGIT_BOX_SIDE / max(cropped.size)
    new_size = (max(1, round(cropped.width * scale)), max(1, round(cropped.height * scale)))
    return np.asarray(cropped.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP))


def user_image_to_mnist(
    data: bytes,
    max_pixels: int,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    concurrent_decodes: int = DEFAULT_CONCURRENT_DECODES,
) -> np.ndarray:
    """Bytes of an uploaded picture -> a 28x28 uint8 array ready to store.

    A picture with no visible ink is refused: the model would still name a digit for it.
    """
    with decode_slots(concurrent_decodes):
        digit = to_mnist_form(open_user_image(data, max_pixels, max_decode_bytes))
    return refused_if_blank(digit)


def refused_if_blank(digit: np.ndarray) -> np.ndarray:
    """``digit``, unless it has no visible ink: the model would still name a digit for it."""
    if not digit.any():
        raise ValueError("no digit found in the picture: it is blank or too faint")
    return digit


def _grey_on_white(picture: Image.Image) -> Image.Image:
    """One grey band, transparent pixels as white paper so that ink stays ink.

    Grey comes first and the alpha is applied to it alone: compositing in colour would hold
    several full-size copies of a big picture at once.
    """
    if picture.format == "JPEG":
        picture = ImageOps.exif_transpose(picture)
    if picture.mode == "P" and "transparency" in picture.info:
        picture = picture.convert("RGBA")
    if picture.mode in ("RGBA", "LA", "PA"):
        alpha = picture.getchannel("A")
        grey = picture.convert("L")
        picture.close()
        paper = Image.new("L", grey.size, 255)
        paper.paste(grey, mask=alpha)
        return paper
    return picture if picture.mode == "L" else picture.convert("L")


def _reduced(grey: Image.Image) -> Image.Image:
    """``grey`` shrunk by a whole factor (a box filter) to at most ANALYSIS_SIDE a side."""
    factor = -(-max(grey.size) // ANALYSIS_SIDE)
    return grey.reduce(factor) if factor > 1 else grey


@dataclasses.dataclass(frozen=True)
class InkLevels:
    """How a picture's grey levels read as ink: ``stretch`` maps each level to one with paper at 0
    and ink at 255 (light ink, whichever the picture had); ink, to crop by, lies beyond ``cut``,
    below it when the picture is ``inverted`` (dark ink on light paper)."""

    stretch: np.ndarray  # 256 uint8 levels, indexed by the picture's grey level
    cut: int
    inverted: bool
    paper: int  # the paper's level in the picture's own grey levels

    def ink(self, pixels: np.ndarray) -> np.ndarray:
        """Where ``pixels`` (grey levels) are ink: one comparison, not a table lookup per pixel."""
        return pixels < self.cut if self.inverted else pixels > self.cut

    def marks(self, pixels: np.ndarray) -> np.ndarray:
        """Where ``pixels`` differ from the paper on the ink's side by LINE_CONTRAST or more: ink and ruling."""
        return pixels < self.paper - LINE_CONTRAST if self.inverted else pixels > self.paper + LINE_CONTRAST


def _light_ink_levels(pixels: np.ndarray, histogram: np.ndarray) -> InkLevels | None:
    """Paper, ink and the table between them, worked out on the 256-level histogram, so the
    pixels are passed over only to count them, to find the ink's box and to map the crop;
    None without visible ink."""
    threshold = otsu_threshold(histogram)
    light_count = int(histogram[threshold + 1 :].sum())
    if light_count in (0, pixels.size):
        return None
    inverted = _light_is_paper(_border_light_share(pixels, threshold), light_count / pixels.size)
    # In the oriented picture (ink light) the paper is the levels up to ``boundary``, the ink those above.
    levels = _DESCENDING if inverted else _ASCENDING
    oriented = histogram[::-1] if inverted else histogram
    boundary = 254 - threshold if inverted else threshold
    paper = _quantile(oriented[: boundary + 1], 0.5)
    ink = boundary + 1 + _quantile(oriented[boundary + 1 :], INK_LEVEL_PERCENTILE / 100)
    if ink - paper < INK_THRESHOLD:
        return None
    stretch = ((levels - paper) * (255.0 / (ink - paper))).clip(0, 255).round().astype(np.uint8)
    # Oriented level > paper + INK_THRESHOLD is ink; in the picture's own levels that is beyond ``cut``.
    cut = 255 - (paper + INK_THRESHOLD) if inverted else paper + INK_THRESHOLD
    return InkLevels(stretch, cut, inverted, 255 - paper if inverted else paper)


_ASCENDING = np.arange(256)
_DESCENDING = 255 - _ASCENDING
_LEVEL_VALUES = _ASCENDING.astype(np.float64)


def _border_light_share(pixels: np.ndarray, threshold: int) -> float:
    """The share of the picture's outermost pixels lighter than ``threshold``, corners counted twice."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.count_nonzero(border > threshold) / border.size


def otsu_threshold(histogram: np.ndarray) -> int:
    """The grey level that best splits a 256-level histogram in two (Otsu, 1979): levels above it are the light class.

    Ten lines of numpy rather than scikit-image, which would bring scipy into the web's image.
    """
    counts = histogram.astype(np.float64)
    # Array methods rather than numpy's functions here and below: the same arithmetic, without the
    # dispatch that costs more than the arithmetic on 256 levels.
    dark_count = counts.cumsum()
    light_count = dark_count[-1] - dark_count
    dark_mass = (counts * _LEVEL_VALUES).cumsum()
    light_mass = dark_mass[-1] - dark_mass
    with np.errstate(divide="ignore", invalid="ignore"):
        between = dark_count * light_count * (dark_mass / dark_count - light_mass / light_count) ** 2
    between[np.isnan(between)] = -1.0  # an empty class (0 / 0): never the split
    return int(between.argmax())


def _quantile(histogram: np.ndarray, share: float) -> int:
    """The first level at which ``share`` of the histogram's pixels are reached."""
    cumulative = histogram.cumsum()
    return int(cumulative.searchsorted(share * cumulative[-1]))


def _light_is_paper(border_light_share: float, light_share: float) -> bool:
    """Paper is what the border shows; a picture whose border is held by the digit too has less ink than paper."""
    if max(border_light_share, 1 - border_light_share) >= BORDER_DECIDES:
        return border_light_share > 0.5
    return light_share > 0.5


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """``digit`` (uint8, at most 28x28) placed in the 28x28 field with its centre of mass at the field's centre.

    Its masses are whole numbers far below 2**53, so they are summed exactly, in integers."""
    field = np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    height, width = digit.shape
    row_mass, col_mass = np.add.reduce(digit, axis=1, dtype=np.int64), np.add.reduce(digit, axis=0, dtype=np.int64)
    total = int(np.add.reduce(row_mass))
    if total <= 0:
        return field
    centre_row = int(row_mass @ np.arange(height)) / total
    centre_col = int(col_mass @ np.arange(width)) / total
    top = round(IMAGE_SIDE / 2 - centre_row)
    left = round(IMAGE_SIDE / 2 - centre_col)
    top = min(max(top, 0), IMAGE_SIDE - height)
    left = min(max(left, 0), IMAGE_SIDE - width)
    field[top : top + height, left : left + width] = digit
    return field
