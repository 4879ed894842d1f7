"""Simulate a miniature DENETHOR-layout scene pair: Sentinel-2 at 10 m and PlanetScope at 3 m.

Both sensors observe ONE simulated 3 m surface. Each 3 m cell is a linear mixture of endmember spectra
(soil, crop-specific green canopy, senescent canopy, rapeseed flowers, background cover) whose abundances
follow per-field phenology curves with per-field timing jitter and per-cell texture. Sentinel-2's 12 bands are
the area-weighted 10 m aggregate of that surface integrated over the S2 band responses (20 m and 60 m bands
are block-averaged as a 10 m resampling of them would be), with clouds, cloud shadows, a cloud probability
layer, swath gaps and noise. PlanetScope's 4 bands sample the same surface at 3 m through their own band
responses, their own calibration (gain / offset per band and per acquisition), noise and acquisition-time
offsets.

The output follows the DENETHOR / DLR fusion layout read by :mod:`training.data.denethor`::

    OUT/scene_a/s2/bands.npy         (T, H, W, 12) uint16, reflectance x 10000, 0 = no data
    OUT/scene_a/s2/clp.npy           (T, H, W, 1) uint8, cloud probability x 255
    OUT/scene_a/s2/timestamp.pkl     list[datetime.datetime], T entries
    OUT/scene_a/s2/bbox.pkl          dict(min_x, min_y, max_x, max_y, crs="EPSG:25833")
    OUT/scene_a/planet/YYYY-MM-DD/sr.tif   4-band uint16 GeoTIFF (blue, green, red, nir), 3 m, EPSG:25833
    OUT/scene_a/labels.geojson       field polygons with field_id, crop_id, crop_name (EPSG:25833)
    OUT/scene_a/s2_stack.tif         the S2 series as a cropmap time stack: 13 bands per date (B01 .. B12,
                                     CLP), descriptions YYYY-MM-DD_Bxx, uint16, nodata 0, scale 10000
    OUT/scene_a/fields.gpkg          layer fields: field_id, class_code (= crop_id), class_name; also the
                                     cropland mask for ``cropmap classify --mask``
    OUT/scene_a/planet_scenes/       the PS archive as real-world-shaped scenes: per-scene GeoTIFFs with their
                                     own footprints and origins, UDM2 files, half of the days' second scene in
                                     the next UTM zone (input of ``python -m training.pairs``)
    OUT/scene_b/...                  another region and year (shifted phenology, other soils)

``s2_stack.tif`` and ``fields.gpkg`` are written by :func:`training.simulate.scene_export.write_cropmap_inputs`,
``planet_scenes/`` by :func:`training.simulate.ps_scenes.write_ps_scenes`.

Run ``cropmap data simulate -o DIR`` (alias ``python -m training.simulate``; see ``--help``). What the model
includes and leaves out is
documented in docs/simulator.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize

from cropmap.errors import OutputExistsError
from training.simulate.ps_scenes import write_ps_scenes
from training.simulate.scene_export import write_cropmap_inputs

logger = logging.getLogger(__name__)

CRS = "EPSG:25833"
S2_RES_M = 10.0
PS_RES_M = 3.0

CROP_NAMES: tuple[str, ...] = (
    "Wheat",
    "Rye",
    "Barley",
    "Oats",
    "Corn",
    "Oil Seeds",
    "Root Crops",
    "Meadows",
    "Forage Crops",
)
"""DENETHOR's nine classes; ``crop_id`` is the position + 1."""

S2_BAND_NAMES: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
)
"""The 12 L2A bands of DENETHOR's ``bands.npy`` (all of :data:`cropmap.contract.bands.S2_BANDS` but B10)."""

