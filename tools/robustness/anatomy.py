# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""A second, independently parameterised cardiac anatomy model, for anatomy and geometry test domains.

The training phantom (:mod:`scripts.data.phantom`) draws 2D sections slice by slice. This model builds the heart and
the thorax as 3D shapes in a patient frame (RAS millimetres: ``+x`` patient right, ``+y`` anterior, ``+z`` superior;
origin at the thorax centre, ``z = 0`` at the end-diastolic mitral plane) and samples a short-axis stack on planes
whose normal is tilted 10-25 degrees from the LV long axis, so that sections are elliptical and the RV/LV proportions
differ from an exact short-axis cut.

Heart (in a heart frame ``(a, q, c)``: ``c`` along the LV long axis from the ED base towards the apex, ``+a`` towards
the lateral wall, the RV lies towards ``-a``):

* LV: nested superelliptic solids of revolution (endocardium inside epicardium), cut flat at the base plane;
* RV: a crescent band wrapped around the septum, ``0 < rho - r_epi < w(phi, c)`` with a tapering angular profile
  (triangular to rounded), its own free wall, shorter than the LV;
* papillary muscles (myocardial signal, labelled LV), epicardial fat with an AV-groove thickening, both atria above
  the base (unlabelled blood);
* ED -> ES: the epicardial apex stays, the base descends, the LV cavity volume drops to ``1 - EF`` while the
  myocardial volume is conserved; the RV band narrows to its own ejection fraction.

Thorax: body wall (subcutaneous fat, muscle, flat back), both lungs, a fatty mediastinum, a vertebral body with the
spinal canal, the descending aorta, the oesophagus, the sternum, the ascending aorta, the pulmonary trunk and the
superior vena cava near the base, and both hemidiaphragm domes with the liver on the patient's right.

Image appearance reuses the training phantom's default relative intensities (bSSFP-like: bright blood and fat, dark
lungs), a smooth multiplicative coil field spanning ``1 +- 0.4``, an in-plane 1 mm Gaussian partial-volume blur
(after 2x supersampling for coarse pixels) and Rician noise of 0.04 of the blood signal, so the shift is anatomy and
geometry, not contrast.

Arrays are ``(H, W, D)`` = (rows, cols, slices), slices ordered base (index 0) to apex. Labels: 0 background, 1 LV
blood pool, 2 LV myocardium, 3 RV blood pool (codes from :mod:`scripts.labels`); atria, vessels and every other
tissue are background.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage, optimize
from scipy.integrate import trapezoid

from scripts.data.nifti import write_nifti
from scripts.data.phantom import TISSUE_INTENSITY
from scripts.labels import by_name

__all__ = [
    "COVERAGES",
    "PHENOTYPES",
    "crop_fov",
    "generate_thorax_subject",
    "rotate_flip",
    "write_thorax_dataset",
]

logger = logging.getLogger(__name__)

DESCRIPTION = "CoopSeg thorax anatomy test domain"

LABEL_LV, LABEL_MYO, LABEL_RV = (by_name(n).code for n in ("lv", "myocardium", "rv"))

COVERAGES = ("full", "partial")
PHENOTYPES = ("dilated", "hypertrophic", "small")

# Subject parameter ranges, all outside the training phantom's (mm, degrees, fractions).
LV_RADIUS_MM = {"small": (12.0, 17.0), "dilated": (31.0, 38.0)}  # ED endocardial radius (source: 18-30)
WALL_MM = {"thin": (3.5, 5.5), "thick": (12.0, 16.0)}  # ED wall thickness (source: 6-11)
EF_RANGES = {"low": (0.25, 0.45), "high": (0.70, 0.80)}  # LV ejection fraction (source: 0.45-0.70)
SPACING_MM = ((0.9, 1.1), (2.0, 2.4))  # in-plane pixel spacing (source: 1.2-1.9)
THICKNESS_MM = ((5.0, 6.5), (11.0, 13.0))  # slice thickness = slice spacing (source: 8-10)
FOV_MM = ((160.0, 190.0), (300.0, 380.0))  # field of view (source: 200-280)
OFFSET_MM = (30.0, 60.0)  # in-plane heart offset from the image centre (source: +-20 per axis)
TILT_DEG = (10.0, 25.0)  # slice normal vs LV long axis (source: 0)

# phenotype -> (cavity size, wall, EF kind); None: either EF kind
_PHENOTYPE_KINDS: dict[str, tuple[str, str, str | None]] = {
    "dilated": ("dilated", "thin", "low"),
    "hypertrophic": ("small", "thick", "high"),
    "small": ("small", "thin", None),
}

_TISSUES = (*TISSUE_INTENSITY, "mediastinal_fat")  # the extra code renders as fat; domes may replace it
_T = {name: idx for idx, name in enumerate(_TISSUES)}
_AIR, _LUNG, _FAT, _BLOOD = _T["air"], _T["lung"], _T["fat"], _T["blood"]
_MYO, _MUSCLE, _LIVER, _BONE, _MEDFAT = _T["myocardium"], _T["muscle"], _T["liver"], _T["bone"], _T["mediastinal_fat"]

_TEMPLATE_STEP_MM = 0.5  # axial body template resolution
_FIT_MARGIN_MM = 6.0  # labelled heart kept this far inside the field of view
_BOX_SLAB_MM = 4.0  # heart envelope points this close to a plane bound its section
_BOX_MARGIN_MM = 4.0
_COIL_STRENGTH = 0.4  # coil field spans 1 +- this (as the training phantom's default)
_NOISE = 0.04  # Rician sigma relative to blood
_BLUR_MM = 1.0  # in-plane Gaussian partial-volume blur


# ----------------------------------------------------------------------------------------------------------- helpers
def _unit(v: np.ndarray) -> np.ndarray:
    """``v / |v|`` for a 3-vector."""
    return np.asarray(v, dtype=np.float64) / float(np.linalg.norm(v))


def _dome(t: np.ndarray, length: float, p: float) -> np.ndarray:
    """Superelliptic profile ``(1 - (t / length)^p)^(1/p)`` for ``0 <= t <= length`` (mm), else 0; dtype of ``t``."""
    if length <= 0:
        return np.zeros_like(t)
    dt = t.dtype.type
    x = np.clip(t * dt(1.0 / length), 0.0, 1.0)
    prof = (dt(1.0) - x ** dt(p)) ** dt(1.0 / p)
    return np.where(t >= 0, prof, dt(0.0))


def _taper(dphi: np.ndarray, half_width: float, q: float) -> np.ndarray:
    """Angular RV profile ``1 - (|dphi| / half_width)^q`` inside the sector, 0 outside (q=1: triangular)."""
    dt = dphi.dtype.type
    x = np.minimum(np.abs(dphi) * dt(1.0 / half_width), dt(1.0))
    return dt(1.0) - x ** dt(q)


def _wrap(angle: np.ndarray, centre: float) -> np.ndarray:
    """``angle - centre`` wrapped to ``[-pi, pi)`` (radians)."""
    dt = angle.dtype.type
    return (angle - dt(centre) + dt(np.pi)) % dt(2 * np.pi) - dt(np.pi)


