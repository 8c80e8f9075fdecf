"""The embedded demo dataset: procedural 3-D scenes with exact depth, segmentation and class.

Every image is a ray-cast scene: a chequered ground plane under a sky, one large
*main* object in front whose kind is the image's class, and a few smaller
distractor objects of other kinds further back. All primitives are convex
solids written as intersections of half-spaces and quadrics (in object-local
coordinates, resting on y = 0), so one analytic ray/solid routine renders all of
them, vectorised over the pixels with numpy.

What each image comes with, at image resolution:

- ``inverse_depth``: float32 ``1 / z`` (z = distance along the camera axis), like
  MiDaS: larger is nearer. Ground further than ``Z_FAR`` and the sky have the
  constant ``1 / Z_FAR`` (> 0).
- ``segmentation``: uint8 labels ``SKY = 0``, ``GROUND = 1`` and ``2 + k`` for an
  object of kind ``k`` (so all ids are < 182, the COCO-Stuff label range the
  segmentation stage produces).
- the class label: the main object's kind index ``k`` (synset ``KINDS[k].synset``).

A pixel is labelled as an object exactly where that object's inverse depth is
larger than the background's (the scene rendered without objects), which
``render(..., objects=False)`` reproduces for tests.

Everything is deterministic: ``scene_for(seed, split, kind, index)`` seeds a
numpy Generator from those four integers, so any image can be regenerated alone.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

SKY, GROUND = 0, 1
Z_FAR = 100.0          # background (sky, far ground) inverse depth is 1 / Z_FAR
FOV_DEG = 50.0
_FOG = 45.0            # distance at which fog has blended 63% toward the horizon colour


@dataclass(frozen=True)
class Plane:
    """Half-space ``normal . p <= offset`` (object-local coordinates)."""
    normal: tuple[float, float, float]
    offset: float


@dataclass(frozen=True)
class Quadric:
    """Region ``sum(a_i p_i^2) + b . p + c <= 0`` with diagonal ``a``.

    A negative ``a`` component makes a double cone; we keep its *lower* nappe,
    the part a solid resting on the ground can be.
    """
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    c: float


@dataclass(frozen=True)
class Kind:
    name: str
    synset: str
    solid: tuple[Plane | Quadric, ...]
    bound: tuple[float, float]      # (centre height, radius) of a sphere containing the solid




def _box(hx: float, hy: float, hz: float) -> tuple[Plane, ...]:
    return (Plane((1, 0, 0), hx), Plane((-1, 0, 0), hx), Plane((0, 0, 1), hz), Plane((0, 0, -1), hz),
            Plane((0, 1, 0), 2 * hy), Plane((0, -1, 0), 0))


def _ellipsoid(rx: float, ry: float, rz: float) -> Quadric:
    """Ellipsoid resting on the ground (centre at height ry)."""
    return Quadric((1 / rx**2, 1 / ry**2, 1 / rz**2), (0, -2 / ry, 0), 0.0)


_FLOOR = Plane((0, -1, 0), 0)
_OCTAHEDRON = tuple(Plane((sx, sy, sz), 1 + sy * 1.0) for sx in (1, -1) for sy in (1, -1) for sz in (1, -1))

KINDS: tuple[Kind, ...] = tuple(Kind(name, f"n{9000001 + i:08d}", solid, bound) for i, (name, solid, bound) in enumerate([
    ("sphere", (_ellipsoid(1.0, 1.0, 1.0),), (1.0, 1.0)),
    ("cube", _box(0.8, 0.8, 0.8), (0.8, 0.8 * 3**0.5)),
    ("cylinder", (Quadric((1, 0, 1), (0, 0, 0), -0.7**2), Plane((0, 1, 0), 1.8), _FLOOR), (0.9, 1.14)),
    ("cone", (Quadric((1, -1 / 4, 1), (0, 1, 0), -1.0), Plane((0, 1, 0), 2.0), _FLOOR), (1.0, 2**0.5)),
    ("pyramid", (Plane((1, 1 / 1.8, 0), 1), Plane((-1, 1 / 1.8, 0), 1), Plane((0, 1 / 1.8, 1), 1),
                 Plane((0, 1 / 1.8, -1), 1), _FLOOR), (0.9, 1.68)),
    ("dome", (Quadric((1, 1, 1), (0, 0, 0), -1.2**2), _FLOOR), (0.0, 1.2)),
    ("diamond", _OCTAHEDRON, (1.0, 1.0)),
    ("wedge", (Plane((1, 1 / 1.3, 0), 1), Plane((-1, 1 / 1.3, 0), 1), Plane((0, 0, 1), 1.1),
               Plane((0, 0, -1), 1.1), _FLOOR), (0.65, 1.62)),
    ("tower", _box(0.45, 1.2, 0.45), (1.2, 1.36)),
    ("egg", (_ellipsoid(0.65, 1.2, 0.65),), (1.2, 1.2)),
]))


@dataclass(frozen=True)
class Obj:
    kind: int
    position: tuple[float, float]      # (x, z) on the ground plane
    yaw: float                         # rotation about the vertical axis, radians
    scale: float
    colour: tuple[float, float, float]
    texture: str                       # "plain" | "stripes" | "checker"


@dataclass(frozen=True)
class Scene:
    camera_height: float
    pitch: float                       # radians, positive looks down
    sun: tuple[float, float, float]    # unit vector toward the sun
    sky: tuple[tuple[float, float, float], tuple[float, float, float]]   # horizon, zenith
    ground: tuple[tuple[float, float, float], tuple[float, float, float]]  # chequer colours
    objects: tuple[Obj, ...]           # objects[0] is the main object: its kind is the class

    @property
    def label(self) -> int:
        return self.objects[0].kind


@dataclass
class Rendered:
    image: np.ndarray          # (H, W, 3) uint8
    inverse_depth: np.ndarray  # (H, W) float32, 1/z, larger = nearer
    segmentation: np.ndarray   # (H, W) uint8


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*s), rng.uniform(*v))


def sample_scene(rng: np.random.Generator, kind: int, n_kinds: int, n_distractors: int) -> Scene:
    """A random scene whose main object has ``kind``; distractors use the other kinds."""
    z = rng.uniform(4.5, 6.5)
    scale = rng.uniform(0.9, 1.25)
    half_view = math.tan(math.radians(FOV_DEG) / 2)
    main = Obj(kind, (rng.uniform(-0.2, 0.2) * z * half_view, z), rng.uniform(0, 2 * math.pi), scale,
               _hsv(rng, (0.45, 0.9), (0.6, 1.0)), str(rng.choice(["plain", "stripes", "checker"])))
    objects = [main]
    others = [k for k in range(n_kinds) if k != kind] or [kind]
    for _ in range(n_distractors):
        # Further back than the main object, so it stays in front; spread across the view and
        # apart from each other (after 20 tries, overlapping solids simply render as their union).
        for _attempt in range(20):
            dz = rng.uniform(3.0, 12.0)
            x = rng.uniform(-0.9, 0.9) * (z + dz) * half_view
            if all(math.hypot(x - o.position[0], z + dz - o.position[1]) > 2.6 for o in objects[1:]):
                break
        objects.append(Obj(int(rng.choice(others)), (x, z + dz), rng.uniform(0, 2 * math.pi),
                           rng.uniform(0.55, 0.95), _hsv(rng, (0.3, 0.9), (0.45, 1.0)),
                           str(rng.choice(["plain", "stripes", "checker"]))))
    height = rng.uniform(1.0, 2.6)
    # Aim roughly at the main object's middle, with some jitter.
    pitch = math.atan2(height - scale, z) + math.radians(rng.uniform(-4, 6))
    elevation, azimuth = math.radians(rng.uniform(25, 65)), rng.uniform(0, 2 * math.pi)
    sun = (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))
    horizon = _hsv(rng, (0.05, 0.3), (0.8, 1.0))
    zenith = colorsys.hsv_to_rgb(rng.uniform(0.55, 0.68), rng.uniform(0.4, 0.8), rng.uniform(0.6, 0.95))
    g = np.array(_hsv(rng, (0.1, 0.5), (0.35, 0.7)))
    return Scene(height, pitch, sun, (horizon, zenith), (tuple(g), tuple(g * rng.uniform(0.55, 0.8))),
                 tuple(objects))


def scene_for(seed: int, split: int, kind: int, index: int, n_kinds: int = len(KINDS),
              n_distractors: int = 2) -> Scene:
    """The scene of image ``index`` of class ``kind`` in ``split`` (0 train, 1 validation)."""
    rng = np.random.default_rng([seed, split, kind, index])
    return sample_scene(rng, kind, n_kinds, n_distractors)


# ----------------------------------------------------------------------------- rendering

def _camera_rays(height: float, pitch: float, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Origin (3,) and directions (3, P) scaled so that the ray parameter t *is* camera depth z."""
    f = math.tan(math.radians(FOV_DEG) / 2)
    c = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2 - 1
    x, y = np.meshgrid(c * f, -c * f)                       # image rows go down, y goes up
    forward = np.array([0.0, -math.sin(pitch), math.cos(pitch)])
    up = np.array([0.0, math.cos(pitch), math.sin(pitch)])
    d = np.array([1.0, 0, 0])[:, None] * x.ravel() + up[:, None] * y.ravel() + forward[:, None]
    return np.array([0.0, height, 0.0]), d


