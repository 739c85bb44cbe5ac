"""Scene model and renderer of the synthetic benchmark: textured "stuff" regions and "thing" objects.

A scene is a background of amorphous stuff regions (sky, wall, grass, road, water, sand:
the things/stuff split of Caesar et al., "COCO-Stuff: Thing and Stuff Classes in Context",
CVPR 2018) and countable things drawn on top of it in order, so later things occlude
earlier ones. Thing classes come in look-alike pairs that differ only in their fine
texture (disc/ball: rings vs dots, crate/panel: checker vs stripes), which is what lossy
coding destroys first. Faces are simple cartoon faces with five landmarks (eyes, nose,
mouth corners: the annotation of WIDER FACE / RetinaFace, Deng et al., CVPR 2020) for
privacy metrics.

Shapes are rasterised 4x supersampled and box-filtered, so edges are anti-aliased; the
ground-truth mask of an object is where its coverage is at least one half, minus the
pixels of objects drawn after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .textures import pattern, smoothstep, value_noise

__all__ = [
    "FACE_KEYPOINTS",
    "STUFF",
    "THINGS",
    "Background",
    "Rendered",
    "Thing",
    "make_background",
    "random_thing",
    "render",
]


@dataclass(frozen=True)
class ThingClass:
    id: int
    name: str
    shape: str
    texture: str
    supercategory: str
    color: tuple[int, int, int]  # base colour of its panoptic segment ids


@dataclass(frozen=True)
class StuffClass:
    id: int
    name: str
    color: tuple[int, int, int]
    supercategory: str


#: thing categories (COCO category ids 1..8); YOLO class index = id - 1
THINGS: tuple[ThingClass, ...] = (
    ThingClass(1, "disc", "circle", "rings", "round", (220, 20, 60)),
    ThingClass(2, "ball", "circle", "dots", "round", (119, 11, 32)),
    ThingClass(3, "crate", "square", "checker", "box", (0, 0, 142)),
    ThingClass(4, "panel", "square", "stripes", "box", (0, 60, 100)),
    ThingClass(5, "kite", "kite", "hatch", "pointed", (250, 170, 30)),
    ThingClass(6, "star", "star", "speckle", "pointed", (220, 220, 0)),
    ThingClass(7, "pill", "capsule", "zigzag", "round", (0, 80, 100)),
    ThingClass(8, "face", "face", "face", "person", (255, 109, 65)),
)

#: stuff categories (COCO panoptic ids 101..106, colours as in panoptic category lists)
STUFF: tuple[StuffClass, ...] = (
    StuffClass(101, "sky", (70, 130, 180), "sky"),
    StuffClass(102, "wall", (150, 100, 100), "building"),
    StuffClass(103, "grass", (107, 142, 35), "ground"),
    StuffClass(104, "road", (128, 64, 128), "ground"),
    StuffClass(105, "water", (0, 80, 160), "water"),
    StuffClass(106, "sand", (210, 180, 120), "ground"),
)

FACE_KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

_SS = 4  # supersampling factor of shape rasterisation
_SKIN = ((0.96, 0.80, 0.69), (0.89, 0.67, 0.53), (0.78, 0.57, 0.42), (0.62, 0.43, 0.30), (0.45, 0.30, 0.20))
_HAIR = ((0.10, 0.07, 0.05), (0.35, 0.22, 0.10), (0.75, 0.60, 0.30), (0.55, 0.20, 0.08), (0.5, 0.5, 0.5))


@dataclass
class Thing:
    """One object: its class, pose and appearance (all in pixels / radians / linear RGB in [0, 1])."""

    cls: int  # index into THINGS
    cx: float
    cy: float
    size: float  # extent of the shape's long side, pixels
    aspect: float  # width / height of the unrotated shape
    angle: float
    color: tuple[float, float, float]
    period: float  # texture period, pixels
    contrast: float
    tex_seed: int
    tone: int = 0  # faces: skin tone index
    hair: int = 0  # faces: hair colour index
    vx: float = 0.0  # clips: motion per frame
    vy: float = 0.0
    spin: float = 0.0


@dataclass
class Background:
    image: np.ndarray  # HxWx3 float32 in [0, 1]
    labels: np.ndarray  # HxW int16: index into STUFF


@dataclass
class Rendered:
    image: np.ndarray  # HxWx3 uint8 RGB
    owner: np.ndarray  # HxW int32: index of the visible thing, -1 for stuff
    stuff: np.ndarray  # HxW int16: stuff index under everything
    full_area: list[int] = field(default_factory=list)  # per thing: pixels of its unoccluded mask inside the frame
    keypoints: list[list[float] | None] = field(default_factory=list)  # per thing: 5 (x, y) pairs for faces


# ---- background ---------------------------------------------------------------------------------------
def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top = np.array([0.20, 0.40, 0.80], np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    bottom = np.array([0.65, 0.80, 0.95], np.float32)
    img = top * (1 - t) + bottom * t
    img = np.broadcast_to(img, (h, w, 3)).copy()
    n = 0.65 * value_noise(rng, h, w, 40) + 0.35 * value_noise(rng, h, w, 14)
    cloud = smoothstep(0.5, 0.75, n)[..., None]
    return img * (1 - cloud) + 0.96 * cloud


def _wall(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bh = int(rng.integers(8, 13))
    bw = int(bh * rng.uniform(2.0, 2.8))
    yy, xx = np.mgrid[0:h, 0:w]
    row = yy // bh
    shift = (row % 2) * (bw // 2)
    col = (xx + shift) // bw
    base = np.array(_choice(rng, [(0.62, 0.30, 0.22), (0.55, 0.52, 0.48), (0.70, 0.55, 0.40)]), np.float32)
    table = rng.uniform(-0.08, 0.08, (64, 64, 3)).astype(np.float32)
    img = base + table[row % 64, col % 64]
    mortar = ((yy % bh) == 0) | (((xx + shift) % bw) == 0)
    img[mortar] = 0.82
    img += rng.normal(0, 0.03, (h, w, 1)).astype(np.float32)
    return img


def _grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([0.22, 0.48, 0.16], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    n = value_noise(rng, h, w, 24)[..., None] - 0.5
    fine = rng.random((h, w, 1), dtype=np.float32) - 0.5
    return base * (1 + 0.5 * n) + 0.14 * fine * np.array([0.6, 1.0, 0.4], np.float32)


def _road(rng: np.random.Generator, h: int, w: int, slope: float, x0: float, y0: float) -> np.ndarray:
    g = float(rng.uniform(0.28, 0.42))
    img = np.full((h, w, 3), g, np.float32)
    img += 0.06 * (value_noise(rng, h, w, 30)[..., None] - 0.5)
    img += 0.10 * (rng.random((h, w, 1), dtype=np.float32) - 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lane_x = x0 + slope * (yy - y0)
    dash = ((yy // 10) % 2) == 0
    lane = (np.abs(xx - lane_x) < 1.6) & dash & (yy > y0)
    img[lane] = 0.92
    return img


def _water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([0.08, 0.32, 0.52], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = 6.0 * value_noise(rng, h, w, 40)
    waves = np.sin(2 * np.pi * (yy + warp) / rng.uniform(5.0, 8.0))[..., None]
    img = base * (1 + 0.18 * waves)
    glint = (value_noise(rng, h, w, 4) > 0.9)[..., None]
    return np.where(glint, 0.75, img)


def _sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([0.78, 0.69, 0.50], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ripple = np.sin(2 * np.pi * (yy + 0.3 * xx + 8 * value_noise(rng, h, w, 30)) / 9.0)[..., None]
    fine = rng.random((h, w, 1), dtype=np.float32) - 0.5
    return base * (1 + 0.05 * ripple) + 0.12 * fine


def _choice(rng: np.random.Generator, seq: list | tuple) -> object:
    return seq[int(rng.integers(len(seq)))]


def make_background(rng: np.random.Generator, height: int, width: int) -> Background:
    """A horizon with sky or wall above and one to three ground regions (grass, road, water, sand) below."""
    h, w = height, width
    horizon = rng.uniform(0.22, 0.5) * h
    tilt = rng.uniform(-0.12, 0.12)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    below = yy >= horizon + tilt * (xx - w / 2)
    top = 0 if rng.random() < 0.7 else 1  # sky or wall
    ground = [2, 3, 4, 5]
    rng.shuffle(ground)
    k = int(rng.integers(1, 4))
    labels = np.full((h, w), top, np.int16)
    lower = np.full((h, w), ground[0], np.int16)
    # region boundaries: slanted lines from the horizon down, sorted left to right
    cuts = np.sort(rng.uniform(0.15, 0.85, k - 1)) * w
    slopes = rng.uniform(-1.2, 1.2, k - 1)
    for i, (cx, s) in enumerate(zip(cuts, slopes, strict=True)):
        right = xx >= cx + s * (yy - horizon)
        lower[right] = ground[i + 1]
    labels[below] = lower[below]
    image = np.zeros((h, w, 3), np.float32)
    for idx in np.flatnonzero(np.bincount(labels.ravel(), minlength=len(STUFF))):
        name = STUFF[int(idx)].name
        if name == "sky":
            tex = _sky(rng, h, w)
        elif name == "wall":
            tex = _wall(rng, h, w)
        elif name == "grass":
            tex = _grass(rng, h, w)
        elif name == "road":
            sel = labels == idx
            xs = xx[sel]
            tex = _road(rng, h, w, float(rng.uniform(-0.8, 0.8)), float(xs.mean()) if xs.size else w / 2, horizon)
        elif name == "water":
            tex = _water(rng, h, w)
        else:
            tex = _sand(rng, h, w)
        m = labels == idx
        image[m] = tex[m]
    return Background(np.clip(image, 0.0, 1.0), labels)


# ---- things ------------------------------------------------------------------------------------------
def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices in [-1, 1]^2 (x right, y down) of a shape before scaling and rotation."""
    if shape in ("circle", "face"):
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "kite":
        return np.array([[0, -1], [0.7, -0.25], [0, 1], [-0.7, -0.25]], float)
    if shape == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "capsule":
        t1 = np.linspace(-np.pi / 2, np.pi / 2, 17)
        t2 = np.linspace(np.pi / 2, 3 * np.pi / 2, 17)
        right = np.stack([0.55 + 0.45 * np.cos(t1), 0.45 * np.sin(t1)], axis=1)
        left = np.stack([-0.55 + 0.45 * np.cos(t2), 0.45 * np.sin(t2)], axis=1)
        return np.concatenate([right, left]) / np.array([1.0, 0.45])  # normalised to [-1, 1] in y
    raise ValueError(f"unknown shape {shape!r}")


