"""Streaming video sources and the patch embedding that turns frames into visual tokens.

A *frame* is a ``float32`` tensor ``[3, H, W]`` with values in ``[0, 1]``.  Every source is
random access (``source.frame(t)``), has a length (``len(source)``) and iterates in order.

:class:`SyntheticVideo`
    A deterministic synthetic stream with the redundancy real video has: a textured static
    background seen through a slow camera pan, several moving textured objects that bounce off the
    frame edges, Gaussian sensor noise, and an occasional hard scene cut (new background, new
    objects).  Everything is drawn from ``numpy.random.Generator`` streams keyed by the seed, so
    ``frame(t)`` is a pure function of ``(seed, t)`` and the other constructor arguments.

:class:`FrameArray`, :func:`load_frames`, :func:`open_video`
    Real frames: a folder of PNG/JPEG files (sorted by name) or a ``.npy`` array of shape
    ``[T, H, W]`` (grey), ``[T, H, W, C]`` (C in 1, 3, 4; channels last) or ``[T, C, H, W]``
    (C in 1, 3, 4; channels first); integer pixels are scaled by their type's range (8-bit:
    255), float pixels must already lie in [0, 1].  Anything malformed raises
    :class:`VideoError` with one readable message.

:class:`PatchEmbedding`
    A fixed, seeded ViT-style patch embedding: the frame is average-pooled to
    ``(h * patch, w * patch)`` pixels, cut into an ``h x w`` grid of patches, each patch projected
    linearly to ``dim``, a seeded position embedding added, then layer-normalised.  Output: tokens
    ``[h * w, dim]`` in raster order (token ``p = i * w + j`` is grid row ``i``, column ``j``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.dre.config import check_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class VideoError(ValueError):
    """A video source or frame file is malformed; the message says which file and why."""


# ---------------------------------------------------------------------------------------------
# Synthetic video
# ---------------------------------------------------------------------------------------------


def _periodic_texture(rng: np.random.Generator, size: int, slope: float) -> np.ndarray:
    """Colour texture ``[3, size, size]`` in [0, 1], periodic in both axes (FFT-filtered noise
    with a ``1 / f^slope`` spectrum), so a pan can wrap around it seamlessly."""
    noise = rng.standard_normal((3, size, size))
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = np.fft.fft2(noise) / radius**slope
    spectrum[:, 0, 0] = 0.0
    tex = np.real(np.fft.ifft2(spectrum))
    tex /= tex.std(axis=(1, 2), keepdims=True) + 1e-12
    # A random colour mixing keeps channels correlated, as in natural images.
    mix = rng.normal(0.0, 0.6, (3, 3)) + np.eye(3)
    tex = np.einsum("ij,jhw->ihw", mix, tex)
    tex = 0.5 + 0.15 * tex / (tex.std() + 1e-12) + rng.uniform(-0.15, 0.15, (3, 1, 1))
    return np.clip(tex, 0.0, 1.0)


def _bounce(p0: float, v: float, t: float, lo: float, hi: float) -> float:
    """Position at time ``t`` of a point moving at speed ``v`` between walls ``lo`` and ``hi``."""
    span = hi - lo
    if span <= 0:
        return lo
    x = (p0 - lo + v * t) % (2 * span)
    return lo + (x if x <= span else 2 * span - x)


class _Scene:
    """One shot between two cuts: a background texture, a pan and a few objects."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, n_objects: int):
        self.height, self.width = height, width
        size = 1 << max(6, math.ceil(math.log2(max(height, width) * 2)))
        self.texture = _periodic_texture(rng, size, slope=rng.uniform(1.2, 1.8))
        angle = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.2, 0.8)  # pixels per frame: a slow pan
        self.pan = (speed * math.sin(angle), speed * math.cos(angle))
        self.origin = rng.uniform(0, size, 2)
        self.objects = []
        for _ in range(n_objects):
            r = rng.uniform(0.07, 0.16) * min(height, width)
            self.objects.append(
                {
                    "radius": (r, r * rng.uniform(0.6, 1.4)),
                    "pos": (rng.uniform(r, height - r), rng.uniform(r, width - r)),
                    "vel": (rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)),
                    "colour": rng.uniform(0.05, 0.95, 3),
                    "stripe": (rng.uniform(0.2, 0.6), rng.uniform(0, 2 * math.pi)),
                }
            )

    def render(self, t: int) -> np.ndarray:
        size = self.texture.shape[1]
        # Background through the camera: sub-pixel pan by bilinear interpolation, wrapping.
        oy = self.origin[0] + self.pan[0] * t
        ox = self.origin[1] + self.pan[1] * t
        iy, fy = math.floor(oy), oy - math.floor(oy)
        ix, fx = math.floor(ox), ox - math.floor(ox)
        rows = (np.arange(self.height + 1) + iy) % size
        cols = (np.arange(self.width + 1) + ix) % size
        patch = self.texture[:, rows][:, :, cols]
        img = (
            (1 - fy) * (1 - fx) * patch[:, :-1, :-1]
            + (1 - fy) * fx * patch[:, :-1, 1:]
            + fy * (1 - fx) * patch[:, 1:, :-1]
            + fy * fx * patch[:, 1:, 1:]
        )
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        for obj in self.objects:
            ry, rx = obj["radius"]
            cy = _bounce(obj["pos"][0], obj["vel"][0], t, ry, self.height - ry)
            cx = _bounce(obj["pos"][1], obj["vel"][1], t, rx, self.width - rx)
            dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
            alpha = 1.0 / (1.0 + np.exp((dist - 1.0) * 12.0))  # soft (anti-aliased) edge
            freq, phase = obj["stripe"]
            stripes = 0.85 + 0.15 * np.sin(freq * ((yy - cy) + (xx - cx)) + phase)
            colour = obj["colour"][:, None, None] * stripes[None]
            img = img * (1 - alpha[None]) + colour * alpha[None]
        return img