def _ellipsoid_level(coords: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``sum(((x_i - centre_i) / radii_i)^2)`` over the coordinate arrays (mm)."""
    out = np.zeros_like(coords[0])
    for x, c, r in zip(coords, centre, radii, strict=True):
        out += ((x - np.float32(c)) * np.float32(1.0 / r)) ** 2
    return out


# --------------------------------------------------------------------------------------------------------- the heart
def _solve_lv_es(r_ed: float, wall_ed: float, len_ed: float, apex_ratio: float, ef: float, short: float) -> dict:
    """ES LV shape: epicardial apex fixed, epicardial length ``short`` times ED, cavity ``(1 - ef)`` of ED and
    myocardial volume conserved (volumes in units of the common profile factor ``pi * kappa(p)``)."""
    e_ed = len_ed + apex_ratio * wall_ed
    e_es = short * e_ed
    v_cav_es = (1.0 - ef) * r_ed**2 * len_ed
    v_myo = (r_ed + wall_ed) ** 2 * e_ed - r_ed**2 * len_ed

    def radius(t: float) -> float:
        return float(np.sqrt(v_cav_es / (e_es - apex_ratio * t)))

    def excess(t: float) -> float:
        return (radius(t) + t) ** 2 * e_es - v_cav_es - v_myo

    t_es = optimize.brentq(excess, 0.5 * wall_ed, 0.95 * e_es / apex_ratio, xtol=1e-6)
    return {
        "c_base": e_ed - e_es,
        "r_endo": radius(t_es),
        "r_epi": radius(t_es) + t_es,
        "len_endo": e_es - apex_ratio * t_es,
        "len_epi": e_es,
    }


def _rv_volume(lvf: dict, rv: dict, p: float, width: float) -> float:
    """RV cavity volume (mm^3) of the crescent band of maximal ``width`` (mm) around one frame's LV."""
    length = rv["frac"] * lvf["len_endo"]
    t = np.linspace(0.0, length, 257)
    r_epi = lvf["r_epi"] * _dome(t, lvf["len_epi"], p)
    phi = np.linspace(-rv["half_width"], rv["half_width"], 181)
    w = width * _dome(t, length, rv["p"])[:, None] * _taper(phi, rv["half_width"], rv["shape"])[None, :]
    area = trapezoid(r_epi[:, None] * w + 0.5 * w * w, phi, axis=1)
    return float(trapezoid(area, t))


def _draw_lv(rng: np.random.Generator) -> dict[str, Any]:
    """Phenotype, ED LV size, EF and the ED/ES LV frames (mm, heart-frame ``c`` from the ED base)."""
    phenotype = PHENOTYPES[int(rng.integers(len(PHENOTYPES)))]
    size, wall_kind, ef_kind = _PHENOTYPE_KINDS[phenotype]
    ef_kind = ef_kind or ("low", "high")[int(rng.integers(2))]
    r_ed, wall = rng.uniform(*LV_RADIUS_MM[size]), rng.uniform(*WALL_MM[wall_kind])
    ef = rng.uniform(*EF_RANGES[ef_kind])
    ratio = rng.uniform(2.0, 2.6) if size == "dilated" else rng.uniform(2.8, 3.6)
    len_ed = float(np.clip(r_ed * ratio, 40.0, 110.0))
    apex_ratio, short, p = rng.uniform(0.6, 0.9), rng.uniform(0.87, 0.95), rng.uniform(2.0, 3.0)
    ed = {"c_base": 0.0, "r_endo": r_ed, "r_epi": r_ed + wall, "len_endo": len_ed}
    ed["len_epi"] = len_ed + apex_ratio * wall
    es = _solve_lv_es(r_ed, wall, len_ed, apex_ratio, ef, short)
    return {"phenotype": phenotype, "ef": float(ef), "shortening": float(short), "p": float(p), "ED": ed, "ES": es}


def _draw_rv(rng: np.random.Generator, lv: dict) -> dict[str, Any]:
    """RV crescent: sector half width and taper, length fraction, ED/ES widths (mm) solved for its EF."""
    rv = {
        "phi": float(np.pi + rng.uniform(-0.25, 0.25)),
        "half_width": float(np.radians(rng.uniform(60.0, 90.0))),
        "shape": float(rng.uniform(1.0, 1.8)),  # 1: triangular taper, larger: rounder
        "frac": float(rng.uniform(0.78, 0.95)),
        "p": float(rng.uniform(1.5, 2.5)),
        "wall": float(rng.uniform(2.5, 4.5)),
        "ef": float(rng.uniform(0.30, 0.55) if lv["phenotype"] == "dilated" else rng.uniform(0.45, 0.70)),
    }
    width_ed = float(rng.uniform(0.85, 1.25) * (lv["ED"]["r_endo"] + 6.0))
    target = (1.0 - rv["ef"]) * _rv_volume(lv["ED"], rv, lv["p"], width_ed)
    width_es = optimize.brentq(lambda w: _rv_volume(lv["ES"], rv, lv["p"], w) - target, 0.0, 2.0 * width_ed)
    rv["width"] = {"ED": width_ed, "ES": float(width_es)}
    return rv


def _heart_axes(rng: np.random.Generator) -> np.ndarray:
    """Rows ``a`` (lateral), ``q``, ``c`` (base -> apex) of the heart frame in RAS world coordinates."""
    az, el = np.radians(rng.uniform(35.0, 60.0)), np.radians(rng.uniform(20.0, 40.0))
    d = np.array([-np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), -np.sin(el)])  # left-anterior-inferior (RAS)
    beta = np.radians(rng.uniform(20.0, 55.0))
    towards_rv = np.array([np.cos(beta), np.sin(beta), 0.0])  # right-anterior of the LV
    e_rv = _unit(towards_rv - towards_rv.dot(d) * d)
    a_hat = -e_rv
    q_hat = np.cross(d, a_hat)
    q_hat = q_hat if q_hat[1] >= 0 else -q_hat
    return np.stack([a_hat, q_hat, d])


def _in_plane_angle(axes: np.ndarray, world_dir: np.ndarray) -> float:
    """Heart-frame angle ``atan2(q, a)`` (radians) of a world direction projected on the short-axis plane."""
    return float(np.arctan2(world_dir.dot(axes[1]), world_dir.dot(axes[0])))


