"""The diffii world: a procedural fine-grained bird domain, deterministic from a seed, needing no file.

A *species* is one combination of four visible attributes (body colour, wing colour, crest, tail), so
the nearest species differ in one attribute, as CUB's birds do in a field mark. Every *image* of a
species varies in pose, position, scale, lighting and occlusion, and stands in one of eight background
*contexts* that are a nuisance for the label. The contexts are exactly the default `bird` suffixes of
`diffii_core.denoising.suffixes`, so Diff-II's suffixed prompts name contexts the world model knows.

Every image comes with a caption naming its attributes and its context: the world model's pretraining
text. Species are split once, by a fixed seed, into pretraining species (the only ones the world model
and the pretrained classifiers ever see) and evaluation species (combinations they never saw).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 32
_SS = 4  # drawn at 4x and reduced, so edges are smooth like a photograph's
_BIG = RESOLUTION * _SS

BODY_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "orange": (240, 135, 30),
    "yellow": (240, 215, 45),
    "blue": (45, 85, 215),
    "purple": (135, 50, 175),
    "black": (35, 35, 40),
}
WING_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (25, 25, 30),
    "green": (40, 165, 60),
    "brown": (135, 85, 40),
}
CRESTS = ("no", "spiky", "round")
TAILS = ("short", "long", "forked")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "body": tuple(BODY_COLOURS),
    "wing": tuple(WING_COLOURS),
    "crest": CRESTS,
    "tail": TAILS,
}
# The default `bird` suffixes, in that order (a test keeps them equal).
CONTEXTS = (
    "flying over water",
    "perched on a branch in a tree",
    "standing on the ground",
    "sitting on a rock with a blue sky",
    "swimming in a lake",
    "standing in tall grass",
    "perched on a fence",
    "walking on a sandy beach",
)
# Waterbirds-style groups: contexts with water in them, and the others.
WATER_CONTEXTS = (0, 4, 7)
LAND_CONTEXTS = (1, 2, 3, 5, 6)
METACLASS = "bird"
SPLIT_SEED = 1234
EVAL_SHARE = 0.25


@dataclass(frozen=True)
class Species:
    """One combination of attribute values; `index` is its place in the full product."""

    index: int
    body: str
    wing: str
    crest: str
    tail: str

    @property
    def attributes(self) -> dict[str, str]:
        return {"body": self.body, "wing": self.wing, "crest": self.crest, "tail": self.tail}

    @property
    def name(self) -> str:
        """The folder name: the description's words joined by `_`, as CUB's folders are
        (`purple_bird_with_brown_wings_a_spiky_crest_and_a_forked_tail`), so that the methods which
        prompt the base model with a class's readable name give it words its captions taught it."""
        return "_".join(re.findall(r"\w+", self.description()))

    def description(self) -> str:
        crest = "no crest" if self.crest == "no" else f"a {self.crest} crest"
        return f"{self.body} bird with {self.wing} wings, {crest} and a {self.tail} tail"

    def distance(self, other: Species) -> int:
        return sum(a != b for a, b in zip(self.attributes.values(), other.attributes.values(), strict=True))


def caption(species: Species, context: int) -> str:
    """The pretraining text of one image: its attributes and its context."""
    return f"a photo of a {species.description()}, {CONTEXTS[context]}"


@cache
def all_species() -> tuple[Species, ...]:
    combos = itertools.product(*ATTRIBUTES.values())
    return tuple(Species(i, *combo) for i, combo in enumerate(combos))


@cache
def species_split(seed: int = SPLIT_SEED) -> tuple[tuple[Species, ...], tuple[Species, ...]]:
    """(pretraining, evaluation): disjoint, fixed by `seed`. Every attribute value still occurs in the
    pretraining species, so every word of an evaluation species' caption is known, its combination not."""
    species = all_species()
    order = np.random.default_rng(seed).permutation(len(species))
    n_eval = round(len(species) * EVAL_SHARE)
    evaluation = tuple(sorted((species[i] for i in order[:n_eval]), key=lambda s: s.index))
    pretraining = tuple(sorted((species[i] for i in order[n_eval:]), key=lambda s: s.index))
    return pretraining, evaluation