PS_BAND_NAMES: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Planet Fusion surface-reflectance band order."""

# Band centre and full width at half maximum in nm. S2: ESA S2A spectral response summary
# (https://sentiwiki.copernicus.eu/web/s2-mission); PlanetScope: Planet Fusion / SuperDove harmonised bands
# (https://developers.planet.com/docs/data/planetscope/).
_S2_CENTRE_FWHM = (
    (443, 21),
    (492, 66),
    (560, 36),
    (665, 31),
    (704, 15),
    (740, 15),
    (783, 20),
    (833, 106),
    (865, 21),
    (945, 20),
    (1614, 91),
    (2202, 175),
)
_PS_CENTRE_FWHM = ((490, 60), (565, 36), (665, 30), (865, 40))
# Native resolution of each S2 band in 10 m pixels (B01, B09: 60 m; red edge, B8A, SWIR: 20 m).
_S2_NATIVE_BLOCK = (6, 1, 1, 1, 2, 2, 2, 1, 2, 6, 2, 2)

_WAVELENGTHS = np.arange(400.0, 2501.0, 5.0)


@dataclass(frozen=True)
class CropModel:
    """Phenology, spectrum and 3 m texture of one crop (days are day of year)."""

    sos: float
    """Start of season: inflection of the green-up."""
    eos: float
    """End of season: inflection of the senescence."""
    rate_up: float
    rate_down: float
    harvest: float
    winter_cover: float
    """Green cover before green-up (autumn-sown crops) or 0."""
    peak: float
    red_edge_nm: float
    """Shift of the red-edge inflection from 715 nm (chlorophyll)."""
    nir: float
    """NIR plateau reflectance of the green canopy."""
    water: float
    """Depth of the SWIR water absorption (1 = typical leaf)."""
    green: float
    """Reflectance of the green peak."""
    texture_amp: float
    """Amplitude of smooth within-field variation of cover."""
    texture_scale: float
    """Correlation length of that variation, in 3 m cells."""
    stripe_amp: float
    """Depth of periodic stripes (tramlines, rows, swaths)."""
    stripe_period: int
    """Stripe period in 3 m cells."""
    cuts: tuple[float, ...] = ()
    """Mowing days (grassland); empty for arable crops."""
    flower: float = 0.0
    """Peak cover of yellow flowers (rapeseed)."""


# Winter cereals overlap in time and spectrum and differ mainly by 3 m texture (PS) and small timing shifts;
# Oats and Barley look alike in visible/NIR but differ in red edge and SWIR (S2 only); Meadows and Forage
# Crops share a spectrum and differ by mowing calendar and texture.
CROPS: dict[str, CropModel] = {
    "Wheat": CropModel(92, 186, 9, 6, 214, 0.22, 0.92, 0, 0.42, 1.0, 0.10, 0.04, 6, 0.35, 6),
    "Rye": CropModel(86, 179, 10, 6, 204, 0.24, 0.88, -3, 0.41, 0.95, 0.10, 0.22, 3, 0.0, 1),
    "Barley": CropModel(88, 168, 9, 6, 192, 0.24, 0.9, 2, 0.44, 1.0, 0.11, 0.12, 1, 0.15, 4),
    "Oats": CropModel(116, 190, 7, 6, 219, 0.0, 0.88, 12, 0.44, 1.3, 0.11, 0.08, 2, 0.0, 1),
    "Corn": CropModel(152, 256, 8, 8, 276, 0.0, 0.95, 5, 0.48, 1.1, 0.09, 0.06, 4, 0.3, 3),
    "Oil Seeds": CropModel(72, 176, 10, 7, 200, 0.35, 0.92, -5, 0.5, 0.9, 0.12, 0.15, 5, 0.0, 1, flower=0.55),
    "Root Crops": CropModel(142, 280, 9, 12, 292, 0.0, 0.95, 8, 0.55, 1.3, 0.1, 0.05, 2, 0.25, 2),
    "Meadows": CropModel(
        95, 400, 12, 10, 400, 0.4, 0.9, -2, 0.4, 1.0, 0.09, 0.3, 1, 0.0, 1, cuts=(152, 205, 258)
    ),
    "Forage Crops": CropModel(
        90, 400, 10, 10, 400, 0.35, 0.9, -2, 0.41, 1.02, 0.09, 0.04, 4, 0.2, 5, cuts=(138, 178, 220, 262)
    ),
}
assert tuple(CROPS) == CROP_NAMES  # internal invariant

_BACKGROUND_FOREST, _BACKGROUND_URBAN, _BACKGROUND_MARGIN = 1, 2, 3


@dataclass(frozen=True)
class SceneSpec:
    """What differs between the two scenes of a pair (region, year, climate, soils)."""

    name: str
    year: int
    origin_x: float
    origin_y: float
    phenology_shift_days: float
    soil_brightness: float
    soil_redness: float
    cloud_clear_fraction: float
    crop_weights: tuple[float, ...]


SCENE_A = SceneSpec(
    "scene_a",
    2018,
    400_000.0,
    5_820_000.0,
    0.0,
    0.9,
    0.0,
    0.5,
    (0.17, 0.16, 0.10, 0.05, 0.14, 0.10, 0.06, 0.14, 0.08),
)
SCENE_B = SceneSpec(
    "scene_b",
    2019,
    452_000.0,
    5_761_000.0,
    9.0,
    1.25,
    0.4,
    0.4,
    (0.12, 0.20, 0.08, 0.07, 0.16, 0.08, 0.04, 0.17, 0.08),
)


@dataclass(frozen=True)
class SimulationConfig:
    """Size and randomness of a simulated scene pair."""

    size_px: int = 60
    """Rows and columns of the S2 grid (10 m pixels); PS has ceil(size_px * 10 / 3)."""
    n_fields: int = 40
    """Labelled crop fields per scene (at least 9: every class appears)."""
    n_stamps: int = 36
    """S2 acquisitions over the year."""
    ps_interval_days: int = 5
    """PS is written every this many days, plus on every S2 day (1 = daily like Planet Fusion)."""
    seed: int = 0
    background_fraction: float = 0.15
    """Share of land cells that are forest or settlement (unlabelled)."""
    gap_probability: float = 0.06
    """Chance that an S2 stamp loses a swath (bands 0 there)."""

    def __post_init__(self) -> None:
        """Validate sizes."""
        if self.size_px < 12:
            raise ValueError(f"size_px must be >= 12 (S2 pixels per side), got {self.size_px}")
        if self.n_fields < len(CROP_NAMES):
            raise ValueError(
                f"n_fields must be >= {len(CROP_NAMES)} so that every class appears, got {self.n_fields}"
            )
        if self.n_fields > self.size_px**2 // 16:
            raise ValueError(
                f"n_fields={self.n_fields} is too many for a {self.size_px} x {self.size_px} px scene; "
                f"use at most {self.size_px**2 // 16} (fields of >= 16 S2 px)"
            )
        if not 2 <= self.n_stamps <= 365:
            raise ValueError(f"n_stamps must be in 2..365, got {self.n_stamps}")
        if not 1 <= self.ps_interval_days <= 366:
            raise ValueError(f"ps_interval_days must be in 1..366, got {self.ps_interval_days}")
        if not 0.0 <= self.background_fraction < 0.8:
            raise ValueError(f"background_fraction must be in [0, 0.8), got {self.background_fraction}")
        if not 0.0 <= self.gap_probability <= 1.0:
            raise ValueError(f"gap_probability must be in [0, 1], got {self.gap_probability}")


PRESETS: dict[str, SimulationConfig] = {
    "tiny": SimulationConfig(size_px=32, n_fields=27, n_stamps=12, ps_interval_days=30),
    "default": SimulationConfig(),
    "large": SimulationConfig(size_px=200, n_fields=400, n_stamps=72, ps_interval_days=15),
}
"""Named configurations: ``tiny`` for unit tests (seconds), ``default`` for demos, ``large`` for runs."""


# ----------------------------------------------------------------------------------------------------------
# Spectra
# ----------------------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _band_matrix(centres_fwhm: Sequence[tuple[float, float]]) -> np.ndarray:
    """Gaussian band responses, normalised to unit area: (n_bands, n_wavelengths)."""
    centres = np.array([c for c, _ in centres_fwhm], dtype=np.float64)[:, None]
    sigma = np.array([f for _, f in centres_fwhm], dtype=np.float64)[:, None] / 2.3548
    resp = np.exp(-0.5 * ((_WAVELENGTHS[None, :] - centres) / sigma) ** 2)
    return resp / resp.sum(axis=1, keepdims=True)


def _water_absorption(depth: float) -> np.ndarray:
    """Transmission factor of leaf water: narrow bands at 1200 / 1450 / 1940 nm and the SWIR continuum."""
    lam = _WAVELENGTHS
    bands = 0.12 * np.exp(-0.5 * ((lam - 1200) / 60) ** 2) + 0.3 * np.exp(-0.5 * ((lam - 1450) / 60) ** 2)
    bands += 0.4 * np.exp(-0.5 * ((lam - 1940) / 90) ** 2)
    bands += 0.45 * _sigmoid((lam - 1350) / 60) + 0.2 * _sigmoid((lam - 1850) / 60)
    return np.clip(1.0 - depth * bands, 0.05, 1.0)


def _green_spectrum(crop: CropModel) -> np.ndarray:
    lam = _WAVELENGTHS
    vis = 0.03 + (crop.green - 0.03) * np.exp(-0.5 * ((lam - 555) / 28) ** 2)
    vis -= 0.012 * np.exp(-0.5 * ((lam - 670) / 20) ** 2)
    edge = _sigmoid((lam - (715 + crop.red_edge_nm)) / 9.0)
    spec = vis * (1 - edge) + crop.nir * edge
    return np.clip(spec * _water_absorption(crop.water), 0.005, 1.0)


def _dry_spectrum() -> np.ndarray:
    lam = _WAVELENGTHS
    spec = 0.06 + 0.3 * _sigmoid((lam - 620) / 90) + 0.05 * _sigmoid((lam - 1100) / 200)
    return spec * _water_absorption(0.25) - 0.04 * np.exp(-0.5 * ((lam - 2100) / 60) ** 2)


def _soil_spectrum(brightness: float, redness: float) -> np.ndarray:
    lam = _WAVELENGTHS
    spec = 0.06 + 0.22 * (1 - np.exp(-(lam - 380) / 700)) + redness * 0.05 * _sigmoid((lam - 580) / 25)
    spec -= redness * 0.02 * np.exp(-0.5 * ((lam - 900) / 80) ** 2)
    return np.clip(brightness * spec * _water_absorption(0.12), 0.01, 0.8)


def _flower_spectrum() -> np.ndarray:
    lam = _WAVELENGTHS
    return 0.04 + 0.3 * _sigmoid((lam - 515) / 12) - 0.05 * _sigmoid((lam - 1300) / 100)


def _forest_spectrum() -> np.ndarray:
    spec = _green_spectrum(CropModel(0, 0, 1, 1, 0, 0, 0, -6, 0.27, 1.1, 0.05, 0, 1, 0, 1))
    return 0.9 * spec


def _urban_spectrum() -> np.ndarray:
    lam = _WAVELENGTHS
    return 0.12 + 0.05 * (lam - 400) / 2100


def _endmember_bands() -> dict[str, np.ndarray]:
    """Band reflectances (16 = 12 S2 + 4 PS) of every endmember except the soils."""
    resp = np.concatenate([_band_matrix(_S2_CENTRE_FWHM), _band_matrix(_PS_CENTRE_FWHM)])
    out = {name: resp @ _green_spectrum(crop) for name, crop in CROPS.items()}
    out["dry"] = resp @ _dry_spectrum()
    out["flower"] = resp @ _flower_spectrum()
    out["forest"] = resp @ _forest_spectrum()
    out["urban"] = resp @ _urban_spectrum()
    out["grass"] = resp @ _green_spectrum(CROPS["Meadows"])
    return out


def _soil_bands(spec: SceneSpec) -> np.ndarray:
    resp = np.concatenate([_band_matrix(_S2_CENTRE_FWHM), _band_matrix(_PS_CENTRE_FWHM)])
    return resp @ _soil_spectrum(spec.soil_brightness, spec.soil_redness)


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``scale`` cells (FFT filter)."""
    white = rng.standard_normal(shape)
    if scale <= 0.5:
        return white
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * scale) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=shape)
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _layout(
    rng: np.random.Generator, cfg: SimulationConfig, spec: SceneSpec
) -> tuple[gpd.GeoDataFrame, list[tuple[shapely.Geometry, int]]]:
    """Field polygons (labelled) and background (forest / settlement) from a relaxed Voronoi tessellation."""
    extent = cfg.size_px * S2_RES_M
    n_cells = round(cfg.n_fields / (1.0 - cfg.background_fraction))
    pts = rng.uniform(0, extent, size=(n_cells, 2))
    box = shapely.box(0, 0, extent, extent)
    for _ in range(2):  # Lloyd relaxation: more regular, Brandenburg-like parcels
        cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=box))
        cells = shapely.intersection(cells, box)
        pts = np.array([[c.centroid.x, c.centroid.y] for c in cells])
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=box))
    cells = [c for c in shapely.intersection(cells, box) if c.area > 0]
    order = rng.permutation(len(cells))
    field_cells = [cells[i] for i in order[: cfg.n_fields]]
    background_cells = [cells[i] for i in order[cfg.n_fields :]]

    n = len(field_cells)
    per_class = max(1, min(3, n // len(CROP_NAMES)))  # every class in every split of a stratified field split
    base = [k for k in range(len(CROP_NAMES)) for _ in range(per_class)]
    weights = np.asarray(spec.crop_weights) / np.sum(spec.crop_weights)
    rest = rng.choice(len(CROP_NAMES), size=n - len(base), p=weights).tolist()
    crop_idx = rng.permutation(np.array(base + rest))

    geoms, ids, crops = [], [], []
    for i, (cell, k) in enumerate(zip(field_cells, crop_idx, strict=True)):
        shrunk = cell.buffer(-rng.uniform(2.0, 5.0), join_style="mitre")
        if shrunk.is_empty:
            shrunk = cell
        geoms.append(shapely.affinity.translate(shrunk, spec.origin_x, spec.origin_y))
        ids.append(i + 1)
        crops.append(int(k))
    fields = gpd.GeoDataFrame(
        {
            "field_id": np.asarray(ids, dtype=np.int64),
            "crop_id": np.asarray(crops, dtype=np.int64) + 1,
            "crop_name": [CROP_NAMES[k] for k in crops],
        },
        geometry=geoms,
        crs=CRS,
    )
    background = []
    for cell in background_cells:
        kind = _BACKGROUND_FOREST if rng.random() < 0.65 else _BACKGROUND_URBAN
        background.append((shapely.affinity.translate(cell, spec.origin_x, spec.origin_y), kind))
    return fields, background


def _overlap_matrix(n_coarse: int, n_fine: int) -> np.ndarray:
    """Area weights (n_coarse, n_fine): share of each 10 m pixel covered by each 3 m cell along one axis."""
    lo = np.arange(n_coarse)[:, None] * S2_RES_M
    flo = np.arange(n_fine)[None, :] * PS_RES_M
    overlap = np.clip(np.minimum(lo + S2_RES_M, flo + PS_RES_M) - np.maximum(lo, flo), 0, None)
    return (overlap / S2_RES_M).astype(np.float32)


def _block_mean(img: np.ndarray, block: int) -> np.ndarray:
    """Mean over ``block x block`` pixel blocks, repeated back to the input shape (H, W)."""
    if block == 1:
        return img
    h, w = img.shape
    ph, pw = -h % block, -w % block
    padded = np.pad(img, ((0, ph), (0, pw)), mode="edge")
    means = padded.reshape((h + ph) // block, block, (w + pw) // block, block).mean(axis=(1, 3))
    return np.repeat(np.repeat(means, block, axis=0), block, axis=1)[:h, :w]


# ----------------------------------------------------------------------------------------------------------
# Surface
# ----------------------------------------------------------------------------------------------------------


class _Surface:
    """The shared 3 m surface of one scene: static maps plus per-field phenology, evaluated at any day."""

    def __init__(self, rng: np.random.Generator, cfg: SimulationConfig, spec: SceneSpec) -> None:
        self.spec = spec
        self.fields, background = _layout(rng, cfg, spec)
        self.n_ps = int(np.ceil(cfg.size_px * S2_RES_M / PS_RES_M))
        n = self.n_ps
        top = spec.origin_y + cfg.size_px * S2_RES_M
        self.ps_transform = rasterio.Affine(PS_RES_M, 0.0, spec.origin_x, 0.0, -PS_RES_M, top)
        shape = (n, n)
        self.field_of_cell = rasterize(
            zip(self.fields.geometry, self.fields.field_id, strict=True),
            out_shape=shape,
            transform=self.ps_transform,
            fill=0,
            dtype="int32",
        )
        cover = np.full(shape, _BACKGROUND_MARGIN, dtype=np.int32)
        if background:
            bg = rasterize(background, out_shape=shape, transform=self.ps_transform, fill=0, dtype="int32")
            cover = np.where(bg > 0, bg, cover)
        self.cover = np.where(self.field_of_cell > 0, 0, cover)

        n_fields = len(self.fields)
        crop_of_field = np.zeros(n_fields + 1, dtype=np.int64)
        crop_of_field[self.fields.field_id.to_numpy()] = self.fields.crop_id.to_numpy() - 1
        self.crop_of_cell = np.where(self.field_of_cell > 0, crop_of_field[self.field_of_cell], -1)

        # Per-field parameters (index = field_id); jitter makes classes overlap at any single date.
        size = n_fields + 1
        self.f_shift = rng.normal(spec.phenology_shift_days, 6.0, size)
        self.f_peak = np.clip(rng.normal(1.0, 0.05, size), 0.8, 1.1)
        self.f_soil = np.clip(rng.normal(1.0, 0.08, size), 0.75, 1.3)
        self.f_rate = np.clip(rng.normal(1.0, 0.12, size), 0.7, 1.4)
        self.f_cut_jitter = rng.normal(0.0, 8.0, (size, 4))
        self.f_plough = rng.uniform(8.0, 45.0, size)
        angles = rng.uniform(0, np.pi, size)

        # Per-cell texture: smooth variation at the crop's scale plus stripes along the field's direction.
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
        texture = np.ones(shape)
        noise_cache: dict[float, np.ndarray] = {}
        for k, crop in enumerate(CROPS.values()):
            cells = self.crop_of_cell == k
            if not cells.any():
                continue
            if crop.texture_scale not in noise_cache:
                noise_cache[crop.texture_scale] = _smooth_noise(rng, shape, crop.texture_scale)
            tex = crop.texture_amp * noise_cache[crop.texture_scale]
            if crop.stripe_amp > 0:
                theta = angles[self.field_of_cell]
                coord = np.floor(xx * np.cos(theta) + yy * np.sin(theta)).astype(np.int64)
                stripe = (coord % crop.stripe_period == 0).astype(np.float64)
                tex -= crop.stripe_amp * (stripe - 1.0 / crop.stripe_period)
            texture[cells] += tex[cells]
        self.texture = texture
        self.cell_shift = 2.5 * _smooth_noise(rng, shape, 4.0)  # days: uneven emergence within a field
        soil_var = 1.0 + 0.05 * _smooth_noise(rng, shape, 2.0)
        soil_field = np.where(self.field_of_cell > 0, self.f_soil[self.field_of_cell], 1.0)
        self.soil_cell = (soil_field * soil_var)[..., None] * _soil_bands(spec)[None, None, :]

        bands = _endmember_bands()
        self.green_cell = np.zeros((*shape, 16))
        for k, name in enumerate(CROP_NAMES):
            self.green_cell[self.crop_of_cell == k] = bands[name]
        self.green_cell[self.cover == _BACKGROUND_MARGIN] = bands["grass"]
        self.green_cell = self.green_cell.astype(np.float32)
        self.soil_cell = self.soil_cell.astype(np.float32)
        self.dry = bands["dry"].astype(np.float32)
        self.flower = bands["flower"].astype(np.float32)
        self.forest = bands["forest"].astype(np.float32)
        self.urban = bands["urban"].astype(np.float32)
        self.is_margin = self.cover == _BACKGROUND_MARGIN
        self.is_forest = self.cover == _BACKGROUND_FOREST
        self.is_urban = self.cover == _BACKGROUND_URBAN
        self.green_flat = self.green_cell.reshape(-1, self.green_cell.shape[-1])
        self.soil_flat = self.soil_cell.reshape(-1, self.soil_cell.shape[-1])
        self._prepare_cells()
        # Soil moisture: rain events darken bare soil for a few days.
        rain_days = np.sort(rng.uniform(0, 366, 28))
        self.rain_days = rain_days
        self.rain_amount = rng.uniform(0.3, 1.0, rain_days.size)

    def _moisture(self, doy: float) -> float:
        dt_ = doy - self.rain_days
        return float(np.clip(np.sum(np.where(dt_ >= 0, self.rain_amount * np.exp(-dt_ / 3.0), 0.0)), 0, 1))

    def _prepare_cells(self) -> None:
        """Gather per-cell parameters of each crop once (flat indices), so each day costs only arithmetic."""
        flat_field = self.field_of_cell.ravel()
        flat_crop = self.crop_of_cell.ravel()
        self.crop_cells: list[dict[str, np.ndarray]] = []
        for k in range(len(CROP_NAMES)):
            idx = np.flatnonzero(flat_crop == k)
            fid = flat_field[idx]
            self.crop_cells.append(
                {
                    "idx": idx,
                    "shift": self.f_shift[fid] + self.cell_shift.ravel()[idx],
                    "rate": self.f_rate[fid],
                    "peak": self.f_peak[fid],
                    "plough": self.f_plough[fid],
                    "cut_jitter": self.f_cut_jitter[fid],
                    "texture": self.texture.ravel()[idx],
                }
            )
        self.margin_idx = np.flatnonzero(self.is_margin.ravel())
        self.forest_idx = np.flatnonzero(self.is_forest.ravel())
        self.urban_idx = np.flatnonzero(self.is_urban.ravel())

    def fractions(self, doy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Green, dry and flower cover (H_ps, W_ps) of every 3 m cell on one day of year."""
        n = self.field_of_cell.size
        green = np.zeros(n)
        dry = np.zeros(n)
        flower = np.zeros(n)
        for crop, cells in zip(CROPS.values(), self.crop_cells, strict=True):
            idx = cells["idx"]
            if idx.size == 0:
                continue
            t = doy - cells["shift"]
            peak = crop.peak * cells["peak"]
            if crop.cuts:
                env = crop.winter_cover + (peak - crop.winter_cover) * _sigmoid((t - crop.sos) / crop.rate_up)
                env *= 1.0 - 0.5 * _sigmoid((t - 300) / 10)  # autumn decline
                # Time since the most recent cut (inf before the first): regrowth and hay follow it.
                since_cut = np.full_like(t, np.inf)
                for j, cut in enumerate(crop.cuts):
                    since = t - (cut + cells["cut_jitter"][:, j])
                    since_cut = np.where(since >= 0, np.minimum(since_cut, since), since_cut)
                after = np.isfinite(since_cut)
                since = np.where(after, since_cut, 0.0)
                regrow = np.where(after, 0.25 + 0.75 * (1 - np.exp(-since / 11.0)), 1.0)
                hay = np.where(after, 0.45 * np.exp(-since / 3.0), 0.0)
                g = env * regrow
                d = np.minimum(hay, 1 - g)
            else:
                rate = cells["rate"]
                rise = _sigmoid((t - crop.sos) / (crop.rate_up * rate))
                canopy = crop.winter_cover + (peak - crop.winter_cover) * rise
                g = canopy * (1 - _sigmoid((t - crop.eos) / (crop.rate_down * rate)))
                d = canopy - g
                harvested = t >= crop.harvest
                stubble = 0.35 * np.exp(-np.maximum(t - crop.harvest, 0) / cells["plough"])
                autumn = 0.25 * _sigmoid((t - 290) / 8)  # autumn-sown successor emerges in October
                g = np.where(harvested, autumn, g)
                d = np.where(harvested, stubble * (1 - autumn), d)
                if crop.flower > 0:
                    fl = crop.flower * np.exp(-0.5 * ((t - (crop.sos + 50)) / 9.0) ** 2)
                    flower[idx] = fl * g
                    g = g * (1 - fl)
            green[idx] = g * cells["texture"]
            dry[idx] = d * cells["texture"]
        total = green + dry + flower
        scale = np.where(total > 1, 1 / np.maximum(total, 1e-9), 1.0)
        shape = self.field_of_cell.shape
        return (
            np.clip(green * scale, 0, 1).reshape(shape),
            np.clip(dry * scale, 0, 1).reshape(shape),
            np.clip(flower * scale, 0, 1).reshape(shape),
        )

    def reflectance(self, doy: float, bands: slice = slice(None)) -> np.ndarray:
        """Surface reflectance (H_ps, W_ps, B) float32 of bands ``bands`` of the 16 (12 S2, then 4 PS)."""
        green, dry, flower = (a.ravel().astype(np.float32) for a in self.fractions(doy))
        green[self.margin_idx] = 0.35 + 0.45 * np.exp(-0.5 * ((doy - 175) / 70) ** 2)
        soil = np.clip(1 - green - dry - flower, 0, 1) * np.float32(1.0 - 0.3 * self._moisture(doy))
        n_bands = self.dry[bands].size
        refl = green[:, None] * self.green_flat[:, bands] + soil[:, None] * self.soil_flat[:, bands]
        refl += np.stack([dry, flower], axis=1) @ np.stack([self.dry[bands], self.flower[bands]])
        refl[self.forest_idx] = self.forest[bands]
        refl[self.urban_idx] = self.urban[bands]
        return refl.reshape(*self.field_of_cell.shape, n_bands)


# ----------------------------------------------------------------------------------------------------------
# Sensors
# ----------------------------------------------------------------------------------------------------------


def _s2_dates(rng: np.random.Generator, cfg: SimulationConfig, year: int) -> np.ndarray:
    """Irregular, sorted, unique S2 days of year (1-based)."""
    n_days = 366 if year % 4 == 0 else 365
    grid = np.linspace(1, n_days, cfg.n_stamps + 2)[1:-1]
    spacing = (n_days - 1) / (cfg.n_stamps + 1)
    jitter = rng.uniform(-0.3, 0.3, cfg.n_stamps) * spacing
    doys = np.clip(np.round(grid + jitter), 1, n_days).astype(int)
    doys = np.unique(doys)
    while doys.size < cfg.n_stamps:  # very dense calendars: fill with unused days
        free = np.setdiff1d(np.arange(1, n_days + 1), doys)
        doys = np.sort(np.concatenate([doys, rng.choice(free, cfg.n_stamps - doys.size, replace=False)]))
    return doys


def _observe_s2(
    rng: np.random.Generator,
    surface: np.ndarray,
    agg: np.ndarray,
    clear_fraction: float,
    gap_probability: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One S2 acquisition from the 3 m surface: (H, W, 12) uint16 reflectance x 10000 and (H, W) uint8 clp."""
    s2 = np.einsum("ij,jkb,lk->ilb", agg, surface, agg, optimize=True).astype(np.float64)
    h, w = s2.shape[:2]
    for b, block in enumerate(_S2_NATIVE_BLOCK):
        s2[..., b] = _block_mean(s2[..., b], block)
    u = rng.random()
    if u < clear_fraction:
        cover = 0.0
    elif u < clear_fraction + 0.3:
        cover = rng.uniform(0.05, 0.6)
    else:
        cover = rng.uniform(0.6, 1.0)
    opacity = np.zeros((h, w))
    if cover > 0:
        field = _smooth_noise(rng, (h, w), rng.uniform(3.0, 8.0))
        threshold = np.quantile(field, 1 - cover)
        opacity = np.clip((field - threshold) / 0.8, 0, 1) ** 0.7
        shadow = np.roll(opacity, (int(rng.integers(2, 5)), int(rng.integers(-3, 4))), axis=(0, 1))
        s2 *= (1 - 0.55 * shadow * (1 - opacity))[..., None]
        cloud = np.array([0.45, 0.44, 0.44, 0.45, 0.46, 0.46, 0.47, 0.47, 0.47, 0.4, 0.32, 0.22])
        s2 = s2 * (1 - opacity[..., None]) + opacity[..., None] * cloud[None, None, :]
    # Noise: additive per band plus a small multiplicative part.
    s2 = s2 * (1 + rng.normal(0, 0.01, s2.shape)) + rng.normal(0, 0.003, s2.shape)
    prob = np.clip(opacity * 1.15 + 0.04 * _smooth_noise(rng, (h, w), 2.0) + 0.02, 0, 1)
    dn = np.clip(np.round(s2 * 10000), 1, 65535).astype(np.uint16)
    clp = np.round(prob * 255).astype(np.uint8)
    if rng.random() < gap_probability:
        yy, xx = np.mgrid[0:h, 0:w]
        slope = rng.uniform(-0.4, 0.4)
        edge = rng.uniform(0.3, 0.8) * w
        gap = (xx + slope * yy) > edge if rng.random() < 0.5 else (xx + slope * yy) < (w - edge)
        dn[gap] = 0
        clp[gap] = 0
    return dn, clp


def _observe_ps(
    rng: np.random.Generator, surface_ps: np.ndarray, gain: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """One PlanetScope acquisition: (4, H_ps, W_ps) uint16 reflectance x 10000, own calibration and noise."""
    illum = rng.normal(1.0, 0.03)  # acquisition-time illumination / BRDF difference, per scene
    band_drift = rng.normal(1.0, 0.015, 4)  # cross-sensor calibration drift of the constellation
    ps = surface_ps * (gain * band_drift * illum).astype(np.float32) + offset.astype(np.float32)
    # Shot-like noise (2 % of the signal) and read noise (0.006) combined into one Gaussian draw.
    ps = ps + np.sqrt((0.02 * ps) ** 2 + 0.006**2) * rng.standard_normal(ps.shape, dtype=np.float32)
    dn = np.clip(np.round(ps * 10000), 1, 65535).astype(np.uint16)
    return np.moveaxis(dn, -1, 0)


def _write_ps(path: Path, data: np.ndarray, transform: rasterio.Affine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": 4,
        "height": data.shape[1],
        "width": data.shape[2],
        "crs": CRS,
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    if data.shape[1] < 256 or data.shape[2] < 256:
        profile.update(tiled=False)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = PS_BAND_NAMES


def _simulate_scene(out: Path, cfg: SimulationConfig, spec: SceneSpec, rng: np.random.Generator) -> None:
    surface = _Surface(rng, cfg, spec)
    n_days = 366 if spec.year % 4 == 0 else 365
    s2_doys = _s2_dates(rng, cfg, spec.year)
    ps_doys = np.union1d(np.arange(1, n_days + 1, cfg.ps_interval_days), s2_doys)
    agg = _overlap_matrix(cfg.size_px, surface.n_ps)
    start = dt.date(spec.year, 1, 1)

    s2_dir = out / "s2"
    s2_dir.mkdir(parents=True, exist_ok=True)
    bands = np.lib.format.open_memmap(
        s2_dir / "bands.npy", mode="w+", dtype=np.uint16, shape=(len(s2_doys), cfg.size_px, cfg.size_px, 12)
    )
    clp = np.lib.format.open_memmap(
        s2_dir / "clp.npy", mode="w+", dtype=np.uint8, shape=(len(s2_doys), cfg.size_px, cfg.size_px, 1)
    )
    for i, doy in enumerate(s2_doys):
        refl = surface.reflectance(float(doy), slice(0, 12))
        bands[i], clp[i, ..., 0] = _observe_s2(rng, refl, agg, spec.cloud_clear_fraction, cfg.gap_probability)
    bands.flush()
    clp.flush()
    del bands, clp
    stamps = [dt.datetime.combine(start + dt.timedelta(days=int(d) - 1), dt.time(10, 10)) for d in s2_doys]
    with open(s2_dir / "timestamp.pkl", "wb") as fh:
        pickle.dump(stamps, fh)
    extent = cfg.size_px * S2_RES_M
    bbox = {
        "min_x": spec.origin_x,
        "min_y": spec.origin_y,
        "max_x": spec.origin_x + extent,
        "max_y": spec.origin_y + extent,
        "crs": CRS,
    }
    with open(s2_dir / "bbox.pkl", "wb") as fh:
        pickle.dump(bbox, fh)
    (s2_dir / "band_names.json").write_text(json.dumps(list(S2_BAND_NAMES)) + "\n")

    # PlanetScope: own calibration for the scene, per-acquisition offsets in time of up to a day either side.
    gain = np.array([1.06, 0.97, 0.94, 1.08]) * rng.normal(1.0, 0.01, 4)
    offset = np.array([0.012, 0.006, -0.004, 0.01])
    for doy in ps_doys:
        acq = float(doy) + rng.uniform(-1.0, 1.0)
        refl = surface.reflectance(acq, slice(12, 16))
        date = start + dt.timedelta(days=int(doy) - 1)
        _write_ps(
            out / "planet" / date.isoformat() / "sr.tif",
            _observe_ps(rng, refl, gain, offset),
            surface.ps_transform,
        )

    surface.fields.to_file(out / "labels.geojson", driver="GeoJSON")
    write_cropmap_inputs(out)  # s2_stack.tif and fields.gpkg, read back from the files just written
    write_ps_scenes(
        out
    )  # planet_scenes/: the PS archive as per-scene GeoTIFFs with UDM2, read back from planet/
    logger.info(
        "%s: %d S2 stamps, %d PS days, %d fields", spec.name, len(s2_doys), len(ps_doys), len(surface.fields)
    )


def simulate(out_dir: str | Path, config: SimulationConfig | None = None) -> dict[str, Path]:
    """Write a simulated scene pair (``scene_a``: 2018 training tile, ``scene_b``: another region in 2019).

    Args:
        out_dir: Folder to create; it must not contain ``scene_a`` or ``scene_b`` already.
        config: Sizes and seed; :data:`PRESETS` ``["default"]`` when omitted.

    Returns:
        ``{"scene_a": path, "scene_b": path}``, each a DENETHOR-layout scene folder.

    Raises:
        cropmap.errors.OutputExistsError: If a scene folder exists already in ``out_dir`` (a ``FileExistsError``).
    """
    cfg = config if config is not None else PRESETS["default"]
    root = Path(out_dir)
    paths = {spec.name: root / spec.name for spec in (SCENE_A, SCENE_B)}
    for path in paths.values():
        if path.exists():
            raise OutputExistsError(f"{path} exists already; choose another --output or remove it")
    root.mkdir(parents=True, exist_ok=True)
    for k, spec in enumerate((SCENE_A, SCENE_B)):
        rng = np.random.default_rng([cfg.seed, k])
        _simulate_scene(paths[spec.name], cfg, spec, rng)
    (root / "simulation.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.simulate``: an alias of ``cropmap data simulate``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.simulate.cli import simulate as command

    return run_command(command, argv, prog_name="python -m training.simulate")


if __name__ == "__main__":
    sys.exit(main())
