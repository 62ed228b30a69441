"""The operator's dataset limits, the one place they are defined, and the budget that enforces them.

The API and the worker build their limits here (from ``DIFFII_DATASET_LIMITS`` overrides), so an
upload the API accepts is one the worker will read under the very same limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from diffii_core.dataset.members import Readable, read_capped
from diffii_core.errors import DatasetError


@dataclass(frozen=True)
class DatasetLimits:
    """Operator limits. The defaults suit "5 to a few hundred images per class" with room to spare."""

    max_archive_bytes: int = 2 * 1024**3
    max_members: int = 50_000  # entries in an archive / files and folders in a folder
    max_member_bytes: int = 64 * 1024**2  # one uncompressed member
    max_total_bytes: int = 4 * 1024**3  # all uncompressed members together (zip bombs)
    max_pixels: int = 40_000_000  # width * height of one image, checked before decoding
    max_classes: int = 10_000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DatasetLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None) -> DatasetLimits:
        """The defaults with ``overrides`` applied; ValueError naming any field that does not exist."""
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown dataset limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**overrides)


DEFAULT_LIMITS = DatasetLimits()


class Budget:
    """Counts members and bytes across the whole source, raising at the first limit crossed."""

    def __init__(self, limits: DatasetLimits, label: str) -> None:
        self.limits = limits
        self.label = label
        self.members = 0
        self.declared_bytes = 0
        self.read_bytes = 0

    def add_members(self, count: int = 1) -> None:
        self.members += count
        if self.members > self.limits.max_members:
            raise DatasetError(
                f"{self.label!r} has more than {self.limits.max_members:,} entries (max_members); "
                f"counted {self.members:,}"
            )

    def add_file(self, path: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise DatasetError(
                f"{self.label!r}: member {path!r} is {size:,} bytes uncompressed, over the limit of "
                f"{self.limits.max_member_bytes:,} bytes (max_member_bytes)"
            )
        self.declared_bytes += size
        self._check_total(self.declared_bytes)

    def add_read(self, size: int) -> None:
        self.read_bytes += size
        self._check_total(self.read_bytes)

    def _check_total(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise DatasetError(
                f"{self.label!r} holds more than {self.limits.max_total_bytes:,} bytes uncompressed "
                f"(max_total_bytes); counted {total:,} so far"
            )

    def read(self, fp: Readable, path: str) -> bytes:
        data = read_capped(fp, self.limits.max_member_bytes)
        if data is None:
            # Only reachable when a size header lied or a file grew after it was measured.
            raise DatasetError(
                f"{self.label!r}: member {path!r} holds more than {self.limits.max_member_bytes:,} "
                "bytes uncompressed (max_member_bytes), more than its header declares"
            )
        self.add_read(len(data))
        return data
