"""Prompt suffixes: frequent contexts of a dataset. The paper derived them per dataset with BLIP and an
LLM and published none; without either, a job uses the user's list, else a list for its metaclass, else
a generic one."""

from __future__ import annotations

DEFAULT_SUFFIXES: dict[str, list[str]] = {
    "bird": [
        "flying over water",
        "perched on a branch in a tree",
        "standing on the ground",
        "sitting on a rock with a blue sky",
        "swimming in a lake",
        "standing in tall grass",
        "perched on a fence",
        "walking on a sandy beach",
    ],
    "aircraft": [
        "flying in a clear blue sky",
        "parked on the tarmac",
        "taking off from a runway",
        "landing at an airport",
        "flying above the clouds",
        "in a hangar",
        "on display at an air show",
        "flying over mountains",
    ],
    "car": [
        "parked on a city street",
        "driving on a highway",
        "in a showroom",
        "parked in front of a house",
        "on a race track",
        "driving on a country road",
        "parked in a parking lot",
        "at a car show",
    ],
    "animal": [
        "lying on a couch",
        "sitting on the grass",
        "playing in a garden",
        "standing in a field",
        "sleeping on a bed",
        "running on a beach",
        "sitting indoors by a window",
        "walking on a path in the woods",
    ],
    "flower": [
        "in a garden",
        "with green leaves around it",
        "in a vase on a table",
        "growing in a field",
        "with a blurred background",
        "covered in water drops",
        "in bright sunlight",
        "next to other flowers",
    ],
}
ALIASES = {
    "airplane": "aircraft",
    "plane": "aircraft",
    "aeroplane": "aircraft",
    "dog": "animal",
    "cat": "animal",
    "pet": "animal",
    "vehicle": "car",
    "plant": "flower",
}
GENERIC_SUFFIXES = [
    "in a natural setting",
    "indoors",
    "outdoors on a sunny day",
    "with a plain background",
    "in close-up",
    "seen from a distance",
    "in soft light",
    "on a cloudy day",
]


def suffixes_for(metaclass: str, given: list[str] | None = None) -> list[str]:
    if given:
        return list(given)
    key = metaclass.strip().lower()
    key = ALIASES.get(key, key)
    return list(DEFAULT_SUFFIXES.get(key, GENERIC_SUFFIXES))