def _interval(solid, o: np.ndarray, d: np.ndarray):
    """Entry/exit ray parameters of a convex solid, and the index of the entry surface.

    ``o`` is (3,) or (3, P) origins, ``d`` (3, P) directions, all object-local.
    """
    o = o.reshape(3, -1)
    n = d.shape[1]
    enter, leave = np.full(n, -np.inf), np.full(n, np.inf)
    which = np.zeros(n, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, s in enumerate(solid):
            if isinstance(s, Plane):
                nrm = np.asarray(s.normal, dtype=np.float64)
                nd, room = nrm @ d, s.offset - nrm @ o
                t = room / nd
                e = np.where(nd < 0, t, -np.inf)
                x = np.where(nd > 0, t, np.where((nd == 0) & (room < 0), -np.inf, np.inf))
            else:
                a, b = np.asarray(s.a, dtype=np.float64)[:, None], np.asarray(s.b, dtype=np.float64)[:, None]
                alpha = (a * d * d).sum(0)
                alpha = np.where(np.abs(alpha) < 1e-12, 1e-12, alpha)
                beta = ((2 * a * o + b) * d).sum(0)
                gamma = (a * o * o + b * o).sum(0) + s.c
                disc = beta * beta - 4 * alpha * gamma
                sq = np.sqrt(np.maximum(disc, 0))
                r0, r1 = (-beta - sq) / (2 * alpha), (-beta + sq) / (2 * alpha)
                lo, hi, real, up = np.minimum(r0, r1), np.maximum(r0, r1), disc >= 0, d[1] > 0
                # alpha > 0: inside between the roots. alpha < 0 (a cone): keep the lower nappe,
                # i.e. the piece before the first root when going up, after the last going down.
                e = np.where(alpha > 0, np.where(real, lo, np.inf), np.where(real & ~up, hi, -np.inf))
                x = np.where(alpha > 0, np.where(real, hi, -np.inf), np.where(real & up, lo, np.inf))
            which = np.where(e > enter, k, which)
            enter, leave = np.maximum(enter, e), np.minimum(leave, x)
    return enter, leave, which


def _frame(obj: Obj) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (world -> local, by -yaw about y) and the object's ground position."""
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]), np.array([obj.position[0], 0.0, obj.position[1]])


