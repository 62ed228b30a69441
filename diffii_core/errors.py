"""Errors a user can act on. Each message names what is wrong."""


class DiffiiError(Exception):
    """Base class for errors meant to be shown to a user as they are."""


class DatasetError(DiffiiError):
    """The dataset cannot be used (not an archive, unsafe member, no class, empty class...)."""


class ModelError(DiffiiError):
    """The model cannot be found or loaded."""


class ArtifactError(DiffiiError):
    """A stored artifact (concepts, inversion pool) is missing or does not fit the job."""


class Cancelled(DiffiiError):
    """Raised inside a long loop when the caller asked to stop."""
