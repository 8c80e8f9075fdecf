"""The procedural demo scenes: deterministic, and their depth / segmentation / class are exact."""
import math

import numpy as np
import pytest

from tasks.data import scenes
from tasks.data.scenes import GROUND, KINDS, SKY, Z_FAR, Obj, Scene, render, scene_for

RES = 24


def _single(kind: int, z: float, height: float, pitch: float = 0.0, scale: float = 1.0) -> Scene:
    obj = Obj(kind, (0.0, z), 0.0, scale, (0.8, 0.2, 0.2), "plain")
    return Scene(height, pitch, (0.0, 1.0, 0.0), ((0.9, 0.9, 0.9), (0.3, 0.5, 0.9)),
                 ((0.5, 0.5, 0.5), (0.3, 0.3, 0.3)), (obj,))


def test_same_seed_same_scene_other_seed_other_scene():
    a = render(scene_for(7, 0, 3, 5), RES)
    b = render(scene_for(7, 0, 3, 5), RES)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.inverse_depth.tobytes() == b.inverse_depth.tobytes()
    assert a.segmentation.tobytes() == b.segmentation.tobytes()
    for other in (scene_for(8, 0, 3, 5), scene_for(7, 1, 3, 5), scene_for(7, 0, 3, 6)):
        assert render(other, RES).image.tobytes() != a.image.tobytes()


@pytest.mark.parametrize("kind", range(len(KINDS)))
def test_object_pixels_are_exactly_where_depth_beats_the_background(kind):
    for index in range(3):
        scene = scene_for(0, 0, kind, index)
        full, background = render(scene, RES), render(scene, RES, objects=False)
        objects = full.segmentation >= 2
        assert np.array_equal(objects, full.inverse_depth > background.inverse_depth)
        # Elsewhere the depth and labels are the background's, bit for bit.
        assert np.array_equal(full.inverse_depth[~objects], background.inverse_depth[~objects])
        assert np.array_equal(full.segmentation[~objects], background.segmentation[~objects])
        assert set(np.unique(background.segmentation)) <= {SKY, GROUND}
        assert full.segmentation.max() < 182 and full.inverse_depth.min() > 0
        # The class is the main object's kind, and that object is clearly visible.
        assert scene.label == kind
        assert (full.segmentation == 2 + kind).mean() > 0.04


def test_sky_and_far_ground_have_the_constant_background_depth():
    r = render(_single(0, 6.0, 1.0), 33)
    assert np.all(r.inverse_depth[r.segmentation == SKY] == np.float32(1 / Z_FAR))
    assert r.inverse_depth.min() == np.float32(1 / Z_FAR)


def test_depth_is_exact_for_a_sphere_and_the_ground():
    res, height, z = 33, 1.0, 6.0          # odd resolution: the middle pixel looks straight ahead
    r = render(_single(0, z, height), res)  # unit sphere, centre at (0, 1, 6): eye level
    mid = res // 2
    assert r.segmentation[mid, mid] == 2 + 0
    assert r.inverse_depth[mid, mid] == pytest.approx(1 / (z - 1.0), rel=1e-6)
    # Ground below the horizon (pitch 0): the ray through row i meets y=0 at depth h / (c f).
    f = math.tan(math.radians(scenes.FOV_DEG) / 2)
    for row in (res - 1, res - 3):
        c = (row + 0.5) / res * 2 - 1
        assert r.segmentation[row, 0] == GROUND
        assert r.inverse_depth[row, 0] == pytest.approx(c * f / height, rel=1e-6)


def test_every_kind_renders_a_solid_resting_on_the_ground():
    for kind in range(len(KINDS)):
        r = render(_single(kind, 5.0, 1.5, pitch=0.25), RES)
        mask = r.segmentation == 2 + kind
        assert mask.sum() > 20, KINDS[kind].name
        # Lowest object row touches ground: the row below the object has ground, no sky.
        assert GROUND in r.segmentation[mask.nonzero()[0].max():].ravel()


def test_kinds_have_distinct_names_and_synset_like_ids():
    names = [k.name for k in KINDS]
    assert len(set(names)) == len(KINDS) == 10
    assert all(len(k.synset) == 9 and k.synset[0] == "n" and k.synset[1:].isdigit() for k in KINDS)


def test_bounding_spheres_contain_their_solids():
    """Rendering skips rays that miss a kind's bounding sphere, so it must contain the whole solid."""
    g = np.linspace(-2.5, 2.5, 61)
    p = np.stack(np.meshgrid(g, g + 2.0, g), 0).reshape(3, -1)
    for kind in KINDS:
        inside = np.ones(p.shape[1], dtype=bool)
        for s in kind.solid:
            if isinstance(s, scenes.Plane):
                inside &= np.asarray(s.normal) @ p <= s.offset
            else:
                inside &= (np.asarray(s.a)[:, None] * p * p).sum(0) + np.asarray(s.b) @ p + s.c <= 0
        centre_y, radius = kind.bound
        assert inside.sum() > 100, kind.name
        dist = np.sqrt(p[0] ** 2 + (p[1] - centre_y) ** 2 + p[2] ** 2)
        assert dist[inside].max() <= radius + 1e-9, kind.name
        assert dist[inside].max() > 0.85 * radius, kind.name          # and is not needlessly loose
