"""Finding the face in an ordinary photo and cropping it with the loose framing of the ORL faces.

The models were trained on ORL faces: 92 wide x 112 high grey pictures framed loosely
around the head (hair and head outline included, little background). A phone photo
where the face is a small part of the frame would be squeezed into 92x112 whole and
look nothing like that, so `facesim verify/search/embed` first find the face with
OpenCV's frontal-face Haar cascade (it ships inside the opencv-python-headless wheel:
nothing is downloaded) and cut out the region that puts the face where ORL puts it.

Numpy in, numpy out: pictures are 2-D uint8 grey arrays (height, width), as
`facesim.core.images.load_pixels` returns them. OpenCV is imported on first use, so that
importing this module stays cheap.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from facesim.core.images import ImageError

# ORL's picture shape, width:height = 92:112.
ORL_WIDTH = 92
ORL_HEIGHT = 112

# Where the detector's face box sits in an ORL picture, as fractions of the picture:
# box centre x / picture width, box centre y / picture height, box width / picture width.
# Measured with `find_faces` itself (its 25% edge margin included) on the 400 ORL faces of
# data/raw/faces/{training,testing}/sN/K.pgm: it found exactly one face in all 400
# (none with zero or two); these are the medians over those 400 (box centre 45.5, 62.0 px
# and box width 89 px of 92x112). The boxes are square, so the box height is
# 0.9674 * 92 / 112 = 0.795 of the picture height. The face boxes usually run a little past
# ORL's edges (the heads fill the frame): that is why find_faces pads before detecting.
ORL_BOX_CENTRE_X = 0.4946
ORL_BOX_CENTRE_Y = 0.5536
ORL_BOX_WIDTH = 0.9674

# Detector settings: the usual ones for the frontal-face cascade.
_SCALE_FACTOR = 1.1
_MIN_NEIGHBORS = 5
_MIN_SIZE_FRACTION = 1 / 8  # smallest face searched for, as a fraction of the picture's shorter side
_MIN_SIZE_PIXELS = 20  # ... but never below this: the cascade's window is 24 px, smaller finds are noise
# Margin added on every side before detecting, as a fraction of the shorter side. A face
# filling the frame (an ORL face, a close-up selfie) is otherwise missed or boxed too small,
# because the detector cannot try windows wider than the picture: without the margin the
# cascade found no face in 52 of the 400 ORL faces and boxed the rest ~9% smaller than when
# the same faces are pasted into a large photo. With 25% the boxes match that case (10% did not).
_MARGIN_FRACTION = 0.25

_CASCADE_FILE = "haarcascade_frontalface_default.xml"
# OpenCV's CascadeClassifier is not documented as thread-safe; the served model may be called
# from several threads, and detection is fast, so one detection runs at a time.
_DETECT_LOCK = threading.Lock()


class NoFaceError(ValueError):
    """The face detector found no face in a picture."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face, in pixels of the picture it was found in.

    The box may run past the picture's edges (x or y negative, or x + width beyond the
    picture's width) when the face fills the frame: it is where the detector places the
    face, not clipped, so that its size and centre stay true.
    """

    x: int
    y: int
    width: int
    height: int

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the box's centre, in pixels."""
        return self.x + self.width / 2, self.y + self.height / 2


@functools.lru_cache(maxsize=1)
def _cascade():
    """The frontal-face cascade, loaded once per process from the file inside the OpenCV wheel."""
    import cv2

    path = cv2.data.haarcascades + _CASCADE_FILE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(
            f"OpenCV's face detector could not be loaded from {path}: expected the Haar cascade that "
            "ships in the opencv-python-headless 4.x wheel (OpenCV 5 no longer has it)"
        )
    return cascade