def _local(obj: Obj, p: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays into the object's frame (translate, un-rotate, un-scale); t is unchanged."""
    rot, shift = _frame(obj)
    return rot @ (p.reshape(3, -1) - shift[:, None]) / obj.scale, rot @ d / obj.scale


def _intersect(obj: Obj, p: np.ndarray, d: np.ndarray):
    """``_interval`` of world rays with ``obj``, computed only for rays that pass its bounding sphere.

    Returns entry, exit (misses: inf, -inf), entry surface index, and the rays in local coordinates.
    """
    lo, ld = _local(obj, p, d)
    centre_y, radius = KINDS[obj.kind].bound
    oc = lo - np.array([[0.0], [centre_y], [0.0]])
    od = (oc * ld).sum(0)
    near = (oc * oc).sum(0) - od * od / (ld * ld).sum(0) <= radius * radius * 1.001
    n = d.shape[1]
    enter, leave, which = np.full(n, np.inf), np.full(n, -np.inf), np.zeros(n, dtype=np.int64)
    if near.any():
        sub = lo if lo.shape[1] == 1 else lo[:, near]
        enter[near], leave[near], which[near] = _interval(KINDS[obj.kind].solid, sub, ld[:, near])
    return enter, leave, which, lo, ld


def _shadowed(objects: tuple[Obj, ...], p: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Whether the way from points ``p`` (3, P) to the sun is blocked by any object."""
    d = np.broadcast_to(sun[:, None], p.shape)
    blocked = np.zeros(p.shape[1], dtype=bool)
    for obj in objects:
        enter, leave, *_ = _intersect(obj, p, d)
        blocked |= (enter <= leave) & (leave > 1e-6)
    return blocked


def _texture(kind: str, p: np.ndarray) -> np.ndarray:
    if kind == "stripes":
        return np.where(np.floor(p[1] * 3) % 2 == 0, 1.0, 0.7)
    if kind == "checker":
        return np.where(np.floor(p * 2.5).sum(0) % 2 == 0, 1.0, 0.7)
    return np.ones(p.shape[1])


def render(scene: Scene, resolution: int, objects: bool = True) -> Rendered:
    """Ray-cast ``scene`` at ``resolution`` x ``resolution`` pixels.

    ``objects=False`` renders only ground and sky: the background that every
    object pixel must be nearer than.
    """
    o, d = _camera_rays(scene.camera_height, scene.pitch, resolution)
    sun = np.asarray(scene.sun)
    with np.errstate(divide="ignore"):
        t_ground = np.where(d[1] < 0, -o[1] / d[1], np.inf)
        inverse_depth = (1.0 / np.minimum(t_ground, Z_FAR)).astype(np.float32)
    seg = np.where(np.isfinite(t_ground), GROUND, SKY).astype(np.uint8)
    depth_t = t_ground.copy()

    # Background colour: sky gradient by elevation; chequered ground with object shadows.
    horizon, zenith = np.asarray(scene.sky[0]), np.asarray(scene.sky[1])
    elevation = np.clip(d[1] / np.linalg.norm(d, axis=0), 0, 1)[:, None]
    rgb = horizon + (zenith - horizon) * np.sqrt(elevation)
    g = np.isfinite(t_ground)
    p = o[:, None] + t_ground[g] * d[:, g]
    light, dark = np.asarray(scene.ground[0]), np.asarray(scene.ground[1])
    checker = (np.floor(p[0]) + np.floor(p[2])) % 2 == 0
    fade = np.exp(-t_ground[g] / 12)[:, None]      # fade the chequer out with distance (no moire)
    ground = np.where(checker[:, None], light, light + (dark - light) * fade)
    lit = 0.55 + 0.45 * sun[1]
    if objects:
        lit = np.where(_shadowed(scene.objects, p, sun), 0.45, lit)
    rgb[g] = ground * np.reshape(lit, (-1, 1))

    if objects:
        for obj in scene.objects:
            enter, leave, which, lo, ld = _intersect(obj, o, d)
            t = np.where((enter <= leave) & (enter > 1e-6), enter, np.inf)
            with np.errstate(divide="ignore"):
                inv = (1.0 / t).astype(np.float32)
            # Visible where nearer than everything so far, decided on the stored float32
            # values: an object pixel is exactly one whose depth beats the background's.
            m = inv > inverse_depth
            if not m.any():
                continue
            inverse_depth[m], seg[m], depth_t[m] = inv[m], 2 + obj.kind, t[m]
            q = lo[:, 0:1] + t[m] * ld[:, m]                  # local hit points
            solid = KINDS[obj.kind].solid
            normal = np.zeros_like(q)
            for k, s in enumerate(solid):
                sel = which[m] == k
                if isinstance(s, Plane):
                    normal[:, sel] = np.asarray(s.normal, dtype=np.float64)[:, None]
                else:
                    normal[:, sel] = 2 * np.asarray(s.a)[:, None] * q[:, sel] + np.asarray(s.b)[:, None]
            rot, _ = _frame(obj)
            normal = rot.T @ normal
            normal /= np.linalg.norm(normal, axis=0, keepdims=True) + 1e-12
            shade = 0.3 + 0.7 * np.clip(sun @ normal, 0, 1)
            rgb[m] = np.asarray(obj.colour) * (shade * _texture(obj.texture, q))[:, None]

    fog = (1 - np.exp(-np.minimum(depth_t, 1e6) / _FOG))[:, None]
    rgb = rgb + (horizon - rgb) * fog
    image = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).reshape(resolution, resolution, 3)
    return Rendered(image, inverse_depth.reshape(resolution, resolution), seg.reshape(resolution, resolution))


def write_extracted_dataset(root, n_train: int = 4, n_val: int = 2, classes: int = 2, resolution: int = 32):
    """Render scenes straight into what `extract`, `depth` and `segment` produce under
    ``root/data`` (images + filelist.txt, depth and segmentation maps, raw/synsets.json),
    skipping the archives: a small real dataset for tests and benchmarks. Returns ``root``."""
    import json
    from pathlib import Path

    from PIL import Image

    from tasks.data.formats import save_depth_png, save_label_png
    from tasks.data.layout import Layout

    root = Path(root)
    layout = Layout(root / "data")
    kinds = KINDS[:classes]
    for s, (split, n) in enumerate((("train", n_train), ("validation", n_val))):
        relpaths = []
        for k, kind in enumerate(kinds):
            for i in range(n):
                r = render(scene_for(0, s, k, i, classes), resolution)
                rel = f"{kind.synset}/{kind.synset}_{i + 1}"
                (layout.images / split / kind.synset).mkdir(parents=True, exist_ok=True)
                Image.fromarray(r.image).save(layout.images / split / f"{rel}.JPEG", quality=95)
                save_depth_png(layout.maps("depth") / split / f"{rel}.png", r.inverse_depth)
                save_label_png(layout.maps("segmentation") / split / f"{rel}.png", r.segmentation)
                relpaths.append(f"{rel}.JPEG")
        layout.filelist(split).write_text("".join(f"{p}\n" for p in sorted(relpaths)))
    layout.raw.mkdir(parents=True, exist_ok=True)
    layout.synsets_json.write_text(json.dumps({kind.synset: {"index": k, "human": kind.name}
                                               for k, kind in enumerate(kinds)}))
    return root
