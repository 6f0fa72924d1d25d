# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""Synthetic short-axis cine MR phantoms (bSSFP-like) with ACDC-style labels.

Arrays are ``(H, W, D)`` = (rows, cols, slices): short-axis slices lie on the last axis, ordered
base (index 0) to apex. Labels: 0 background, 1 LV blood pool (papillary muscles included),
2 LV myocardium, 3 RV blood pool. Images are float32, non-negative (Rician magnitude), in arbitrary
scanner units (blood roughly 250-600).

Geometry is built in millimetres in an "anatomy frame" ``(u, v)`` centred on the mid-ventricular
LV centre: ``+u`` points to the lateral LV wall (patient left), ``+v`` points posterior, and the RV
lies towards ``-u``. The anatomy frame is rotated by a random in-plane angle and shifted to a random
heart position to obtain the image frame ``(x = column, y = row)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
from scipy import ndimage

from ..labels import by_name
from .nifti import write_nifti

__all__ = ["TISSUE_INTENSITY", "PhantomAppearance", "generate_subject", "write_phantom_dataset"]

logger = logging.getLogger(__name__)

# default relative bSSFP intensities (blood = 1): blood and fat bright, muscles intermediate-dark
TISSUE_INTENSITY: dict[str, float] = {
    "air": 0.0,
    "lung": 0.05,
    "fat": 0.92,
    "blood": 1.0,
    "myocardium": 0.3,
    "muscle": 0.28,
    "liver": 0.36,
    "bone": 0.45,
}

_TISSUES = tuple(TISSUE_INTENSITY)
_T = {name: idx for idx, name in enumerate(_TISSUES)}
_AIR, _LUNG, _FAT, _BLOOD = _T["air"], _T["lung"], _T["fat"], _T["blood"]
_MYO, _MUSCLE, _LIVER, _BONE = _T["myocardium"], _T["muscle"], _T["liver"], _T["bone"]

LABEL_LV, LABEL_MYO, LABEL_RV = (by_name(n).code for n in ("lv", "myocardium", "rv"))
_SUPERSAMPLE = 2  # in-plane render factor for partial-volume effects
_ATRIUM_EXTENT_MM = 35.0  # atria are drawn up to this distance above the mitral plane


@dataclasses.dataclass
class PhantomAppearance:
    """Scanner/vendor appearance knobs (so a later domain-shift suite can vary them).

    ``intensities`` are relative to blood (missing tissues fall back to ``TISSUE_INTENSITY``),
    ``coil_strength`` is the amplitude of the smooth multiplicative coil field (field spans about
    ``1 +- coil_strength``), ``noise_sigma`` is the Rician sigma relative to the blood intensity,
    ``blur_sigma_mm`` the in-plane Gaussian partial-volume blur, ``gamma`` an intensity gamma applied
    before noise and ``fat_suppression`` (0..1) scales the fat intensity by ``1 - fat_suppression``.
    """

    intensities: dict[str, float] = dataclasses.field(default_factory=lambda: dict(TISSUE_INTENSITY))
    coil_strength: float = 0.4
    noise_sigma: float = 0.04
    blur_sigma_mm: float = 1.0
    gamma: float = 1.0
    fat_suppression: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.intensities) - set(TISSUE_INTENSITY)
        if unknown:
            raise ValueError(f"unknown tissues {sorted(unknown)}, expected a subset of {list(TISSUE_INTENSITY)}.")
        self.intensities = {**TISSUE_INTENSITY, **{k: float(v) for k, v in self.intensities.items()}}
        if any(v < 0 for v in self.intensities.values()):
            raise ValueError("tissue intensities must be non-negative.")
        if not 0.0 <= self.coil_strength < 1.0:
            raise ValueError(f"coil_strength must be in [0, 1), got {self.coil_strength}.")
        if self.noise_sigma < 0 or self.blur_sigma_mm < 0:
            raise ValueError("noise_sigma and blur_sigma_mm must be non-negative.")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}.")
        if not 0.0 <= self.fat_suppression <= 1.0:
            raise ValueError(f"fat_suppression must be in [0, 1], got {self.fat_suppression}.")


def _harmonic(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray, first_order: int = 2) -> np.ndarray:
    """Sum of ``amps[k] * cos((k + first_order) * theta + phases[k])``, clipped to +-0.25."""
    out = np.zeros_like(theta)
    for k, (amp, phase) in enumerate(zip(amps, phases, strict=True)):
        out += np.float32(amp) * np.cos(np.float32(k + first_order) * theta + np.float32(phase))
    return np.clip(out, -0.25, 0.25)