def _check_grey(pixels: np.ndarray) -> np.ndarray:
    """The pixels as a contiguous 2-D uint8 array, or a ValueError naming what was expected."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or pixels.size == 0:
        raise ValueError(
            "expected a non-empty 2-D uint8 grey picture (height, width), "
            f"got an array of shape {pixels.shape} and dtype {pixels.dtype}"
        )
    return np.ascontiguousarray(pixels)


def find_faces(pixels: np.ndarray) -> list[FaceBox]:
    """Faces found by OpenCV's frontal-face cascade in a grey picture, largest first.

    Faces smaller than 1/8 of the picture's shorter side (and 20 px) are not searched for:
    they would be too small to compare, and the small scales are where false finds are.
    The picture gets an edge-replicated margin first (see `_MARGIN_FRACTION`), so a face
    filling the frame is found and boxed as if it stood in a larger photo; its box may
    therefore run past the picture's edges.
    """
    pixels = _check_grey(pixels)
    height, width = pixels.shape
    shorter = min(height, width)
    min_size = max(_MIN_SIZE_PIXELS, int(shorter * _MIN_SIZE_FRACTION))
    margin = int(round(shorter * _MARGIN_FRACTION))
    padded = np.pad(pixels, margin, mode="edge")
    cascade = _cascade()
    with _DETECT_LOCK:
        found = cascade.detectMultiScale(
            padded, scaleFactor=_SCALE_FACTOR, minNeighbors=_MIN_NEIGHBORS, minSize=(min_size, min_size)
        )
    boxes = [FaceBox(int(x) - margin, int(y) - margin, int(w), int(h)) for x, y, w, h in found]
    return sorted(boxes, key=lambda box: (-box.width * box.height, box.y, box.x))


def orl_region(box: FaceBox) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the region that frames `box` as ORL frames its faces.

    The region's width makes the box ORL_BOX_WIDTH of it; its height follows from ORL's
    92:112 aspect; it is placed so that the box's centre lands at (ORL_BOX_CENTRE_X,
    ORL_BOX_CENTRE_Y) of it. Rounded to whole pixels; it may run past the picture.
    """
    if box.width <= 0 or box.height <= 0:
        raise ValueError(f"expected a face box of positive width and height, got {box}")
    width = max(1, round(box.width / ORL_BOX_WIDTH))
    height = max(1, round(width * ORL_HEIGHT / ORL_WIDTH))
    centre_x, centre_y = box.centre
    left = round(centre_x - ORL_BOX_CENTRE_X * width)
    top = round(centre_y - ORL_BOX_CENTRE_Y * height)
    return left, top, width, height


def orl_crop(pixels: np.ndarray, box: FaceBox) -> np.ndarray:
    """The part of the picture around `box` with ORL's framing (see `orl_region`).

    Where that region runs past the picture, the picture's edge pixels are repeated
    (numpy's "edge" padding) rather than filled with black or grey, which the models
    never saw and which would read as a dark frame around the head.
    """
    pixels = _check_grey(pixels)
    left, top, width, height = orl_region(box)
    rows, cols = pixels.shape
    pad_top, pad_left = max(0, -top), max(0, -left)
    pad_bottom, pad_right = max(0, top + height - rows), max(0, left + width - cols)
    if pad_top or pad_left or pad_bottom or pad_right:
        pixels = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right)), mode="edge")
        top, left = top + pad_top, left + pad_left
    return pixels[top : top + height, left : left + width].copy()


def frame_face(pixels: np.ndarray, *, min_fill: float = 0.6) -> tuple[np.ndarray, FaceBox | None]:
    """The picture the model should see, and the face box found in `pixels`.

    The largest face is cropped with ORL's framing, unless the photo is framed like ORL
    already: its box is at least `min_fill` times as wide, relative to the picture, as in
    ORL (ORL_BOX_WIDTH). Then the pixels come back unchanged, so ORL faces and close-ups
    are not cropped again. Raises NoFaceError when no face is found; the message does not
    name the file, which the caller adds.
    """
    pixels = _check_grey(pixels)
    faces = find_faces(pixels)
    if not faces:
        raise NoFaceError(
            "no face found (OpenCV's frontal-face detector found none); "
            "use a photo with one face looking at the camera"
        )
    largest = faces[0]
    if largest.width >= min_fill * ORL_BOX_WIDTH * pixels.shape[1]:
        return pixels, largest
    return orl_crop(pixels, largest), largest


def framed_face(pixels: np.ndarray, name: str) -> np.ndarray:
    """`frame_face`'s picture, for the places that take photos (the API and the served model): no face
    is an ImageError that names the picture (`name`: its path, or the served row and column)."""
    try:
        return frame_face(pixels)[0]
    except NoFaceError as exc:
        raise ImageError(f"{name}: {exc}") from None