class _ShotStream:
    """What the synthetic and the photo stream share: argument checks, the cuts between shots
    (each shot's length drawn from ``cut_every`` with the generator keyed ``(seed, salt)``),
    random access and the sensor noise (keyed ``(seed, salt + 2, t)``).  A subclass renders
    frame ``u`` of shot ``k`` as float64 ``[3, height, width]`` in :meth:`render_shot`."""

    salt = 0

    def __init__(self, frames, height, width, seed, noise, cut_every):
        for name, value, lo in (("frames", frames, 1), ("height", height, 8), ("width", width, 8)):
            check_int(name, value, lo, error=VideoError)
        if not (isinstance(noise, int | float) and noise >= 0 and math.isfinite(noise)):
            raise VideoError(f"noise={noise!r} must be a finite number >= 0")
        lo, hi = cut_every
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise VideoError(f"cut_every={cut_every!r} must be (min, max) with 1 <= min <= max")
        self.frames, self.height, self.width = frames, height, width
        self.seed, self.noise, self.cut_every = seed, noise, cut_every
        # Shot boundaries: scene_starts[k] is the first frame of shot k.
        rng = np.random.default_rng([seed, self.salt])
        self.scene_starts = [0]
        while self.scene_starts[-1] < frames:
            self.scene_starts.append(self.scene_starts[-1] + int(rng.integers(lo, hi + 1)))
        self.scene_starts.pop()

    @property
    def cuts(self) -> list[int]:
        """Frames at which a new shot starts (excluding frame 0)."""
        return self.scene_starts[1:]

    def __len__(self) -> int:
        return self.frames

    def render_shot(self, k: int, u: int) -> np.ndarray:
        raise NotImplementedError

    def frame(self, t: int) -> torch.Tensor:
        if not 0 <= t < self.frames:
            raise IndexError(f"frame {t} out of range 0..{self.frames - 1}")
        k = int(np.searchsorted(self.scene_starts, t, side="right")) - 1
        img = self.render_shot(k, t - self.scene_starts[k])
        if self.noise:
            rng = np.random.default_rng([self.seed, self.salt + 2, t])
            img = img + rng.normal(0.0, self.noise, img.shape)
        return torch.from_numpy(np.clip(img, 0.0, 1.0).astype(np.float32))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.frame(t) for t in range(self.frames))