def _draw_details(rng: np.random.Generator, heart: dict) -> None:
    """Papillary muscles, epicardial fat and atria (heart-frame mm), in place."""
    axes, lv, rv = heart["axes"], heart["lv"], heart["rv"]
    inferior = _in_plane_angle(axes, np.array([0.0, 0.0, -1.0]))
    anterior_lat = np.angle(np.exp(1j * (inferior + np.pi)) + 1.0)  # between anterior and lateral walls
    post_sept = np.angle(np.exp(1j * inferior) + np.exp(1j * rv["phi"]))  # between inferior wall and septum
    heart["paps"] = {
        "phi": [float(anterior_lat + rng.uniform(-0.2, 0.2)), float(post_sept + rng.uniform(-0.2, 0.2))],
        "r": [float(rng.uniform(2.5, 4.5)), float(rng.uniform(2.5, 4.5))],
    }
    heart["fat"] = {
        "thick": float(rng.uniform(1.5, 5.0)),
        "phi": float(rng.uniform(0.0, 2 * np.pi)),
        "groove": float(rng.uniform(3.0, 7.0)),
        "apex": float(rng.uniform(2.0, 6.0)),
        "rv": float(rng.uniform(1.0, 4.0)),
    }
    r_epi, w_rv = lv["ED"]["r_epi"], rv["width"]["ED"]
    scale = (lv["ED"]["r_endo"] / 25.0) ** 0.3
    la_phi = _in_plane_angle(axes, _unit(np.array([0.0, -1.0, 0.6])))  # posterior-superior
    atria = {}
    for name, phi, dist in (("la", la_phi, 0.3 * r_epi), ("ra", rv["phi"], r_epi + 0.45 * w_rv)):
        radii = np.array([rng.uniform(16.0, 23.0), rng.uniform(14.0, 20.0), rng.uniform(17.0, 25.0)]) * scale
        atria[name] = {"phi": phi, "dist": float(dist), "radii": radii, "sink": float(rng.uniform(0.6, 0.8))}
    heart["atria"] = atria
    heart["atria_es_scale"] = float(rng.uniform(1.05, 1.12))


def _draw_heart(rng: np.random.Generator) -> dict[str, Any]:
    """All heart parameters: LV, RV, details, axes and the ED base centre ``base`` (world mm)."""
    heart: dict[str, Any] = {"lv": _draw_lv(rng)}
    heart["rv"] = _draw_rv(rng, heart["lv"])
    heart["axes"] = _heart_axes(rng)
    _draw_details(rng, heart)
    heart["base"] = np.array([-rng.uniform(10.0, 30.0), rng.uniform(-5.0, 20.0), 0.0])
    return heart