def _profile(z: float, length: float, cap: float = 0.25) -> float:
    """Truncated half-ellipsoid radius profile: ~1 at the base (``z=0``), 0 at ``z >= length`` (mm)."""
    if z < 0 or length <= 0:
        return 0.0
    e = cap * length
    return float(np.sqrt(max(0.0, 1.0 - ((z + e) / (length + e)) ** 2)))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper 3x3 rotation that is clearly oblique (no axis-aligned column)."""
    for _ in range(100):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        if np.abs(rot).max() < 0.95:
            return rot
    return rot


def _sample_anatomy(
    rng: np.random.Generator, spacing_range: tuple[float, float], n_slices_range: tuple[int, int]
) -> dict[str, Any]:
    """Draw all subject-level geometry parameters (lengths in mm, angles in radians)."""
    a: dict[str, Any] = {}
    sp = float(rng.uniform(*spacing_range))
    fov_r = float(rng.uniform(200.0, 280.0))
    fov_c = float(np.clip(fov_r * rng.uniform(0.85, 1.15), 200.0, 280.0))
    a["spacing"] = sp
    a["shape"] = (round(fov_r / sp), round(fov_c / sp), int(rng.integers(n_slices_range[0], n_slices_range[1] + 1)))
    a["dz"] = float(rng.uniform(8.0, 10.0))
    a["heart_xy"] = rng.uniform(-20.0, 20.0, size=2)  # heart centre offset from the image centre (x, y)
    a["angle"] = float(rng.uniform(0.0, 2.0 * np.pi))

    # slice depths (mm below the ED mitral plane): the stack starts near the base (possibly in the
    # atria); the LV length is limited so that the stack reaches about the apex
    a["z"] = (rng.uniform(-0.6, 0.3) + np.arange(a["shape"][2])) * a["dz"]
    r_endo, thick = rng.uniform(18.0, 30.0), rng.uniform(6.0, 11.0)
    length = float(max(45.0, min(rng.uniform(72.0, 95.0), a["z"][-1] + rng.uniform(-8.0, 6.0))))
    a["z_mid"] = 0.5 * length

    # LV at ED and ES: mass-conserving wall, the base descends towards the fixed apex at ES
    ef, shortening = rng.uniform(0.45, 0.70), rng.uniform(0.85, 0.95)
    r_endo_es = r_endo * np.sqrt((1.0 - ef) / shortening)
    r_epi_es = np.sqrt(r_endo_es**2 + ((r_endo + thick) ** 2 - r_endo**2) / shortening)
    a["lv"] = {
        "ED": {"r_endo": r_endo, "thick": thick, "length": length},
        "ES": {"r_endo": r_endo_es, "thick": r_epi_es - r_endo_es, "length": length * shortening},
    }
    a["ef"], a["shortening"] = float(ef), float(shortening)
    decay = np.array([1.0, 0.6, 0.35])  # smoother shapes: weaker higher orders (2, 3, 4)
    a["endo_harm"] = (rng.normal(0.0, 0.04, 3) * decay, rng.normal(0.0, 0.015, 3) * decay, rng.uniform(0, 2 * np.pi, 3))
    a["epi_harm"] = (rng.normal(0.0, 0.025, 3) * decay, rng.normal(0.0, 0.01, 3) * decay, rng.uniform(0, 2 * np.pi, 3))
    a["drift"] = rng.normal(0.0, 3.0, size=2)  # LV centre drift (mm) from base to apex

    # papillary muscles: anterolateral (anterior = -v) and posteromedial
    a["pap_angles"] = np.array([-rng.uniform(0.6, 1.1), rng.uniform(1.1, 1.9)])
    a["pap_radius"] = rng.uniform(2.5, 4.0, size=2)
    a["pap_range"] = (rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85))

    # RV: ellipse centred on the septal side, minus the LV epicardium -> crescent
    rvef = rng.uniform(0.40, 0.60)
    a["rv"] = {
        "psi": np.pi + rng.uniform(0.0, 0.35),
        "k": rng.uniform(0.5, 0.7),
        "a": rng.uniform(0.95, 1.15),
        "b": rng.uniform(1.3, 1.6),
        "len_frac": rng.uniform(0.65, 0.85),
        "es_scale": ((1.0 - rvef) / shortening) ** 0.42,  # empirical: crescent area shrinks faster than the ellipse
        "wall": rng.uniform(2.5, 4.0),
        "harm": (rng.normal(0.0, 0.03, 2), rng.uniform(0, 2 * np.pi, 2)),
    }
    a["rvef"] = float(rvef)
    a["epi_fat"] = (rng.uniform(2.0, 7.0), rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 5.0))
    a["atria"] = (rng.uniform(0.75, 1.0), rng.uniform(0.7, 0.95))

    # body: heart sits left-anterior in the thorax
    a["body"] = {
        "centre": np.array([-rng.uniform(25.0, 45.0), rng.uniform(20.0, 35.0)]),
        "ab": np.array([rng.uniform(115.0, 140.0), rng.uniform(88.0, 110.0)]),
        "fat": rng.uniform(6.0, 18.0),
        "muscle": rng.uniform(8.0, 14.0),
        "harm": (rng.normal(0.0, 0.02, 3), rng.uniform(0, 2 * np.pi, 3)),
        "flat": rng.uniform(0.8, 0.92),
    }
    a["spine"] = {"offset": np.array([rng.uniform(-6.0, 6.0), rng.uniform(0.55, 0.65)]), "r": rng.uniform(14.0, 19.0)}
    a["aorta"] = {"offset": np.array([rng.uniform(18.0, 28.0), -rng.uniform(12.0, 24.0)]), "r": rng.uniform(9.0, 13.0)}
    a["mediastinum_width"] = rng.uniform(10.0, 16.0)
    a["liver"] = {
        "z0": rng.uniform(0.35, 1.1) * length,  # appears below this depth (mm from the ED base)
        "r": rng.uniform(55.0, 85.0),
        "offset": np.array([-rng.uniform(0.3, 0.5), rng.uniform(0.15, 0.35)]),
    }

    a["jitter"] = rng.uniform(0.9, 1.1, size=len(_TISSUES))
    a["gain"] = float(rng.uniform(250.0, 600.0))
    a["coil"] = {
        "angle": rng.uniform(0, 2 * np.pi),
        "dist": rng.uniform(80.0, 150.0),
        "width": rng.uniform(90.0, 170.0),
        "ramp": rng.normal(0.0, 1.0, size=2),
        "slice_slope": rng.uniform(-0.1, 0.1),
    }
    a["rotation"] = _random_rotation(rng)
    a["world_centre"] = rng.uniform(-40.0, 40.0, size=3)
    return a


def _slice_geometry(anat: dict[str, Any], frame: str, z_space: float) -> dict[str, Any]:
    """Per-slice heart geometry for one frame at depth ``z_space`` (mm below the ED base)."""
    lv = anat["lv"][frame]
    base_shift = anat["lv"]["ED"]["length"] - lv["length"]
    z = z_space - base_shift  # depth below this frame's mitral plane
    zn = (z_space - anat["z_mid"]) / anat["lv"]["ED"]["length"]
    g: dict[str, Any] = {"centre": anat["drift"] * zn}
    len_epi = lv["length"] + 0.8 * lv["thick"]
    g["r_endo"] = lv["r_endo"] * _profile(z, lv["length"])
    g["r_epi"] = (lv["r_endo"] + lv["thick"]) * _profile(z, len_epi)
    g["t_min"] = 0.6 * lv["thick"]
    amp, slope, phase = anat["endo_harm"]
    g["endo_harm"] = (amp + slope * zn, phase)
    amp, slope, phase = anat["epi_harm"]
    g["epi_harm"] = (amp + slope * zn, phase)

    # papillary muscles live in the mid-ventricle, thicker at ES
    s = z / lv["length"]
    lo, hi = anat["pap_range"]
    pap_scale = np.sin(np.pi * (s - lo) / (hi - lo)) if lo < s < hi else 0.0
    g["pap_r"] = anat["pap_radius"] * pap_scale * (1.3 if frame == "ES" else 1.0)

    rv = anat["rv"]
    rv_scale = rv["es_scale"] if frame == "ES" else 1.0
    r_epi_ed_max = anat["lv"]["ED"]["r_endo"] + anat["lv"]["ED"]["thick"]
    rv_prof = _profile(z, rv["len_frac"] * lv["length"], cap=0.15)
    g["rv_centre"] = g["centre"] + rv["k"] * g["r_epi"] * np.array([np.cos(rv["psi"]), np.sin(rv["psi"])])
    g["rv_ab"] = np.array([rv["a"], rv["b"]]) * r_epi_ed_max * rv_prof * rv_scale
    g["rv_wall"] = rv["wall"] * (1.15 if frame == "ES" else 1.0)

    # atria above the mitral plane (bright blood, unlabelled)
    g["atria_r"] = 0.0
    if -_ATRIUM_EXTENT_MM < z < 0:
        g["atria_r"] = float(np.sqrt(1.0 - (z / _ATRIUM_EXTENT_MM) ** 2)) * (1.1 if frame == "ES" else 1.0)
    return g


def _paint_heart(
    tissue: np.ndarray | None,
    label: np.ndarray | None,
    u: np.ndarray,
    v: np.ndarray,
    anat: dict[str, Any],
    g: dict[str, Any],
) -> None:
    """Paint the heart of one slice in place; ``u, v`` are anatomy-frame grids (mm)."""
    du, dv = u - np.float32(g["centre"][0]), v - np.float32(g["centre"][1])
    r = np.sqrt(du * du + dv * dv)
    theta = np.arctan2(dv, du)
    has_lv = g["r_epi"] > 0
    has_rv = bool(np.all(g["rv_ab"] > 0))
    rv = anat["rv"]

    if has_lv:
        r_endo = np.float32(g["r_endo"]) * (1 + _harmonic(theta, *g["endo_harm"]))
        r_epi = np.maximum(
            np.float32(g["r_epi"]) * (1 + _harmonic(theta, *g["epi_harm"])), r_endo + np.float32(g["t_min"])
        )
        if g["r_endo"] <= 0:
            r_endo = np.zeros_like(r)
        epi, endo = r < r_epi, r < r_endo
    else:
        r_epi = np.zeros_like(r)
        epi = endo = np.zeros(r.shape, dtype=bool)

    if has_rv:
        cos_p, sin_p = np.cos(rv["psi"]), np.sin(rv["psi"])
        pu, pv = u - np.float32(g["rv_centre"][0]), v - np.float32(g["rv_centre"][1])
        p, q = pu * np.float32(cos_p) + pv * np.float32(sin_p), -pu * np.float32(sin_p) + pv * np.float32(cos_p)
        a, b = g["rv_ab"]
        rho = np.sqrt((p / np.float32(a)) ** 2 + (q / np.float32(b)) ** 2)
        rho_lim = 1 + _harmonic(np.arctan2(q / np.float32(b), p / np.float32(a)), *rv["harm"])
        rv_blood = (rho < rho_lim) & ~epi
        wall = np.float32(g["rv_wall"])
        rv_outer = (np.sqrt((p / (a + wall)) ** 2 + (q / (b + wall)) ** 2) < rho_lim) & ~epi
    else:
        rv_blood = rv_outer = np.zeros(r.shape, dtype=bool)

    if tissue is not None:
        fat_thick, fat_phase, rv_fat = anat["epi_fat"]
        if has_lv or has_rv:
            f = fat_thick * np.clip(0.1 + np.cos(theta - np.float32(fat_phase)), 0, None)
            env = (r < r_epi + f) if has_lv else np.zeros(r.shape, dtype=bool)
            if has_rv:
                a_f, b_f = a + wall + rv_fat, b + wall + rv_fat
                env |= np.sqrt((p / a_f) ** 2 + (q / b_f) ** 2) < rho_lim
            tissue[env] = _FAT
        if g["atria_r"] > 0:
            lv_ed = anat["lv"]["ED"]
            r_la = g["atria_r"] * anat["atria"][0] * lv_ed["r_endo"]
            r_ra = g["atria_r"] * anat["atria"][1] * lv_ed["r_endo"]
            off = (r_la + r_ra + 4.0) * np.array([np.cos(rv["psi"]), np.sin(rv["psi"])]) * 0.9
            for c, rad in ((g["centre"], r_la), (g["centre"] + off, r_ra)):
                rr = np.sqrt((u - np.float32(c[0])) ** 2 + (v - np.float32(c[1])) ** 2)
                tissue[rr < rad + 5.0] = _FAT
            for c, rad in ((g["centre"], r_la), (g["centre"] + off, r_ra)):
                rr = np.sqrt((u - np.float32(c[0])) ** 2 + (v - np.float32(c[1])) ** 2)
                tissue[(rr < rad + 2.0) & (tissue != _BLOOD)] = _MYO
                tissue[rr < rad] = _BLOOD
        tissue[rv_outer] = _MYO
        tissue[rv_blood] = _BLOOD
        tissue[epi] = _MYO
        tissue[endo] = _BLOOD
    if label is not None:
        label[rv_blood] = LABEL_RV
        label[epi] = LABEL_MYO
        label[endo] = LABEL_LV

    # papillary muscles: myocardial signal, labelled as LV pool (ACDC convention)
    if has_lv and g["r_endo"] > 0 and tissue is not None:
        for ang, pr in zip(anat["pap_angles"], g["pap_r"], strict=True):
            if pr <= 0:
                continue
            h_endo = float(_harmonic(np.array([ang], dtype=np.float32), *g["endo_harm"])[0])
            dist = g["r_endo"] * (1 + h_endo) - 0.6 * pr
            cu, cv = dist * np.cos(ang), dist * np.sin(ang)
            pap = ((du - np.float32(cu)) ** 2 + (dv - np.float32(cv)) ** 2 < np.float32(pr * pr)) & endo
            tissue[pap] = _MYO


def _paint_body(tissue: np.ndarray, u: np.ndarray, v: np.ndarray, anat: dict[str, Any], z_space: float) -> None:
    """Paint body, lungs, mediastinum, spine, aorta and liver of one slice in place (mm grids)."""
    body = anat["body"]
    cu, cv = body["centre"]
    bu, bv = u - np.float32(cu), v - np.float32(cv)
    a, b = body["ab"]
    phi = np.arctan2(bv, bu)
    r = np.sqrt(bu * bu + bv * bv)
    cos_p, sin_p = np.cos(phi), np.sin(phi)
    r_body = np.float32(a * b) / np.sqrt((np.float32(b) * cos_p) ** 2 + (np.float32(a) * sin_p) ** 2)
    r_body *= 1 + _harmonic(phi, *body["harm"])
    back = bv < np.float32(body["flat"] * b)  # flattened posterior surface (patient on the table)
    muscle = np.float32(body["muscle"]) * (1 + 1.2 * np.clip(sin_p, 0, None))  # thicker paraspinal muscles
    tissue[(r < r_body) & back] = _FAT
    tissue[(r < r_body - np.float32(body["fat"])) & back] = _MUSCLE
    cavity = (r < r_body - np.float32(body["fat"]) - muscle) & (
        bv < np.float32(body["flat"] * b - body["fat"] - 2 * body["muscle"])
    )
    tissue[cavity] = _LUNG

    # liver (patient right, posterior) in inferior slices
    liver = anat["liver"]
    depth = z_space - liver["z0"]
    if depth > 0:
        rad = liver["r"] * min(1.0, depth / 30.0) ** 0.5
        lc = body["centre"] + liver["offset"] * body["ab"]
        tissue[cavity & ((u - np.float32(lc[0])) ** 2 + (v - np.float32(lc[1])) ** 2 < np.float32(rad * rad))] = _LIVER

    # posterior mediastinum: a small fatty region around the descending aorta and the oesophagus
    spine = body["centre"] + anat["spine"]["offset"] * np.array([1.0, b])
    med = spine + np.array([0.5 * anat["aorta"]["offset"][0], -anat["spine"]["r"] - 4.0])
    med_ab = np.array([anat["mediastinum_width"] + 0.5 * anat["aorta"]["offset"][0], anat["mediastinum_width"]])
    band = ((u - np.float32(med[0])) / np.float32(med_ab[0])) ** 2 + (
        (v - np.float32(med[1])) / np.float32(med_ab[1])
    ) ** 2 < 1
    tissue[band & cavity] = _FAT
    for centre, rad, kind in (
        (spine, anat["spine"]["r"], _BONE),
        (spine + anat["aorta"]["offset"], anat["aorta"]["r"], _BLOOD),
        (spine + np.array([-6.0, -anat["spine"]["r"] - 7.0]), 6.0, _MUSCLE),
    ):
        tissue[(u - np.float32(centre[0])) ** 2 + (v - np.float32(centre[1])) ** 2 < np.float32(rad * rad)] = kind


def _anatomy_grid(anat: dict[str, Any], factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy-frame ``(u, v)`` grids (mm, float32) of shape ``(H * factor, W * factor)``."""
    h, w, _ = anat["shape"]
    sp = anat["spacing"]
    rows = ((np.arange(h * factor) + 0.5) / factor - 0.5 - 0.5 * (h - 1)) * sp - anat["heart_xy"][1]
    cols = ((np.arange(w * factor) + 0.5) / factor - 0.5 - 0.5 * (w - 1)) * sp - anat["heart_xy"][0]
    y, x = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    c, s = np.float32(np.cos(anat["angle"])), np.float32(np.sin(anat["angle"]))
    return c * x + s * y, -s * x + c * y