def pretraining_species() -> tuple[Species, ...]:
    return species_split()[0]


def evaluation_species() -> tuple[Species, ...]:
    return species_split()[1]


def species_by_name(name: str) -> Species:
    for species in all_species():
        if species.name == name:
            return species
    raise KeyError(name)


# -- rendering -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Everything about one image that is not the species: the nuisance variables."""

    context: int
    cx: float
    cy: float
    scale: float
    angle: float
    facing: int  # +1 right, -1 left
    spread: bool  # wings up (flying) or folded
    brightness: float
    tint: tuple[float, float, float]
    occluder: tuple[float, float, float] | None  # (x, y, radius) of a leaf cluster in front
    scene_seed: int


def draw_pose(rng: np.random.Generator, context: int | None = None) -> Pose:
    if context is None:
        context = int(rng.integers(len(CONTEXTS)))
    flying = context == 0
    scale = float(rng.uniform(0.78, 1.12))
    cx = float(rng.uniform(0.36, 0.64)) * _BIG
    if flying:
        cy = float(rng.uniform(0.30, 0.42)) * _BIG
    elif context == 4:  # swimming: low in the frame
        cy = float(rng.uniform(0.58, 0.66)) * _BIG
    else:
        cy = float(rng.uniform(0.46, 0.56)) * _BIG
    occluder = None
    if rng.random() < 0.2:
        # Leaves in front of the belly and legs: a partial occlusion that never hides a field mark
        # (head, crest, wing, tail), so every image still shows its species.
        occluder = (
            cx + float(rng.uniform(-0.15, 0.15)) * _BIG,
            cy + float(rng.uniform(0.17, 0.24)) * _BIG * scale,
            float(rng.uniform(0.07, 0.10)) * _BIG,
        )
    return Pose(
        context=context,
        cx=cx,
        cy=cy,
        scale=scale,
        angle=float(rng.uniform(-0.25, 0.25)),
        facing=1 if rng.random() < 0.5 else -1,
        spread=flying or bool(rng.random() < 0.25),
        brightness=float(rng.uniform(0.8, 1.15)),
        tint=tuple(float(v) for v in rng.uniform(0.92, 1.08, size=3)),  # type: ignore[arg-type]
        occluder=occluder,
        scene_seed=int(rng.integers(2**31)),
    )