def _atrium(heart: dict, name: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """Heart-frame centre and semi-axes (mm) of one atrium in one frame; it hangs above that frame's base."""
    at = heart["atria"][name]
    radii = at["radii"] * (heart["atria_es_scale"] if frame == "ES" else 1.0)
    c = heart["lv"][frame]["c_base"] - at["sink"] * radii[2]
    return np.array([at["dist"] * np.cos(at["phi"]), at["dist"] * np.sin(at["phi"]), c]), radii


def _to_world(heart: dict, a: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Heart-frame points (mm) -> world ``(N, 3)``."""
    pts = np.stack([np.ravel(a), np.ravel(q), np.ravel(c)], axis=1)
    return heart["base"] + pts @ heart["axes"]


def _polar_point(heart: dict, rho: float, phi: float, c: float) -> np.ndarray:
    """World position ``(3,)`` (mm) of the heart-frame point at radius ``rho``, angle ``phi`` and depth ``c``."""
    return heart["base"] + np.array([rho * np.cos(phi), rho * np.sin(phi), c]) @ heart["axes"]


def _lv_points(heart: dict, frame: str, extra: float = 0.0, apex_extra: float = 0.0) -> np.ndarray:
    """World points (mm) on the LV epicardium of ``frame``, grown by ``extra`` radially and ``apex_extra`` apically."""
    lvf, p = heart["lv"][frame], heart["lv"]["p"]
    t = np.linspace(0.0, lvf["len_epi"] + apex_extra, 80)
    phi = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
    rho = (lvf["r_epi"] + extra) * _dome(t, lvf["len_epi"] + apex_extra, p)
    tt, pp = np.meshgrid(t, phi, indexing="ij")
    rr = np.repeat(rho[:, None], phi.size, axis=1)
    return _to_world(heart, rr * np.cos(pp), rr * np.sin(pp), tt + lvf["c_base"])


def _rv_points(heart: dict, frame: str, extra: float = 0.0) -> np.ndarray:
    """World points (mm) on the RV cavity's outer surface of ``frame``, grown by ``extra`` (mm)."""
    lvf, rv, p = heart["lv"][frame], heart["rv"], heart["lv"]["p"]
    length = rv["frac"] * lvf["len_endo"]
    t = np.linspace(0.0, length + extra, 80)
    phi = np.linspace(-rv["half_width"], rv["half_width"], 120)
    r_epi = lvf["r_epi"] * _dome(t, lvf["len_epi"], p)
    w = rv["width"][frame] * _dome(t, length, rv["p"])[:, None] * _taper(phi, rv["half_width"], rv["shape"])[None, :]
    rr = r_epi[:, None] + w + extra
    tt, pp = np.meshgrid(t, phi + rv["phi"], indexing="ij")
    return _to_world(heart, rr * np.cos(pp), rr * np.sin(pp), tt + lvf["c_base"])


def _atrium_points(heart: dict, name: str, frame: str, extra: float) -> np.ndarray:
    """World points (mm) on one atrium's surface grown by ``extra`` (mm)."""
    centre, radii = _atrium(heart, name, frame)
    u, v = np.meshgrid(np.linspace(0, np.pi, 30), np.linspace(0, 2 * np.pi, 60), indexing="ij")
    r = radii + extra
    return _to_world(
        heart,
        centre[0] + r[0] * np.sin(u) * np.cos(v),
        centre[1] + r[1] * np.sin(u) * np.sin(v),
        centre[2] + r[2] * np.cos(u),
    )


def _labelled_points(heart: dict) -> np.ndarray:
    """World points (mm) bounding every labelled structure in both frames."""
    return np.concatenate([f(heart, fr) for fr in ("ED", "ES") for f in (_lv_points, _rv_points)])


def _envelope_points(heart: dict) -> np.ndarray:
    """World points (mm) bounding everything the heart paints (fat envelopes and atria) in both frames."""
    fat = heart["fat"]
    grow = fat["thick"] + fat["groove"] + 1.0
    parts = []
    for fr in ("ED", "ES"):
        parts.append(_lv_points(heart, fr, extra=grow, apex_extra=fat["apex"] + 1.0))
        parts.append(_rv_points(heart, fr, extra=heart["rv"]["wall"] + fat["rv"] + 1.0))
        parts.extend(_atrium_points(heart, name, fr, extra=6.0) for name in ("la", "ra"))
    return np.concatenate(parts)


# -------------------------------------------------------------------------------------------------------- the thorax
def _draw_body(rng: np.random.Generator, heart: dict) -> dict[str, Any]:
    """Body wall, spine, vessels and diaphragm (world mm), sized so that the heart fits inside the thorax."""
    pts = _envelope_points(heart)
    fat = {"ant": rng.uniform(8.0, 25.0), "lat": rng.uniform(6.0, 20.0), "post": rng.uniform(5.0, 14.0)}
    mus = {"ant": rng.uniform(8.0, 14.0), "lat": rng.uniform(7.0, 12.0), "post": rng.uniform(28.0, 40.0)}
    half_w = max(rng.uniform(135.0, 170.0), np.abs(pts[:, 0]).max() + fat["lat"] + mus["lat"] + 15.0)
    ant = max(rng.uniform(90.0, 120.0), pts[:, 1].max() + fat["ant"] + mus["ant"] + 12.0)
    r_vb, r_canal, r_da = rng.uniform(14.0, 19.0), rng.uniform(6.0, 8.0), rng.uniform(10.0, 13.0)
    post = rng.uniform(85.0, 105.0)
    spine_front = -post + fat["post"] + 0.55 * mus["post"] + r_canal + 3.0 + 2.0 * r_vb
    post += max(0.0, spine_front + 5.0 - pts[:, 1].min())  # keep the spine behind the heart
    y_canal = -post + fat["post"] + 0.55 * mus["post"]
    y_vb = y_canal + r_canal + 3.0 + r_vb
    x_mid = rng.uniform(-5.0, 5.0)
    body = {
        "half_width": half_w,
        "ant": ant,
        "post": post,
        "fat": fat,
        "muscle": mus,
        "square": rng.uniform(0.2, 0.5),
        "flat": rng.uniform(0.88, 0.95),
        "x_mid": x_mid,
        "med_width": rng.uniform(4.0, 9.0),
        "vb": (x_mid, y_vb, r_vb),
        "canal": (x_mid, y_canal, r_canal),
        "aorta": (x_mid - 0.75 * (r_vb + r_da), y_vb + 0.55 * (r_vb + r_da), r_da),
        "oesophagus": (x_mid + rng.uniform(4.0, 10.0), y_vb + r_vb + 9.0, rng.uniform(5.0, 7.0)),
    }
    body["vessels"] = _draw_vessels(rng, heart)
    body["domes"] = _draw_domes(rng, heart, body)
    return body


def _draw_vessels(rng: np.random.Generator, heart: dict) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Great vessels as capsules ``(start, end, radius)`` (world mm): ascending aorta, pulmonary trunk, SVC."""
    lv, rv = heart["lv"]["ED"], heart["rv"]
    r_epi, w_rv = lv["r_epi"], rv["width"]["ED"]
    ant = _in_plane_angle(heart["axes"], np.array([0.0, 1.0, 0.0]))
    ao_dir = np.angle(np.exp(1j * rv["phi"]) + np.exp(1j * ant))
    pa_dir = np.angle(2 * np.exp(1j * rv["phi"]) + np.exp(1j * ant))
    ao0 = _polar_point(heart, 0.35 * r_epi, ao_dir, -rng.uniform(3.0, 8.0))
    pa0 = _polar_point(heart, r_epi + 0.4 * w_rv, pa_dir, -rng.uniform(1.0, 5.0))
    r_ao = rng.uniform(12.0, 17.0)
    ra_centre, ra_radii = _atrium(heart, "ra", "ED")
    ra_top = heart["base"] + (ra_centre - np.array([0.0, 0.0, ra_radii[2]])) @ heart["axes"]
    return [
        (ao0, ao0 + 100.0 * _unit(np.array([0.25, 0.1, 1.0])), r_ao),
        (pa0, pa0 + 55.0 * _unit(np.array([-0.35, -0.5, 0.8])), rng.uniform(11.0, 15.0)),
        (ra_top, ra_top + 90.0 * _unit(np.array([0.05, -0.05, 1.0])), rng.uniform(8.0, 11.0)),
    ]


def _draw_domes(rng: np.random.Generator, heart: dict, body: dict) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Hemidiaphragm domes ``(centre, semi-axes, tissue)`` (world mm): liver right, spleen/stomach left."""
    apex = _polar_point(heart, 0.0, 0.0, heart["lv"]["ED"]["len_epi"])
    inner = body["half_width"] - body["fat"]["lat"] - body["muscle"]["lat"]
    domes = []
    for side, top, tissue in ((1.0, rng.uniform(0.0, 25.0), _LIVER), (-1.0, rng.uniform(-20.0, 0.0), _LIVER)):
        radii = np.array([rng.uniform(85.0, 115.0), rng.uniform(75.0, 100.0), rng.uniform(80.0, 110.0)])
        centre = np.array([side * inner * rng.uniform(0.3, 0.5), rng.uniform(-25.0, 5.0), apex[2] + top - radii[2]])
        domes.append((centre, radii, tissue))
    return domes


def _body_level(x: np.ndarray, y: np.ndarray, half_w: float, ant: float, post: float, square: float) -> np.ndarray:
    """Squared, slightly boxy body-section level (< 1 inside) with different anterior/posterior semi-axes (mm)."""
    u = (x / half_w) ** 2
    v = np.where(y >= 0, y / ant, y / post) ** 2
    return u + v - square * u * v


def _body_template(body: dict) -> tuple[np.ndarray, float, float]:
    """Axial tissue map of the z-independent thorax ``(ny, nx)`` on a 0.5 mm grid, with its ``x0, y0`` (mm)."""
    step = _TEMPLATE_STEP_MM
    x0, y0 = -body["half_width"] - 4.0, -body["post"] - 4.0
    x = x0 + step * np.arange(int(np.ceil((2 * body["half_width"] + 8.0) / step)))
    y = y0 + step * np.arange(int(np.ceil((body["post"] + body["ant"] + 8.0) / step)))
    yy, xx = np.meshgrid(y, x, indexing="ij")
    fat, mus, sq = body["fat"], body["muscle"], body["square"]
    back = -body["flat"] * body["post"]
    out = np.full(xx.shape, _AIR, dtype=np.uint8)
    out[(_body_level(xx, yy, body["half_width"], body["ant"], body["post"], sq) < 1) & (yy > back)] = _FAT
    hw, an, po = body["half_width"] - fat["lat"], body["ant"] - fat["ant"], body["post"] - fat["post"]
    out[(_body_level(xx, yy, hw, an, po, sq) < 1) & (yy > back + fat["post"])] = _MUSCLE
    hw, an, po = hw - mus["lat"], an - mus["ant"], po - mus["post"]
    cavity = (_body_level(xx, yy, hw, an, po, sq) < 1) & (yy > back + fat["post"] + mus["post"])
    out[cavity] = _LUNG
    # mediastinal fat: behind the sternum and around the spine, the descending aorta and the oesophagus
    band = (np.abs(xx - body["x_mid"]) < body["med_width"]) & (yy > an - 25.0)
    for cx, cy, r in (body["vb"], body["aorta"], body["oesophagus"]):
        band |= (xx - cx) ** 2 + (yy - cy) ** 2 < (r + 6.0) ** 2
    out[band & cavity] = _MEDFAT
    sternum = ((xx - body["x_mid"]) / 13.0) ** 2 + ((yy - (an + 0.5 * mus["ant"])) / 5.0) ** 2 < 1
    out[sternum & (out == _MUSCLE)] = _BONE
    for (cx, cy, r), tissue in (
        (body["vb"], _BONE),
        (body["canal"], _BLOOD),  # CSF is bright in bSSFP
        (body["aorta"], _BLOOD),
        (body["oesophagus"], _MUSCLE),
    ):
        out[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = tissue
    return out, x0, y0


# ------------------------------------------------------------------------------------------------- the slice stack
def _normal(rng: np.random.Generator, axes: np.ndarray) -> tuple[np.ndarray, float]:
    """Slice normal tilted from the LV long axis (base -> apex sense kept) and the tilt (degrees)."""
    tilt = float(rng.uniform(*TILT_DEG))
    psi = rng.uniform(0.0, 2 * np.pi)
    side = np.cos(psi) * axes[0] + np.sin(psi) * axes[1]
    return _unit(np.cos(np.radians(tilt)) * axes[2] + np.sin(np.radians(tilt)) * side), tilt


def _in_plane_axes(rng: np.random.Generator, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions ``e_r, e_c`` of the image plane, randomly rotated, ``e_r x e_c = n``."""
    ref = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u0 = _unit(np.cross(n, ref))
    v0 = np.cross(n, u0)
    gamma = rng.uniform(0.0, 2 * np.pi)
    e_r = np.cos(gamma) * u0 + np.sin(gamma) * v0
    return e_r, np.cross(n, e_r)


def _draw_stack(rng: np.random.Generator, heart: dict, coverage: str) -> dict[str, Any]:
    """Slice normal, thickness and slice positions ``s`` (mm along the normal from the ED LV mid-point ``mid``)."""
    n, tilt = _normal(rng, heart["axes"])
    mid = heart["base"] + 0.5 * heart["lv"]["ED"]["len_epi"] * heart["axes"][2]
    s = (_lv_points(heart, "ED") - mid) @ n
    s_min, s_max = float(s.min()), float(s.max())
    span = s_max - s_min
    dz = float(rng.uniform(*THICKNESS_MM[int(rng.integers(2))]))
    missing = None if coverage == "full" else ("base", "apex")[int(rng.integers(2))]
    start = s_min + (rng.uniform(0.3, 0.45) * span if missing == "base" else rng.uniform(0.05, 0.5) * dz)
    if missing == "apex":
        count = int(np.floor((s_min + rng.uniform(0.5, 0.68) * span - start) / dz)) + 1
    else:
        count = int(round((s_max - rng.uniform(0.3, 0.9) * dz - start) / dz)) + 1
    positions = start + dz * np.arange(max(count, 3))
    return {"n": n, "tilt": tilt, "mid": mid, "dz": dz, "s": positions, "extent": (s_min, s_max), "missing": missing}


def _section_box(
    points: np.ndarray, stack: dict, e_r: np.ndarray, e_c: np.ndarray, lo: float, hi: float
) -> tuple[float, float, float, float] | None:
    """In-plane extents ``(r_lo, r_hi, c_lo, c_hi)`` (mm, relative to ``mid``) of points with ``lo <= s <= hi``."""
    rel = points - stack["mid"]
    s = rel @ stack["n"]
    keep = rel[(s >= lo) & (s <= hi)]
    if keep.size == 0:
        return None
    r, c = keep @ e_r, keep @ e_c
    return float(r.min()), float(r.max()), float(c.min()), float(c.max())


def _draw_offset(rng: np.random.Generator, box: tuple, half_r: float, half_c: float) -> np.ndarray | None:
    """An in-plane heart offset (mm, row/col) of norm in ``OFFSET_MM`` keeping ``box`` inside the half FOVs."""
    r_lo, r_hi, c_lo, c_hi = box
    for _ in range(64):
        norm, ang = rng.uniform(*OFFSET_MM), rng.uniform(0.0, 2 * np.pi)
        o = norm * np.array([np.cos(ang), np.sin(ang)])
        if -half_r <= o[0] + r_lo and o[0] + r_hi <= half_r and -half_c <= o[1] + c_lo and o[1] + c_hi <= half_c:
            return o
    return None


def _draw_grid(rng: np.random.Generator, heart: dict, stack: dict) -> dict[str, Any]:
    """Pixel spacing, FOV, image axes and heart offset; a small FOV falls back to a large one if the heart
    cannot sit ``OFFSET_MM`` off-centre inside it."""
    sp = float(rng.uniform(*SPACING_MM[int(rng.integers(2))]))
    e_r, e_c = _in_plane_axes(rng, stack["n"])
    slab = 0.5 * stack["dz"]
    box = _section_box(_labelled_points(heart), stack, e_r, e_c, stack["s"][0] - slab, stack["s"][-1] + slab)
    mode = int(rng.integers(2))
    for fov_mode in (mode, 1):
        lo, hi = FOV_MM[fov_mode]
        fov_r = rng.uniform(lo, hi)
        fov_c = float(np.clip(fov_r * rng.uniform(0.8, 1.0), lo, hi))
        h, w = round(fov_r / sp), round(fov_c / sp)
        half_r, half_c = 0.5 * (h - 1) * sp - _FIT_MARGIN_MM, 0.5 * (w - 1) * sp - _FIT_MARGIN_MM
        offset = _draw_offset(rng, box, half_r, half_c)
        if offset is not None:
            break
    else:
        raise RuntimeError("no heart offset fits the field of view")  # not reached with the ranges above
    origin = stack["mid"] + stack["s"][0] * stack["n"] - (offset[0] + 0.5 * (h - 1) * sp) * e_r
    origin = origin - (offset[1] + 0.5 * (w - 1) * sp) * e_c
    return {"spacing": sp, "shape": (h, w, len(stack["s"])), "e_r": e_r, "e_c": e_c, "offset": offset,
            "origin": origin, "dz": stack["dz"], "n": stack["n"]}


def _plane_field(grid: dict, k: int, rows: np.ndarray, cols: np.ndarray, ref: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(P - ref) . b`` (mm, float32 ``(len(rows), len(cols))``) over pixel indices ``rows x cols`` of slice ``k``."""
    base = float((grid["origin"] + k * grid["dz"] * grid["n"] - ref) @ b)
    rv = (rows * (grid["spacing"] * float(grid["e_r"] @ b)) + base).astype(np.float32)
    cv = (cols * (grid["spacing"] * float(grid["e_c"] @ b))).astype(np.float32)
    return rv[:, None] + cv[None, :]


def _sub_index(n: int, f: int) -> np.ndarray:
    """Sub-pixel centre positions (pixel index units) of ``n`` pixels each split ``f`` times."""
    return (np.arange(n * f) + 0.5) / f - 0.5


# ---------------------------------------------------------------------------------------------------------- painting
def _paint_body(grid: dict, body: dict, template: tuple, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Tissue codes ``(len(rows), len(cols))`` of the thorax (no heart) on slice ``k``."""
    tmpl, x0, y0 = template
    xyz = tuple(_plane_field(grid, k, rows, cols, np.zeros(3), b) for b in np.eye(3))
    scale = np.float32(1 / _TEMPLATE_STEP_MM)
    ix = np.clip((xyz[0] - np.float32(x0)) * scale + 0.5, 0, tmpl.shape[1] - 1).astype(np.intp)
    iy = np.clip((xyz[1] - np.float32(y0)) * scale + 0.5, 0, tmpl.shape[0] - 1).astype(np.intp)
    tissue = tmpl[iy, ix]
    if body["domes"] and xyz[2].min() < max(c[2] + r[2] for c, r, _ in body["domes"]) + 6.0:
        inside = (tissue == _LUNG) | (tissue == _MEDFAT)
        for centre, radii, kind in body["domes"]:
            level = _ellipsoid_level(xyz, centre, radii)
            tissue[inside & (level < (1.0 + 5.0 / radii.min()) ** 2)] = _MUSCLE  # diaphragm
            tissue[inside & (level < 1.0)] = kind
    for start, end, radius in body["vessels"]:
        _paint_capsule(tissue, grid, k, rows, cols, start, end, radius)
    return tissue


def _paint_capsule(tissue: np.ndarray, grid: dict, k: int, rows: np.ndarray, cols: np.ndarray,
                   start: np.ndarray, end: np.ndarray, radius: float) -> None:
    """Paint blood inside the capsule around segment ``start -> end`` (world mm) on slice ``k``, in place."""
    plane = grid["origin"] + k * grid["dz"] * grid["n"]
    ds, de = (start - plane) @ grid["n"], (end - plane) @ grid["n"]
    if ds * de > 0 and min(abs(ds), abs(de)) > radius:
        return
    length = float(np.linalg.norm(end - start))
    axis = (end - start) / length
    along = _plane_field(grid, k, rows, cols, start, axis)
    dist2 = np.zeros_like(along)
    for b in np.eye(3):
        dist2 += _plane_field(grid, k, rows, cols, start, b) ** 2
    t = np.clip(along, 0.0, length)
    tissue[dist2 - 2 * t * along + t * t < radius * radius] = _BLOOD


def _heart_masks(heart: dict, frame: str, a: np.ndarray, q: np.ndarray, c: np.ndarray, full: bool) -> dict:
    """Boolean masks of the heart parts at heart-frame coordinates ``a, q, c`` (mm, same-shape arrays).

    Always ``endo``, ``epi``, ``rv``; with ``full`` also ``rv_wall``, ``pap``, ``envelope``, ``atria_wall``,
    ``atria_blood`` (for the image).
    """
    lv, rv, p = heart["lv"][frame], heart["rv"], heart["lv"]["p"]
    t = c - np.float32(lv["c_base"])
    rho = np.sqrt(a * a + q * q)
    phi = np.arctan2(q, a)
    r_epi = np.float32(lv["r_epi"]) * _dome(t, lv["len_epi"], p)
    m = {"epi": rho < r_epi, "endo": rho < np.float32(lv["r_endo"]) * _dome(t, lv["len_endo"], p)}
    beyond = rho - r_epi
    dphi = _wrap(phi, rv["phi"])
    rv_len = rv["frac"] * lv["len_endo"]
    w = np.float32(rv["width"][frame]) * _dome(t, rv_len, rv["p"]) * _taper(dphi, rv["half_width"], rv["shape"])
    m["rv"] = (beyond > 0) & (beyond < w)
    if not full:
        return m
    wall = rv["wall"]
    hw_out = rv["half_width"] + wall / (lv["r_epi"] + 0.5 * rv["width"]["ED"])
    g_out = _dome(t, rv_len + wall, rv["p"]) * _taper(dphi, hw_out, rv["shape"])
    w_out = np.where(g_out > 0, np.float32(rv["width"][frame]) * g_out + np.float32(wall), np.float32(0.0))
    m["rv_wall"] = (beyond > 0) & (beyond < w_out)
    m["pap"] = _papillary(heart, frame, a, q, t) & m["endo"]
    fat = heart["fat"]
    thick = fat["thick"] * (0.4 + 0.3 * (1.0 + np.cos(phi - np.float32(fat["phi"]))))
    thick = thick + fat["groove"] * np.clip(1.0 - t / np.float32(10.0), 0.0, 1.0)
    env_lv = rho < (r_epi + thick) * (_dome(t, lv["len_epi"] + fat["apex"], p) > 0)
    env_rv = (beyond > 0) & (beyond < np.where(g_out > 0, w_out + np.float32(fat["rv"]), np.float32(0.0)))
    m["atria_blood"], m["atria_wall"], env_at = _atria_masks(heart, frame, a, q, c)
    m["envelope"] = env_lv | env_rv | env_at
    return m


def _papillary(heart: dict, frame: str, a: np.ndarray, q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Papillary muscles: ellipsoids along the long axis on the mid-cavity wall (heart-frame mm); thicker at ES."""
    lv, p = heart["lv"][frame], heart["lv"]["p"]
    t_c, half = 0.52 * lv["len_endo"], 0.23 * lv["len_endo"]
    r_wall = lv["r_endo"] * float(_dome(np.array([t_c]), lv["len_endo"], p)[0])
    out = np.zeros(a.shape, dtype=bool)
    for phi, r in zip(heart["paps"]["phi"], heart["paps"]["r"], strict=True):
        r = min(r * (1.35 if frame == "ES" else 1.0), 0.35 * r_wall)
        dist = r_wall - 0.6 * r
        du, dv = a - np.float32(dist * np.cos(phi)), q - np.float32(dist * np.sin(phi))
        out |= (du * du + dv * dv) * np.float32(1 / r**2) + ((t - np.float32(t_c)) * np.float32(1 / half)) ** 2 < 1
    return out


def _atria_masks(heart: dict, frame: str, a: np.ndarray, q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """Blood, wall (2.5 mm) and fat-envelope (5.5 mm) masks of both atria (heart-frame mm)."""
    blood, wall, env = (np.zeros(a.shape, dtype=bool) for _ in range(3))
    for name in ("la", "ra"):
        centre, radii = _atrium(heart, name, frame)
        level = _ellipsoid_level((a, q, c), centre, radii)
        blood |= level < 1.0
        wall |= level < (1.0 + 2.5 / radii.min()) ** 2
        env |= level < (1.0 + 5.5 / radii.min()) ** 2
    return blood, wall, env


def _paint_heart(tissue: np.ndarray | None, label: np.ndarray | None, m: dict) -> None:
    """Paint heart masks into tissue codes and/or label codes (same-shape arrays), in place."""
    if tissue is not None:
        tissue[m["envelope"] & (tissue != _BLOOD)] = _FAT  # vessels stay visible in the fat
        tissue[m["atria_wall"]] = _MYO
        tissue[m["atria_blood"]] = _BLOOD
        tissue[m["rv_wall"]] = _MYO
        tissue[m["rv"]] = _BLOOD
        tissue[m["epi"]] = _MYO
        tissue[m["endo"]] = _BLOOD
        tissue[m["pap"]] = _MYO  # labelled LV blood pool below
    if label is not None:
        label[m["rv"]] = LABEL_RV
        label[m["epi"]] = LABEL_MYO
        label[m["endo"]] = LABEL_LV


def _heart_boxes(heart: dict, grid: dict, stack: dict) -> list[tuple[int, int, int, int] | None]:
    """Per slice, the pixel box ``(r0, r1, c0, c1)`` (end exclusive) that holds the heart's section, or None."""
    pts = _envelope_points(heart)
    h, w, _ = grid["shape"]
    sp, boxes = grid["spacing"], []
    centre = np.array([0.5 * (h - 1), 0.5 * (w - 1)]) + grid["offset"] / sp  # mid's pixel position
    for s in stack["s"]:
        box = _section_box(pts, stack, grid["e_r"], grid["e_c"], s - _BOX_SLAB_MM, s + _BOX_SLAB_MM)
        if box is None:
            boxes.append(None)
            continue
        lo = np.floor(centre + (np.array(box[0::2]) - _BOX_MARGIN_MM) / sp).astype(int)
        hi = np.ceil(centre + (np.array(box[1::2]) + _BOX_MARGIN_MM) / sp).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, [h, w])
        boxes.append((int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])) if np.all(hi > lo) else None)
    return boxes


def _heart_coords(grid: dict, heart: dict, k: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Heart-frame coordinates ``a, q, c`` (mm) of pixel indices ``rows x cols`` on slice ``k``."""
    return tuple(_plane_field(grid, k, rows, cols, heart["base"], b) for b in heart["axes"])


def _render(heart: dict, body: dict, grid: dict, stack: dict) -> tuple[dict, dict]:
    """Relative-intensity tissue images (before blur/coil/noise, float32) and labels per frame, each ``(H, W, D)``."""
    h, w, d = grid["shape"]
    f = 2 if grid["spacing"] > 1.5 else 1
    template = _body_template(body)
    boxes = _heart_boxes(heart, grid, stack)
    tissues = {fr: np.zeros((h, w, d), dtype=np.uint8) for fr in ("ED", "ES")}
    tissues_sub = {fr: np.zeros((h * f, w * f, d), dtype=np.uint8) for fr in ("ED", "ES")} if f > 1 else tissues
    labels = {fr: np.zeros((h, w, d), dtype=np.uint8) for fr in ("ED", "ES")}
    rows, cols = _sub_index(h, f), _sub_index(w, f)
    for k in range(d):
        body_k = _paint_body(grid, body, template, k, rows, cols)
        box = boxes[k]
        for fr in ("ED", "ES"):
            tissue = body_k.copy()
            if box is not None:
                r0, r1, c0, c1 = box
                sub = tissue[r0 * f : r1 * f, c0 * f : c1 * f]
                coords = _heart_coords(grid, heart, k, rows[r0 * f : r1 * f], cols[c0 * f : c1 * f])
                masks = _heart_masks(heart, fr, *coords, full=True)
                _paint_heart(sub, labels[fr][r0:r1, c0:c1, k] if f == 1 else None, masks)
                if f > 1:
                    coords = _heart_coords(grid, heart, k, np.arange(r0, r1), np.arange(c0, c1))
                    _paint_heart(None, labels[fr][r0:r1, c0:c1, k], _heart_masks(heart, fr, *coords, full=False))
            tissues_sub[fr][:, :, k] = tissue
    return tissues_sub, labels


def _coil(rng: np.random.Generator, grid: dict, body: dict, heart: dict) -> np.ndarray:
    """Smooth multiplicative coil sensitivity ``(H, W, D)`` spanning ``1 +- 0.4`` over the volume.

    Two Gaussian receive elements, anterior and posterior of the chest (world mm); with orthogonal in-plane axes
    each element's sensitivity on a slice is an outer product of a row and a column profile.
    """
    h, w, d = grid["shape"]
    sp = grid["spacing"]
    centres = [
        np.array([heart["base"][0] + rng.uniform(-40, 40), body["ant"] + 40.0, rng.uniform(-40, 20)]),
        np.array([rng.uniform(-40, 40), -body["post"] - 40.0, rng.uniform(-40, 20)]),
    ]
    widths, weights = rng.uniform(110.0, 170.0, 2), (rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.9))
    field = np.zeros((h, w, d), dtype=np.float64)
    i, j = np.arange(h), np.arange(w)
    for centre, width, weight in zip(centres, widths, weights, strict=True):
        for k in range(d):
            rel = grid["origin"] + k * grid["dz"] * grid["n"] - centre
            gi = np.exp(-(((rel @ grid["e_r"]) + i * sp) ** 2) / (2 * width**2))
            gj = np.exp(-(((rel @ grid["e_c"]) + j * sp) ** 2) / (2 * width**2))
            along = np.exp(-((rel @ grid["n"]) ** 2) / (2 * width**2))
            field[:, :, k] += weight * along * gi[:, None] * gj[None, :]
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-12)
    return (1.0 + _COIL_STRENGTH * (2.0 * field - 1.0)).astype(np.float32)


def _finish(rng: np.random.Generator, tissue: np.ndarray, lut: np.ndarray, f: int, coil: np.ndarray,
            gain: float, sp: float) -> np.ndarray:
    """Tissue codes (``f``-times supersampled) -> blurred, coil-weighted, Rician-noisy magnitude ``(H, W, D)``."""
    h, w, d = coil.shape
    img = lut[tissue]
    if f > 1:
        img = img.reshape(h, f, w, f, d).mean(axis=(1, 3))
    img = ndimage.gaussian_filter(img, sigma=(_BLUR_MM / sp, _BLUR_MM / sp, 0.0), mode="nearest")
    img = np.clip(img, 0.0, None) * coil * np.float32(gain)
    sigma = np.float32(_NOISE * lut[_BLOOD] * gain)
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.sqrt((img + n1) ** 2 + n2 * n2).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- public API
def generate_thorax_subject(rng: np.random.Generator, coverage: str = "full") -> dict[str, Any]:
    """One test-domain subject at end-diastole and end-systole from the 3D thorax model.

    Args:
        rng: random generator; the output is a deterministic function of its state.
        coverage: ``"full"`` (about base to about apex) or ``"partial"`` (base or apex missing, drawn per subject).

    Returns:
        ``{"ED": (image, label, affine), "ES": (image, label, affine), "params": {...}}`` like
        :func:`scripts.data.phantom.generate_subject`: image ``(H, W, D)`` float32 non-negative, label ``(H, W, D)``
        uint8 in {0, 1, 2, 3}, affine ``(4, 4)`` float64 voxel -> world mm (zooms = spacing, spacing, slice
        thickness), slices base (0) to apex. ``params`` is JSON-friendly; ``ef_nominal`` refers to the continuous
        geometry (label-derived values differ by voxelisation and tilt).
    """
    if coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {list(COVERAGES)}, got {coverage!r}.")
    heart = _draw_heart(rng)
    body = _draw_body(rng, heart)
    stack = _draw_stack(rng, heart, coverage)
    grid = _draw_grid(rng, heart, stack)
    tissues, labels = _render(heart, body, grid, stack)
    lut = np.array([TISSUE_INTENSITY.get(name, TISSUE_INTENSITY["fat"]) for name in _TISSUES], dtype=np.float32)
    jitter = rng.uniform(0.9, 1.1, size=len(TISSUE_INTENSITY))
    lut[: len(jitter)] *= jitter.astype(np.float32)
    lut[_MEDFAT] = lut[_FAT]
    gain = float(rng.uniform(250.0, 600.0))
    coil = _coil(rng, grid, body, heart)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([grid["e_r"], grid["e_c"], grid["n"]], axis=1) @ np.diag(
        [grid["spacing"], grid["spacing"], grid["dz"]]
    )
    affine[:3, 3] = grid["origin"] + rng.uniform(-40.0, 40.0, size=3)  # table position
    f = tissues["ED"].shape[0] // grid["shape"][0]
    out: dict[str, Any] = {}
    for fr in ("ED", "ES"):
        image = _finish(rng, tissues[fr], lut, f, coil, gain, grid["spacing"])
        out[fr] = (image, labels[fr], affine.copy())
    out["params"] = _params(heart, stack, grid, coverage, float(lut[_BLOOD]) * gain, lut)
    return out


def _params(heart: dict, stack: dict, grid: dict, coverage: str, blood: float, lut: np.ndarray) -> dict[str, Any]:
    """JSON-friendly record of the drawn parameters (mm, degrees, fractions)."""
    lv, rv = heart["lv"], heart["rv"]
    h, w, d = grid["shape"]
    sp = grid["spacing"]
    s_min, s_max = stack["extent"]
    frames = ("ED", "ES")
    return {
        "model": "thorax-anatomy-v1",
        "phenotype": lv["phenotype"],
        "spacing_mm": sp,
        "slice_thickness_mm": stack["dz"],
        "shape": [h, w, d],
        "fov_mm": [h * sp, w * sp],
        "heart_offset_mm": [float(x) for x in grid["offset"]],
        "heart_offset_norm_mm": float(np.linalg.norm(grid["offset"])),
        "tilt_deg": stack["tilt"],
        "lv_radius_mm": {fr: float(lv[fr]["r_endo"]) for fr in frames},
        "wall_thickness_mm": {fr: float(lv[fr]["r_epi"] - lv[fr]["r_endo"]) for fr in frames},
        "lv_length_mm": {fr: float(lv[fr]["len_endo"]) for fr in frames},
        "base_descent_mm": float(lv["ES"]["c_base"]),
        "ef_nominal": lv["ef"],
        "rv_ef_nominal": rv["ef"],
        "rv_width_mm": {fr: float(rv["width"][fr]) for fr in frames},
        "rv_half_width_deg": float(np.degrees(rv["half_width"])),
        "rv_taper": rv["shape"],
        "coverage": coverage,
        "missing": stack["missing"],
        "lv_extent_mm": [s_min, s_max],
        "slice_position_mm": [float(s) for s in stack["s"]],
        "slice_position_frac": [float((s - s_min) / (s_max - s_min)) for s in stack["s"]],
        "blood_intensity": blood,
        "intensities": {name: float(lut[i]) for i, name in enumerate(TISSUE_INTENSITY)},
    }


def write_thorax_dataset(
    out_dir: str | os.PathLike, n_subjects: int, seed: int, prefix: str = "test", coverage: str = "full"
) -> list[dict]:
    """Write ``n_subjects`` thorax-model subjects as ACDC-style NIfTI files and return the datalist.

    Same layout and entries as :func:`scripts.data.phantom.write_phantom_dataset`:
    ``out_dir/<sid>/<sid>_{ED,ES}.nii.gz`` (float32) and ``<sid>_{ED,ES}_gt.nii.gz`` (uint8),
    ``sid = f"{prefix}{i:03d}"``, subject ``i`` drawn from ``numpy.random.default_rng([seed, i])``; entries
    ``{"image", "label", "subject", "frame"}`` with paths relative to ``out_dir``, ordered by subject then frame
    (ED, ES).
    """
    if coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {list(COVERAGES)}, got {coverage!r}.")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    datalist: list[dict] = []
    for i in range(n_subjects):
        sid = f"{prefix}{i:03d}"
        subject = generate_thorax_subject(np.random.default_rng([seed, i]), coverage=coverage)
        for fr in ("ED", "ES"):
            image, label, affine = subject[fr]
            img_rel, lab_rel = f"{sid}/{sid}_{fr}.nii.gz", f"{sid}/{sid}_{fr}_gt.nii.gz"
            write_nifti(image, affine, os.path.join(out_dir, img_rel), DESCRIPTION)
            write_nifti(label, affine, os.path.join(out_dir, lab_rel), DESCRIPTION)
            datalist.append({"image": img_rel, "label": lab_rel, "subject": sid, "frame": fr})
        logger.debug("wrote %s: %s, shape %s", sid, subject["params"]["phenotype"], subject["params"]["shape"])
    logger.info("wrote %d thorax-model subjects (%d volumes) to %s", n_subjects, len(datalist), out_dir)
    return datalist


# ------------------------------------------------------------------------------------ shifts of existing volumes
def _check_pair(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    """Raise ValueError unless image and label are equal-shape 3D arrays and ``affine`` is 4x4."""
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"image and label must be equal-shape (H, W, D) arrays, got {image.shape}, {label.shape}.")
    if np.shape(affine) != (4, 4):
        raise ValueError(f"affine must be 4x4, got {np.shape(affine)}.")


def _index_map(shape: tuple[int, int], op: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """4x4 matrix taking new voxel indices to old ones for an in-plane index permutation ``op`` of ``shape``."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    new_rows, new_cols = op(rows), op(cols)
    m = np.eye(4)
    m[0, 3], m[1, 3] = new_rows[0, 0], new_cols[0, 0]
    for axis in (0, 1):
        step = (1, 0) if axis == 0 else (0, 1)
        m[0, axis] = new_rows[step] - new_rows[0, 0]
        m[1, axis] = new_cols[step] - new_cols[0, 0]
    return m


def rotate_flip(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, k: int, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate both ``(H, W, D)`` arrays in-plane by ``k * 90`` degrees (``np.rot90`` sense), then optionally flip
    the columns; the returned affine keeps every voxel's content at its world position (same anatomy, new index
    order). Both in-plane sizes must be at least 2."""
    _check_pair(image, label, affine)
    if min(image.shape[:2]) < 2:
        raise ValueError(f"in-plane size must be at least 2x2, got {image.shape[:2]}.")

    def op(a: np.ndarray) -> np.ndarray:
        out = np.rot90(a, int(k), axes=(0, 1))
        return out[:, ::-1] if flip else out

    new_affine = np.asarray(affine, dtype=np.float64) @ _index_map(image.shape[:2], op)
    return np.ascontiguousarray(op(image)), np.ascontiguousarray(op(label)), new_affine


def crop_fov(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, fov_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop both ``(H, W, D)`` arrays in-plane to about ``fov_mm x fov_mm`` (pixel spacings from ``affine``).

    The crop holds every labelled voxel and sits at a random offset around them; the affine origin moves so kept
    voxels keep their world coordinates. Raises ValueError when there is no labelled voxel, when the labelled
    region is wider than the crop, or when the crop is larger than the image.
    """
    _check_pair(image, label, affine)
    affine = np.asarray(affine, dtype=np.float64)
    h, w = image.shape[:2]
    spacing = np.linalg.norm(affine[:3, :2], axis=0)
    n_r, n_c = (max(1, round(fov_mm / s)) for s in spacing)
    if n_r > h or n_c > w:
        raise ValueError(f"a {fov_mm} mm crop ({n_r}x{n_c} px) is larger than the image ({h}x{w} px).")
    rows, cols = np.flatnonzero(label.any(axis=(1, 2))), np.flatnonzero(label.any(axis=(0, 2)))
    if rows.size == 0:
        raise ValueError("the label has no labelled voxel, so there is no heart to keep in the crop.")
    starts = []
    for idx, n, size in ((rows, n_r, h), (cols, n_c, w)):
        lo, hi = int(idx[0]), int(idx[-1])
        if hi - lo + 1 > n:
            raise ValueError(f"the heart spans {hi - lo + 1} px, more than the {fov_mm} mm crop ({n} px).")
        starts.append(int(rng.integers(max(0, hi - n + 1), min(lo, size - n) + 1)))
    r0, c0 = starts
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.array([r0, c0, 0.0])
    crop = (slice(r0, r0 + n_r), slice(c0, c0 + n_c))
    return np.ascontiguousarray(image[crop]), np.ascontiguousarray(label[crop]), new_affine