def _coil_field(anat: dict[str, Any], strength: float) -> np.ndarray:
    """Smooth multiplicative coil sensitivity ``(H, W, D)``, roughly within ``1 +- strength``."""
    h, w, d = anat["shape"]
    sp, coil = anat["spacing"], anat["coil"]
    y = ((np.arange(h) - 0.5 * (h - 1)) * sp)[:, None]
    x = ((np.arange(w) - 0.5 * (w - 1)) * sp)[None, :]
    cx, cy = coil["dist"] * np.cos(coil["angle"]), coil["dist"] * np.sin(coil["angle"])
    bump = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * coil["width"] ** 2))
    ramp = (coil["ramp"][0] * x + coil["ramp"][1] * y) / (150.0 * max(float(np.linalg.norm(coil["ramp"])), 1e-3))
    shape = 0.75 * bump + 0.25 * (0.5 + 0.5 * np.clip(ramp, -1, 1))  # in [0, 1]
    field = 1.0 + strength * (2.0 * shape - 1.0)
    zs = 1.0 + coil["slice_slope"] * np.linspace(-1.0, 1.0, d)
    return (field[:, :, None] * zs[None, None, :]).astype(np.float32)


def generate_subject(
    rng: np.random.Generator,
    appearance: PhantomAppearance | None = None,
    spacing_range: tuple[float, float] = (1.2, 1.9),
    n_slices_range: tuple[int, int] = (7, 10),
) -> dict[str, Any]:
    """Generate one synthetic subject at end-diastole and end-systole.

    Args:
        rng: random generator; the output is a deterministic function of its state.
        appearance: scanner appearance knobs, defaults to ``PhantomAppearance()``.
        spacing_range: isotropic in-plane pixel spacing range (mm).
        n_slices_range: inclusive range of the number of short-axis slices.

    Returns:
        ``{"ED": (image, label, affine), "ES": (image, label, affine), "params": {...}}`` with image
        ``(H, W, D)`` float32, label ``(H, W, D)`` uint8 in {0, 1, 2, 3}, affine ``(4, 4)`` float64
        (voxel index -> world mm, oblique, zooms = (spacing, spacing, slice thickness)). ``params``
        holds JSON-friendly ground-truth parameters (``ef_nominal`` / ``rv_ef_nominal`` refer to the
        continuous geometry; label-derived values differ by voxelisation and slice coverage).
    """
    appearance = PhantomAppearance() if appearance is None else appearance
    anat = _sample_anatomy(rng, spacing_range, n_slices_range)
    h, w, d = anat["shape"]
    f = _SUPERSAMPLE

    lut = np.array([appearance.intensities[name] for name in _TISSUES], dtype=np.float32)
    lut *= anat["jitter"].astype(np.float32)  # per-subject +-10 % tissue jitter
    lut[_FAT] *= 1.0 - appearance.fat_suppression
    u2, v2 = _anatomy_grid(anat, f)
    u1, v1 = _anatomy_grid(anat, 1)

    images = {fr: np.zeros((h, w, d), dtype=np.float32) for fr in ("ED", "ES")}
    labels = {fr: np.zeros((h, w, d), dtype=np.uint8) for fr in ("ED", "ES")}
    for k, z_space in enumerate(anat["z"]):
        body = np.full(u2.shape, _AIR, dtype=np.uint8)
        _paint_body(body, u2, v2, anat, float(z_space))
        for fr in ("ED", "ES"):
            g = _slice_geometry(anat, fr, float(z_space))
            tissue = body.copy()
            _paint_heart(tissue, None, u2, v2, anat, g)
            images[fr][:, :, k] = lut[tissue].reshape(h, f, w, f).mean(axis=(1, 3))
            _paint_heart(None, labels[fr][:, :, k], u1, v1, anat, g)

    coil = _coil_field(anat, appearance.coil_strength)
    blood = float(lut[_BLOOD]) * anat["gain"]
    sigma_px = appearance.blur_sigma_mm / anat["spacing"]
    affine = np.eye(4)
    affine[:3, :3] = anat["rotation"] @ np.diag([anat["spacing"], anat["spacing"], anat["dz"]])
    affine[:3, 3] = anat["world_centre"] - affine[:3, :3] @ (0.5 * (np.array([h, w, d]) - 1))

    out: dict[str, Any] = {}
    for fr in ("ED", "ES"):
        img = images[fr]
        if sigma_px > 0:
            img = ndimage.gaussian_filter(img, sigma=(sigma_px, sigma_px, 0.0), mode="nearest")
        img = np.clip(img, 0.0, None)
        if appearance.gamma != 1.0:
            img = img**appearance.gamma
        img = img * coil * np.float32(anat["gain"])
        sigma = appearance.noise_sigma * blood
        if sigma > 0:
            n1 = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
            n2 = rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
            img = np.sqrt((img + n1) ** 2 + n2**2)
        out[fr] = (img.astype(np.float32), labels[fr], affine.copy())

    lv = anat["lv"]
    out["params"] = {
        "spacing_mm": anat["spacing"],
        "slice_thickness_mm": anat["dz"],
        "shape": [h, w, d],
        "fov_mm": [h * anat["spacing"], w * anat["spacing"]],
        "heart_centre_mm": [float(x) for x in anat["heart_xy"]],
        "rotation_deg": float(np.degrees(anat["angle"])),
        "lv_radius_mm": {fr: float(lv[fr]["r_endo"]) for fr in ("ED", "ES")},
        "myo_thickness_mm": {fr: float(lv[fr]["thick"]) for fr in ("ED", "ES")},
        "lv_length_mm": {fr: float(lv[fr]["length"]) for fr in ("ED", "ES")},
        "ef_nominal": anat["ef"],
        "rv_ef_nominal": anat["rvef"],
        "slice_depth_mm": [float(z) for z in anat["z"]],
        "blood_intensity": blood,
        "intensities": {name: float(lut[i]) for i, name in enumerate(_TISSUES)},
        "appearance": dataclasses.asdict(appearance),
    }
    return out