def render(species: Species, pose: Pose) -> Image.Image:
    """One 32 px RGB image of `species` in `pose`."""
    scene = np.random.default_rng(pose.scene_seed)
    image = _background(pose.context, scene)
    draw = ImageDraw.Draw(image)
    _bird(draw, species, pose)
    _foreground(draw, pose, scene)
    pixels = np.asarray(image.resize((RESOLUTION, RESOLUTION), Image.Resampling.LANCZOS), dtype=np.float32)
    pixels = pixels * pose.brightness * np.asarray(pose.tint, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def sample_image(
    species: Species, rng: np.random.Generator, context: int | None = None
) -> tuple[Image.Image, int]:
    pose = draw_pose(rng, context)
    return render(species, pose), pose.context


def image_rng(seed: int, *parts: int) -> np.random.Generator:
    """One generator per image, so one image never shifts another's draws."""
    return np.random.default_rng([seed, *parts])


# -- drawing helpers (coordinates on the 128 px canvas) --------------------------------------------


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _vertical(
    top: tuple[int, int, int], bottom: tuple[int, int, int], y0: int, y1: int, arr: np.ndarray
) -> None:
    ramp = np.linspace(0.0, 1.0, max(y1 - y0, 1))[:, None, None]
    arr[y0:y1] = np.asarray(top) * (1 - ramp) + np.asarray(bottom) * ramp


def _background(context: int, rng: np.random.Generator) -> Image.Image:
    arr = np.zeros((_BIG, _BIG, 3), dtype=np.float64)
    horizon = int(rng.uniform(0.5, 0.62) * _BIG)
    sky_top, sky_low = (110, 170, 235), (190, 220, 245)
    if context == 0:  # flying over water
        _vertical(sky_top, sky_low, 0, horizon, arr)
        _vertical((40, 100, 175), (20, 60, 130), horizon, _BIG, arr)
    elif context == 1:  # perched on a branch in a tree
        _vertical((30, 85, 35), (20, 60, 25), 0, _BIG, arr)
    elif context == 2:  # standing on the ground
        _vertical(sky_top, sky_low, 0, horizon, arr)
        _vertical((120, 85, 50), (90, 60, 35), horizon, _BIG, arr)
    elif context == 3:  # sitting on a rock with a blue sky
        _vertical((35, 90, 215), (90, 150, 235), 0, _BIG, arr)
    elif context == 4:  # swimming in a lake
        _vertical((70, 120, 70), (50, 95, 55), 0, horizon - 30, arr)
        _vertical((30, 95, 110), (15, 65, 85), horizon - 30, _BIG, arr)
    elif context == 5:  # standing in tall grass
        _vertical(sky_top, sky_low, 0, horizon, arr)
        _vertical((95, 150, 60), (70, 120, 40), horizon, _BIG, arr)
    elif context == 6:  # perched on a fence
        _vertical((205, 215, 225), (225, 225, 215), 0, _BIG, arr)
    else:  # walking on a sandy beach
        _vertical(sky_top, sky_low, 0, horizon - 22, arr)
        _vertical((50, 130, 190), (40, 115, 175), horizon - 22, horizon, arr)
        _vertical((235, 215, 160), (215, 190, 135), horizon, _BIG, arr)
    arr += rng.normal(0.0, 4.0, size=(_BIG, _BIG, 1))
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    if context == 0:
        for _ in range(6):
            y = rng.uniform(horizon + 6, _BIG - 4)
            x = rng.uniform(0, _BIG - 30)
            draw.line((x, y, x + rng.uniform(15, 35), y), fill=(120, 170, 220), width=2)
    elif context == 1:
        for _ in range(14):
            x, y, r = rng.uniform(0, _BIG), rng.uniform(0, _BIG), rng.uniform(6, 16)
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=_mix((30, 85, 35), (90, 160, 60), rng.uniform(0.3, 1))
            )
    elif context == 2:
        for _ in range(10):
            x, y, r = rng.uniform(0, _BIG), rng.uniform(horizon + 4, _BIG), rng.uniform(2, 5)
            draw.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), fill=(150, 130, 110))
    elif context == 3:
        for _ in range(2):
            x, y = rng.uniform(0, _BIG), rng.uniform(8, 40)
            draw.ellipse((x - 22, y - 7, x + 22, y + 7), fill=(235, 240, 250))
    elif context == 4:
        for _ in range(5):
            y = rng.uniform(horizon - 20, _BIG - 4)
            x = rng.uniform(0, _BIG - 30)
            draw.line((x, y, x + rng.uniform(15, 35), y), fill=(70, 140, 150), width=2)
    return image


def _rotate(points: list[tuple[float, float]], pose: Pose) -> list[tuple[float, float]]:
    """Body-frame points (x forward, y down, unit = 1 px at scale 1) to canvas coordinates."""
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    out = []
    for x, y in points:
        x *= pose.scale * pose.facing
        y *= pose.scale
        out.append((pose.cx + c * x - s * y * pose.facing, pose.cy + s * x * pose.facing + c * y))
    return out


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[tuple[float, float]]:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)
    ]