class SyntheticVideo(_ShotStream):
    """Deterministic synthetic stream of ``frames`` frames of ``height x width`` pixels.

    Parameters
    ----------
    frames: number of frames (``len(self)``); ``frame(t)`` is defined for ``0 <= t < frames``.
    seed: every random choice derives from it; equal seeds give equal streams.
    noise: standard deviation of the additive Gaussian sensor noise (pixel units, [0, 1] range).
    n_objects: moving objects per scene.
    cut_every: (min, max) scene length in frames; each scene's length is drawn uniformly from it,
        so a hard cut happens "occasionally".
    """

    def __init__(
        self,
        frames: int = 64,
        height: int = 112,
        width: int = 112,
        seed: int = 0,
        noise: float = 0.02,
        n_objects: int = 4,
        cut_every: tuple[int, int] = (24, 72),
    ):
        if not isinstance(n_objects, int) or n_objects < 0:
            raise VideoError(f"n_objects={n_objects!r} must be an integer >= 0")
        super().__init__(frames, height, width, seed, noise, cut_every)
        self.n_objects = n_objects
        self._scenes: dict[int, _Scene] = {}

    def _scene(self, k: int) -> _Scene:
        if k not in self._scenes:
            rng = np.random.default_rng([self.seed, 1, k])
            self._scenes[k] = _Scene(rng, self.height, self.width, self.n_objects)
        return self._scenes[k]

    def render_shot(self, k: int, u: int) -> np.ndarray:
        return self._scene(k).render(u)


# ---------------------------------------------------------------------------------------------
# Photo stream: real content from the photographs scikit-image ships inside its package
# ---------------------------------------------------------------------------------------------