def _save_nifti_atomic(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    write_nifti(array, affine, path, "CoopSeg synthetic cine phantom")


def write_phantom_dataset(
    out_dir: str,
    n_subjects: int,
    seed: int,
    prefix: str = "phantom",
    appearance: PhantomAppearance | None = None,
    **subject_kwargs: Any,
) -> list[dict]:
    """Write ``n_subjects`` phantoms as ACDC-style NIfTI files and return the datalist.

    Files: ``out_dir/<sid>/<sid>_{ED,ES}.nii.gz`` (float32) and ``<sid>_{ED,ES}_gt.nii.gz`` (uint8),
    ``sid = f"{prefix}{i:03d}"``. Subject ``i`` uses ``numpy.random.default_rng([seed, i])`` so the
    output is deterministic. Returns entries ``{"image", "label", "subject", "frame"}`` with paths
    relative to ``out_dir``, ordered by subject then frame (ED, ES).
    """
    os.makedirs(out_dir, exist_ok=True)
    datalist: list[dict] = []
    for i in range(n_subjects):
        sid = f"{prefix}{i:03d}"
        subject = generate_subject(np.random.default_rng([seed, i]), appearance=appearance, **subject_kwargs)
        os.makedirs(os.path.join(out_dir, sid), exist_ok=True)
        for fr in ("ED", "ES"):
            image, label, affine = subject[fr]
            img_rel, lab_rel = f"{sid}/{sid}_{fr}.nii.gz", f"{sid}/{sid}_{fr}_gt.nii.gz"
            _save_nifti_atomic(image, affine, os.path.join(out_dir, img_rel))
            _save_nifti_atomic(label, affine, os.path.join(out_dir, lab_rel))
            datalist.append({"image": img_rel, "label": lab_rel, "subject": sid, "frame": fr})
        logger.debug(
            "wrote %s: shape %s, spacing %.2f mm", sid, subject["params"]["shape"], subject["params"]["spacing_mm"]
        )
    logger.info("wrote %d phantom subjects (%d volumes) to %s", n_subjects, len(datalist), out_dir)
    return datalist
