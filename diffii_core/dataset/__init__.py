"""Dataset input: an ImageFolder tree (`<class name>/<image>`) from a folder, .zip, .tar or .tar.gz.

- ``limits``   the operator's limits (one definition for the API, the worker and the CLI) and the
               budget that enforces them while reading
- ``detect``   which format a source is, by content
- ``names``    member names: safety (traversal, drive letters, NUL), noise, image suffixes
- ``zip_reader`` / ``tar_reader`` / ``folder_reader``  one reader per format, each yielding members
- ``layout``   members -> classes (wrapper folder, duplicates, non-images)
- ``decode``   image bytes -> upright RGB; signatures; the pixel limit
- ``model``    Dataset, ClassInfo, ImageItem, Skipped, DatasetSummary
- ``report``   the messages of a refused dataset
- ``load``     ``load_dataset`` (decodes every image) and ``inspect_archive`` (structure only)
"""

from diffii_core.dataset.detect import SourceFormat, detect_format
from diffii_core.dataset.limits import DEFAULT_LIMITS, DatasetLimits
from diffii_core.dataset.load import inspect_archive, load_dataset
from diffii_core.dataset.model import ClassInfo, Dataset, DatasetSummary, ImageItem, Skipped
from diffii_core.dataset.names import IMAGE_SUFFIXES

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "ClassInfo",
    "Dataset",
    "DatasetLimits",
    "DatasetSummary",
    "ImageItem",
    "Skipped",
    "SourceFormat",
    "detect_format",
    "inspect_archive",
    "load_dataset",
]
