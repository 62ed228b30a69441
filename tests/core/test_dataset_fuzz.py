"""Fuzzing the dataset reader: any bytes at all give a clean load or a DatasetError, never a crash.

The inputs are valid archives (zip, tar, tar.gz) mangled by hypothesis (bytes flipped, cut, inserted)
and raw bytes behind each format's magic, so most examples get past format detection and into the
member readers and the decoders. Each example also checks that nothing is written: the source keeps
its bytes and its folder holds nothing else.

The default profile is derandomized (the same examples on every run, so CI cannot flake on a newly
found input); `HYPOTHESIS_PROFILE=fuzz` explores new inputs with many more examples.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffii_core.dataset import DatasetLimits, inspect_archive, load_dataset
from diffii_core.errors import DatasetError
from tests.dataset_builders import png

settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Small limits, so limit checks are within reach of small inputs too.
LIMITS = DatasetLimits(max_members=40, max_member_bytes=200_000, max_total_bytes=1_000_000, max_pixels=4_096)
MEMBERS = {
    "cat/a.png": png(8),
    "cat/b.png": png(9, (0, 200, 0)),
    "dog/ü 1.png": png(7, (0, 0, 200)),
    "notes.txt": b"hello",
}


def _zip(compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in MEMBERS.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar(mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


SEEDS = [_zip(zipfile.ZIP_STORED), _zip(zipfile.ZIP_DEFLATED), _tar("w"), _tar("w:gz")]
MAGICS = [b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b\x08\x00", b"", b"\x89PNG\r\n\x1a\n"]


@st.composite
def mangled_archives(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


raw_archives = st.builds(lambda magic, body: magic + body, st.sampled_from(MAGICS), st.binary(max_size=2048))


def _check(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="diffii-fuzz-") as tmp:
        source = Path(tmp) / "fuzz.bin"
        source.write_bytes(data)
        try:
            dataset = load_dataset(source, LIMITS)
        except DatasetError as exc:
            assert str(exc), "a DatasetError must say what is wrong"
            assert "fuzz.bin" in str(exc), f"the message must name the file: {exc}"
            dataset = None
        try:
            summary = inspect_archive(source, LIMITS)
        except DatasetError as exc:
            assert "fuzz.bin" in str(exc), f"the message must name the file: {exc}"
            summary = None
        assert source.read_bytes() == data and os.listdir(tmp) == ["fuzz.bin"], "nothing may be written"

    if dataset is not None:
        assert dataset.classes and all(c.images for c in dataset.classes)
        for cls in dataset.classes:
            for item in cls.images:
                assert item.open().size == (item.width, item.height)
        # The cheap check passes whatever the full read passes, counting at least as many images.
        assert summary is not None, "inspect_archive refused what load_dataset accepted"
        assert summary.class_names == dataset.class_names()
        for cls in dataset.classes:
            assert summary.image_files[cls.name] >= len(cls.images)


@given(mangled_archives())
def test_a_mangled_archive_loads_cleanly_or_raises_a_dataset_error(data: bytes) -> None:
    _check(data)


@given(raw_archives)
def test_random_bytes_behind_a_format_magic_raise_a_dataset_error_or_load(data: bytes) -> None:
    _check(data)


def test_the_unmangled_seeds_load() -> None:
    # The fuzzing starts from good archives: if these did not load, it would fuzz only error paths.
    for data in SEEDS:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "seed"
            source.write_bytes(data)
            assert load_dataset(source, LIMITS).class_names() == ["cat", "dog"]