def _vertices(t: Thing) -> np.ndarray:
    shape = THINGS[t.cls].shape
    poly = _unit_polygon(shape)
    half = t.size / 2.0
    sx, sy = (half, half / t.aspect) if t.aspect >= 1 else (half * t.aspect, half)
    pts = poly * np.array([sx, sy])
    c, s = math.cos(t.angle), math.sin(t.angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T + np.array([t.cx, t.cy])


def random_thing(
    rng: np.random.Generator, cls: int, width: int, height: int, size_range: tuple[float, float]
) -> Thing:
    """A thing of class index ``cls`` at a random place, size (log-uniform), pose and colour."""
    lo, hi = size_range
    size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    shape = THINGS[cls].shape
    if shape == "capsule":
        aspect = float(rng.uniform(2.0, 2.6))
    elif shape == "square":
        aspect = float(rng.uniform(0.7, 1.45))
    elif shape == "face":
        aspect = float(rng.uniform(0.72, 0.85))
    else:
        aspect = float(rng.uniform(0.85, 1.15))
    angle = float(rng.uniform(-0.3, 0.3) if shape == "face" else rng.uniform(0, 2 * np.pi))
    hue = rng.uniform(0, 180)
    hsv = np.array([[[hue, rng.uniform(110, 230), rng.uniform(120, 235)]]], np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(float) / 255.0
    return Thing(
        cls=cls,
        cx=float(rng.uniform(0.03, 0.97) * width),
        cy=float(rng.uniform(0.05, 0.97) * height),
        size=size,
        aspect=aspect,
        angle=angle,
        color=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
        period=float(rng.uniform(4.0, 6.5)),
        contrast=float(rng.uniform(0.45, 0.8)),
        tex_seed=int(rng.integers(2**31)),
        tone=int(rng.integers(len(_SKIN))),
        hair=int(rng.integers(len(_HAIR))),
    )


def _box(verts: np.ndarray) -> tuple[int, int, int, int]:
    x0 = int(math.floor(verts[:, 0].min())) - 1
    y0 = int(math.floor(verts[:, 1].min())) - 1
    x1 = int(math.ceil(verts[:, 0].max())) + 2
    y1 = int(math.ceil(verts[:, 1].max())) + 2
    return x0, y0, x1, y1


def _fill(canvas: np.ndarray, pts: np.ndarray, value: float | tuple[float, ...]) -> None:
    """Fill a polygon given in supersampled pixel coordinates with 4 fractional bits."""
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], value, lineType=cv2.LINE_8, shift=4)