# Bundled with scikit-image (files inside the installed package, nothing is downloaded).
PHOTO_FILES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
)
GIF_FILE = "no_time_for_that_tiny.gif"
_PHOTO_SIDE = 224  # photos are resized once so that their shorter side has this many pixels


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image package."""
    try:
        import skimage
    except ImportError:
        raise VideoError("the photo stream needs scikit-image (pip install scikit-image)") from None
    return Path(skimage.__file__).resolve().parent / "data"


_PHOTO_CACHE: dict[str, torch.Tensor] = {}


def _photo(name: str) -> torch.Tensor:
    """Bundled photograph ``name`` as float32 ``[3, H, W]``, shorter side ``_PHOTO_SIDE``."""
    if name not in _PHOTO_CACHE:
        from PIL import Image

        path = skimage_data_dir() / name
        if not path.is_file():
            raise VideoError(f"{path}: missing from the installed scikit-image")
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = _PHOTO_SIDE / min(im.size)
            size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            im = im.resize(size, Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        _PHOTO_CACHE[name] = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    return _PHOTO_CACHE[name]


def _gif_frames() -> torch.Tensor:
    """The animated GIF scikit-image ships, as float32 ``[T, 3, H, W]``."""
    if GIF_FILE not in _PHOTO_CACHE:
        from PIL import Image, ImageSequence

        with Image.open(skimage_data_dir() / GIF_FILE) as im:
            frames = [
                np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0
                for f in ImageSequence.Iterator(im)
            ]
        _PHOTO_CACHE[GIF_FILE] = torch.from_numpy(np.stack(frames).transpose(0, 3, 1, 2).copy())
    return _PHOTO_CACHE[GIF_FILE]


class PhotoVideo(_ShotStream):
    """A real-content stream built from the photographs bundled with scikit-image.

    The stream is a sequence of *shots* separated by hard cuts; each shot's length is drawn from
    ``cut_every``.  A shot is a virtual camera over one bundled photograph (:data:`PHOTO_FILES`,
    picked at random): a square crop whose centre pans at up to 1.5 output pixels per frame on
    each axis (bouncing off the photo's borders) and whose size zooms in or out by up to 1 % per
    frame (the crop starts at 35-80 % of the photo's shorter side and stays within 25-100 %).
    One shot in eight instead plays the small animated GIF scikit-image ships
    (:data:`GIF_FILE`, 24 frames, each shown for two frames, looping), scaled to the frame.
    Gaussian sensor noise (``noise``) is added to every frame.  Photos are resized once (Lanczos)
    so their shorter side is 224 pixels; a crop is sampled bilinearly at twice the output
    resolution and averaged down 2x2.  ``frame(t)`` is a pure function of ``(seed, t)`` and the
    constructor arguments.  The parameters were fixed before any policy was run on the stream.
    """

    salt = 10

    def __init__(
        self,
        frames: int = 64,
        height: int = 112,
        width: int = 112,
        seed: int = 0,
        noise: float = 0.02,
        cut_every: tuple[int, int] = (16, 48),
    ):
        super().__init__(frames, height, width, seed, noise, cut_every)
        skimage_data_dir()  # fail early, with one message, if scikit-image is missing
        self._shots: dict[int, dict] = {}

    def shot(self, k: int) -> dict:
        """Parameters of shot ``k``: the source (a file name) and the camera."""
        if k not in self._shots:
            rng = np.random.default_rng([self.seed, 11, k])
            if rng.random() < 1 / 8:
                self._shots[k] = {"source": GIF_FILE}
            else:
                img_name = PHOTO_FILES[int(rng.integers(len(PHOTO_FILES)))]
                img = _photo(img_name)
                short = min(img.shape[1:])
                size = rng.uniform(0.35, 0.8) * short
                self._shots[k] = {
                    "source": img_name,
                    "size": size,
                    "zoom": math.exp(rng.uniform(-0.01, 0.01)),
                    "centre": (
                        rng.uniform(size / 2, img.shape[1] - size / 2),
                        rng.uniform(size / 2, img.shape[2] - size / 2),
                    ),
                    # output pixels per frame, converted to photo pixels at render time
                    "pan": (rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)),
                }
        return self._shots[k]

    def _render(self, shot: dict, u: int) -> torch.Tensor:
        if shot["source"] == GIF_FILE:
            gif = _gif_frames()
            img = gif[(u // 2) % gif.shape[0]]
            return F.interpolate(img[None], (self.height, self.width), mode="bilinear")[0]
        img = _photo(shot["source"])
        _, ph, pw = img.shape
        short = min(ph, pw)
        size = min(max(shot["size"] * shot["zoom"] ** u, 0.25 * short), float(short))
        step = size / max(self.height, self.width)  # photo pixels per output pixel
        cy = _bounce(shot["centre"][0], shot["pan"][0] * step, u, size / 2, ph - size / 2)
        cx = _bounce(shot["centre"][1], shot["pan"][1] * step, u, size / 2, pw - size / 2)
        sh, sw = size * self.height / max(self.height, self.width), size
        sh, sw = (size, size * self.width / self.height) if self.height > self.width else (sh, sw)
        # sample at twice the output resolution, then average 2x2 (a light anti-alias)
        ys = (
            cy
            - sh / 2
            + (torch.arange(2 * self.height, dtype=torch.float64) + 0.5) * sh / (2 * self.height)
        )
        xs = (
            cx
            - sw / 2
            + (torch.arange(2 * self.width, dtype=torch.float64) + 0.5) * sw / (2 * self.width)
        )
        gy = (2 * ys / ph - 1).float()
        gx = (2 * xs / pw - 1).float()
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        out = F.grid_sample(img[None], grid, mode="bilinear", align_corners=False)
        return F.avg_pool2d(out, 2)[0]

    def render_shot(self, k: int, u: int) -> np.ndarray:
        return self._render(self.shot(k), u).double().numpy()


# ---------------------------------------------------------------------------------------------
# Real frames
# ---------------------------------------------------------------------------------------------


class FrameArray:
    """Frames held in memory: ``frames`` is ``float32 [T, 3, H, W]`` in [0, 1]."""

    def __init__(self, frames: torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
            raise VideoError(f"FrameArray expects [T>=1, 3, H, W], got {tuple(frames.shape)}")
        self.frames = frames

    def __len__(self) -> int:
        return self.frames.shape[0]

    def frame(self, t: int) -> torch.Tensor:
        return self.frames[t]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.frames)


def _to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` (C in 1, 3, 4) of any numeric dtype -> float64 ``[3, H, W]``."""
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise VideoError(f"{what}: pixel type {arr.dtype} is not numeric")
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        arr = arr.astype(np.float64) / (255.0 if info.max <= 255 else float(info.max))
    else:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise VideoError(f"{what}: contains NaN or infinite values")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise VideoError(
                f"{what}: float pixels must lie in [0, 1], found {arr.min():g}..{arr.max():g} "
                "(divide 8-bit data by 255 or store it as uint8)"
            )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise VideoError(f"{what}: expected [H, W] or [H, W, C] with C in 1, 3, 4; got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise VideoError(f"{what}: empty image {arr.shape}")
    arr = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr, 3, axis=2)
    return np.clip(arr, 0.0, 1.0).transpose(2, 0, 1)


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - pillow comes with matplotlib
        import matplotlib.image as mpimg

        try:
            return np.asarray(mpimg.imread(path))
        except Exception as exc:
            raise VideoError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable PNG/JPEG image ({exc})") from None


def _load_folder(path: Path) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoError(f"{path}: folder holds no PNG/JPEG frames ({', '.join(IMAGE_SUFFIXES)})")
    frames, first = [], None
    for f in files:
        img = _to_rgb(_read_image(f), str(f))
        if first is None:
            first = (f, img.shape)
        elif img.shape != first[1]:
            raise VideoError(
                f"{path}: frames differ in size: {first[0].name} is "
                f"{first[1][1]}x{first[1][2]}, {f.name} is {img.shape[1]}x{img.shape[2]}"
            )
        frames.append(img)
    return np.stack(frames)


def _load_npy(path: Path) -> np.ndarray:
    with path.open("rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise VideoError(f"{path}: not a .npy array file (no NumPy header)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise VideoError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise VideoError(f"{path}: expected one array, got {type(arr).__name__}")
    if arr.ndim == 4 and arr.shape[1] in (1, 3, 4) and arr.shape[3] not in (1, 3, 4):
        arr = arr.transpose(0, 2, 3, 1)  # channels first -> channels last
    if arr.ndim not in (3, 4):
        raise VideoError(
            f"{path}: expected frames [T, H, W] or [T, H, W, C]; got {arr.ndim} dimensions "
            f"{arr.shape}"
        )
    if arr.shape[0] < 1:
        raise VideoError(f"{path}: holds no frames (shape {arr.shape})")
    return np.stack([_to_rgb(a, f"{path} frame {t}") for t, a in enumerate(arr)])


def load_frames(path: str | Path) -> torch.Tensor:
    """Frames of a folder of PNG/JPEG files or of a ``.npy`` file, as ``float32 [T, 3, H, W]``."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        arr = _load_folder(path)
    elif path.suffix.lower() == ".npy":
        arr = _load_npy(path)
    else:
        raise VideoError(f"{path}: expected a folder of PNG/JPEG frames or a .npy array of frames")
    return torch.from_numpy(arr.astype(np.float32))


def open_video(spec: str | Path | None, frames: int = 64, seed: int = 0):
    """``None`` or ``"synthetic"``: :class:`SyntheticVideo`; ``"photos"``: :class:`PhotoVideo`;
    else a path for :func:`load_frames` (the first ``frames`` frames are used)."""
    if spec is None or str(spec) == "synthetic":
        return SyntheticVideo(frames=frames, seed=seed)
    if str(spec) == "photos":
        return PhotoVideo(frames=frames, seed=seed)
    return FrameArray(load_frames(spec)[:frames])


# ---------------------------------------------------------------------------------------------
# Patch embedding
# ---------------------------------------------------------------------------------------------


class PatchEmbedding:
    """Frame ``[3, H, W]`` -> tokens ``[h * w, dim]`` (raster order), fixed and seeded.

    ``pos_scale`` sets the size of the position embedding relative to the content part (a ViT's
    visual tokens are dominated by content; position is a small, fixed offset).
    """

    def __init__(
        self,
        grid: tuple[int, int] = (14, 14),
        dim: int = 256,
        patch: int = 8,
        seed: int = 0,
        pos_scale: float = 0.25,
    ):
        h, w = grid
        for name, value in (("grid height", h), ("grid width", w), ("dim", dim), ("patch", patch)):
            check_int(name, value, 1, error=VideoError)
        self.grid, self.dim, self.patch = (h, w), dim, patch
        gen = torch.Generator().manual_seed(seed)
        fan_in = 3 * patch * patch
        self.weight = torch.randn(fan_in, dim, generator=gen) / math.sqrt(fan_in)
        self.pos = torch.randn(h * w, dim, generator=gen) * pos_scale

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise VideoError(f"a frame must be [3, H, W], got {tuple(frame.shape)}")
        h, w = self.grid
        p = self.patch
        x = F.adaptive_avg_pool2d(frame.float()[None], (h * p, w * p))[0] - 0.5
        # [3, h*p, w*p] -> [h*w, 3*p*p], patches in raster order.
        x = x.reshape(3, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, 3 * p * p)
        # Pixel deviations are ~0.15 in natural images: a fixed gain brings the content part to
        # unit scale (fixed, so a token depends on its own patch only).
        content = (x @ self.weight) / 0.15
        return F.layer_norm(content + self.pos, (self.dim,))