def _bird(draw: ImageDraw.ImageDraw, species: Species, pose: Pose) -> None:
    body = BODY_COLOURS[species.body]
    wing = WING_COLOURS[species.wing]
    outline = (20, 20, 20) if species.body != "black" else (90, 90, 90)

    def poly(points: list[tuple[float, float]], fill: tuple[int, int, int]) -> None:
        draw.polygon(_rotate(points, pose), fill=fill, outline=outline, width=2)

    # Legs first (behind the body), unless the bird flies or swims.
    if pose.context not in (0, 4):
        for dx in (-5.0, 4.0):
            (x0, y0), (x1, y1) = _rotate([(dx, 10.0), (dx - 1.0, 27.0)], pose)
            draw.line((x0, y0, x1, y1), fill=(60, 50, 40), width=3)
    # Tail, behind the body.
    if species.tail == "short":
        poly([(-18.0, -4.0), (-31.0, -6.0), (-31.0, 4.0), (-18.0, 4.0)], wing)
    elif species.tail == "long":
        poly([(-18.0, -4.0), (-52.0, -10.0), (-52.0, -1.0), (-18.0, 5.0)], wing)
    else:  # forked: two prongs
        poly([(-18.0, -3.0), (-44.0, -17.0), (-34.0, 0.0), (-44.0, 15.0), (-18.0, 5.0)], wing)
    poly(_ellipse(0.0, 0.0, 24.0, 14.0), body)
    # Crest on top of the head (drawn before the head so the head's outline stays clean).
    hx, hy = 20.0, -15.0
    if species.crest == "spiky":
        poly(
            [
                (hx - 9, hy - 6),
                (hx - 12, hy - 24),
                (hx - 3, hy - 10),
                (hx, hy - 27),
                (hx + 3, hy - 10),
                (hx + 10, hy - 22),
                (hx + 8, hy - 5),
            ],
            wing,
        )
    elif species.crest == "round":
        poly(_ellipse(hx - 2, hy - 12, 8.0, 7.0, 20), wing)
    poly(_ellipse(hx, hy, 11.0, 10.0, 24), body)
    poly([(hx + 9, hy - 3), (hx + 22, hy + 1), (hx + 9, hy + 5)], (230, 170, 40))
    ((ex, ey),) = _rotate([(hx + 4, hy - 3)], pose)
    r = 2.6 * pose.scale
    draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=(250, 250, 250))
    draw.ellipse((ex - r / 2, ey - r / 2, ex + r / 2, ey + r / 2), fill=(10, 10, 10))
    if pose.spread:
        poly([(6.0, -6.0), (-4.0, -40.0), (-14.0, -44.0), (-16.0, -6.0)], wing)
    else:
        poly(_ellipse(-5.0, -1.0, 15.0, 8.0, 22), wing)


def _foreground(draw: ImageDraw.ImageDraw, pose: Pose, rng: np.random.Generator) -> None:
    """Context props that stand in front of the bird, and the optional occluder."""
    feet = pose.cy + 26 * pose.scale
    if pose.context == 1:  # the branch under its feet
        draw.line((0, feet, _BIG, feet + rng.uniform(-8, 8)), fill=(95, 60, 30), width=7)
    elif pose.context == 3:  # the rock it sits on
        draw.ellipse(
            (pose.cx - 46, feet - 4, pose.cx + 46, feet + 60), fill=(125, 125, 130), outline=(90, 90, 95)
        )
    elif pose.context == 4:  # water over the lower body
        draw.rectangle((0, pose.cy + 4 * pose.scale, _BIG, _BIG), fill=(25, 85, 100))
        for _ in range(3):
            y = rng.uniform(pose.cy + 8, _BIG - 4)
            x = rng.uniform(0, _BIG - 30)
            draw.line((x, y, x + rng.uniform(15, 35), y), fill=(70, 140, 150), width=2)
    elif pose.context == 5:  # blades of grass in front
        for _ in range(40):
            x = rng.uniform(0, _BIG)
            top = feet - rng.uniform(10, 30)
            draw.line(
                (x, _BIG, x + rng.uniform(-6, 6), top),
                fill=_mix((60, 130, 40), (120, 180, 70), rng.uniform()),
                width=2,
            )
    elif pose.context == 6:  # the fence rail and posts
        draw.rectangle((0, feet - 1, _BIG, feet + 8), fill=(150, 105, 60), outline=(100, 70, 40))
        for x in range(int(rng.uniform(0, 30)), _BIG, 36):
            draw.rectangle((x, feet - 6, x + 8, _BIG), fill=(140, 95, 55), outline=(100, 70, 40))
    if pose.occluder is not None:
        x, y, r = pose.occluder
        for _ in range(4):
            dx, dy = rng.uniform(-r, r) * 0.6, rng.uniform(-r, r) * 0.6
            draw.ellipse(
                (x + dx - r * 0.7, y + dy - r * 0.7, x + dx + r * 0.7, y + dy + r * 0.7),
                fill=_mix((35, 110, 40), (80, 160, 60), rng.uniform()),
            )