def _ellipse_pts(cx: float, cy: float, ax: float, ay: float, angle: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(t), ay * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _render_plain(t: Thing, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (h, w) and colour (h, w, 3) of a textured shape in its local box."""
    verts = (_vertices(t) - np.array([x0, y0])) * _SS
    hi = np.zeros((h * _SS, w * _SS), np.uint8)
    _fill(hi, verts, 255)
    alpha = cv2.resize(hi, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = xs + x0 + 0.5 - t.cx
    dy = ys + y0 + 0.5 - t.cy
    c, s = math.cos(t.angle), math.sin(t.angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    p = pattern(THINGS[t.cls].texture, u, v, t.period, np.random.default_rng(t.tex_seed))
    shade = 1.0 - 0.25 * (u + v) / max(t.size, 1.0)
    lum = (1.0 - t.contrast + 2.0 * t.contrast * p) * shade
    rgb = np.clip(np.array(t.color, np.float32) * lum[..., None], 0.0, 1.0)
    return alpha, rgb


def _render_face(t: Thing, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A cartoon face: skin ellipse, hair cap, eyes with pupils, brows, nose, mouth; plus 5 landmarks."""
    S = _SS
    W, H = w * S, h * S
    half = t.size / 2.0
    ax, ay = half * t.aspect, half
    c, s = math.cos(t.angle), math.sin(t.angle)

    def to_img(lx: float, ly: float) -> tuple[float, float]:  # face-local (pixels) -> image pixels
        return t.cx + c * lx - s * ly, t.cy + s * lx + c * ly

    def to_ss(lx: float, ly: float) -> tuple[float, float]:
        x, y = to_img(lx, ly)
        return (x - x0) * S, (y - y0) * S

    def ell(lx: float, ly: float, rx: float, ry: float, rot: float = 0.0) -> np.ndarray:
        cx, cy = to_ss(lx, ly)
        return _ellipse_pts(cx, cy, rx * S, ry * S, t.angle + rot)

    alpha_hi = np.zeros((H, W), np.uint8)
    col = np.zeros((H, W, 3), np.uint8)
    head = ell(0, 0, ax, ay)
    _fill(alpha_hi, head, 255)
    skin = tuple(int(255 * v) for v in _SKIN[t.tone])
    hair = tuple(int(255 * v) for v in _HAIR[t.hair])
    _fill(col, head, skin)
    # hair: the head ellipse above a wavy line
    hair_pts = [to_ss(ax * math.cos(a), ay * math.sin(a)) for a in np.linspace(np.pi, 2 * np.pi, 24)]
    hair_pts += [to_ss(x, -0.45 * ay + 0.06 * ay * math.sin(6 * x / ax)) for x in np.linspace(ax, -ax, 16)]
    _fill(col, np.array(hair_pts), hair)
    eye_dx, eye_y = 0.38 * ax, -0.12 * ay
    er = max(0.9, 0.16 * ax)
    for sx in (-1, 1):
        _fill(col, ell(sx * eye_dx, eye_y, er * 1.25, er * 0.8), (245, 245, 245))
        _fill(col, ell(sx * eye_dx, eye_y, er * 0.55, er * 0.55), (30, 25, 40))
        brow = [to_ss(sx * eye_dx + dx, eye_y - 1.5 * er + dy) for dx, dy in
                ((-er * 1.3, 0.25 * er), (er * 1.3, -0.05 * er), (er * 1.3, 0.3 * er), (-er * 1.3, 0.6 * er))]  # fmt: skip
        _fill(col, np.array(brow), tuple(int(v * 0.6) for v in hair))
    nose_y = 0.18 * ay
    shade = tuple(int(v * 0.75) for v in skin)
    _fill(col, np.array([to_ss(0, eye_y + er), to_ss(0.12 * ax, nose_y), to_ss(-0.1 * ax, nose_y)]), shade)
    mouth_y, mouth_w = 0.5 * ay, 0.36 * ax
    mouth = [to_ss(x, mouth_y + 0.12 * ay * (1 - (x / mouth_w) ** 2)) for x in np.linspace(-mouth_w, mouth_w, 12)]
    mouth += [to_ss(x, mouth_y - 0.02 * ay) for x in np.linspace(mouth_w, -mouth_w, 6)]
    _fill(col, np.array(mouth), (170, 40, 50))
    premult = col.astype(np.float32) * (alpha_hi[..., None].astype(np.float32) / 255.0)
    alpha = cv2.resize(alpha_hi, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    rgb = cv2.resize(premult, (w, h), interpolation=cv2.INTER_AREA) / 255.0
    rgb = rgb / np.maximum(alpha[..., None], 1e-6)
    kps = [to_img(-eye_dx, eye_y), to_img(eye_dx, eye_y), to_img(0, nose_y), to_img(-mouth_w, mouth_y),
           to_img(mouth_w, mouth_y)]  # fmt: skip
    # image-left eye first when the face looks at the viewer: its "left_eye" is on the image right
    kps = [kps[1], kps[0], kps[2], kps[4], kps[3]]
    return alpha, np.clip(rgb, 0.0, 1.0), [v for xy in kps for v in xy]


def thing_box(t: Thing) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) box in image pixels that contains the thing's rasterisation."""
    return _box(_vertices(t))


def render_thing(t: Thing) -> tuple[int, int, np.ndarray, np.ndarray, list[float] | None]:
    """(x0, y0, coverage, colour, face landmarks or None) of one thing in its local box."""
    x0, y0, x1, y1 = thing_box(t)
    w, h = x1 - x0, y1 - y0
    if THINGS[t.cls].shape == "face":
        alpha, rgb, kps = _render_face(t, x0, y0, w, h)
        return x0, y0, alpha, rgb, kps
    alpha, rgb = _render_plain(t, x0, y0, w, h)
    return x0, y0, alpha, rgb, None


def _clip_box(x0: int, y0: int, w: int, h: int, width: int, height: int) -> tuple[slice, slice, slice, slice] | None:
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(width, x0 + w), min(height, y0 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    return (slice(fy0, fy1), slice(fx0, fx1), slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))


def render(
    background: Background,
    things: list[Thing],
    noise_rng: np.random.Generator,
    noise_sigma: float = 1.5,
) -> Rendered:
    """Composite ``things`` (in order, later on top) over ``background``; add sensor noise; quantise to 8 bits."""
    img = background.image.copy()
    h, w = background.labels.shape
    owner = np.full((h, w), -1, np.int32)
    full_area: list[int] = []
    keypoints: list[list[float] | None] = []
    for i, t in enumerate(things):
        x0, y0, alpha, rgb, kps = render_thing(t)
        keypoints.append(kps)
        sl = _clip_box(x0, y0, alpha.shape[1], alpha.shape[0], w, h)
        if sl is None:
            full_area.append(0)
            continue
        fy, fx, ly, lx = sl
        a = alpha[ly, lx][..., None]
        img[fy, fx] = img[fy, fx] * (1.0 - a) + rgb[ly, lx] * a
        mask = alpha[ly, lx] >= 0.5
        owner[fy, fx][mask] = i
        full_area.append(int(mask.sum()))
    if noise_sigma > 0:
        img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sigma / 255.0)
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return Rendered(out, owner, background.labels, full_area, keypoints)


def thing_mask(t: Thing, width: int, height: int) -> tuple[np.ndarray, int]:
    """Full-frame boolean mask of a thing alone (coverage >= 0.5) and its unclipped area in pixels.

    Used to check occlusion and truncation while placing things; it thresholds the same
    coverage :func:`render` uses, so the two agree pixel for pixel.
    """
    x0, y0, alpha, _, _ = render_thing(t)
    h, w = alpha.shape
    inside = alpha >= 0.5
    out = np.zeros((height, width), bool)
    sl = _clip_box(x0, y0, w, h, width, height)
    if sl is not None:
        fy, fx, ly, lx = sl
        out[fy, fx] = inside[ly, lx]
    return out, int(inside.sum())
