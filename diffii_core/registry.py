"""The models every installation knows, in a module light enough for settings and the CLI to import."""

# "tiny" is built in code (random weights); "world" is the pretrained world model in diffii_core/world.
DEFAULT_REGISTRY: dict[str, str] = {"tiny": "tiny", "world": "world"}
