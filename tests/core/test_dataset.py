"""diffii_core.dataset: every source format, names, layout, limits, rejections and image decoding.

Archives are built for real in tmp_path (some patched byte by byte to forge what tools never write).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffii_core.dataset import (
    DatasetLimits,
    ImageItem,
    Skipped,
    detect_format,
    inspect_archive,
    load_dataset,
)
from diffii_core.dataset.members import read_capped
from diffii_core.errors import DatasetError

Entries = dict[str, bytes]


# ----------------------------------------------------------------------------------------------
# Builders


def png(size: tuple[int, int] = (8, 6), colour: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def encoded(fmt: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 240)).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(path: Path, entries: Entries, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, entries: Entries, compressed: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if compressed else "w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_folder(root: Path, entries: Entries) -> Path:
    for name, data in entries.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def make_source(kind: str, tmp_path: Path, entries: Entries) -> Path:
    if kind == "folder":
        return make_folder(tmp_path / "ds", entries)
    if kind == "zip":
        return make_zip(tmp_path / "ds.zip", entries)
    if kind == "tar":
        return make_tar(tmp_path / "ds.tar", entries)
    return make_tar(tmp_path / "ds.tar.gz", entries, compressed=True)


def patch(path: Path, old: bytes, new: bytes, count: int) -> None:
    data = path.read_bytes()
    assert data.count(old) == count, f"{old!r} found {data.count(old)} times"
    path.write_bytes(data.replace(old, new))


def tar_with(path: Path, info: tarfile.TarInfo, extra: Entries | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in (extra or {"cat/a.png": png()}).items():
            file_info = tarfile.TarInfo(name)
            file_info.size = len(data)
            tf.addfile(file_info, io.BytesIO(data))
        tf.addfile(info)
    return path


def load_error(source: Path, limits: DatasetLimits | None = None) -> str:
    with pytest.raises(DatasetError) as caught:
        load_dataset(source, limits or DatasetLimits())
    return str(caught.value)


ALL_KINDS = ["folder", "zip", "tar", "tar.gz"]
BASIC: Entries = {
    "cat/a.png": png(),
    "cat/b.jpg": encoded("JPEG"),
    "dog/c.webp": encoded("WEBP"),
    "dog/d.BMP": encoded("BMP"),
    "dog/e.JPEG": encoded("JPEG", (5, 7)),
}


# ----------------------------------------------------------------------------------------------
# Formats and layout


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_source_format_gives_the_same_dataset(tmp_path: Path, kind: str) -> None:
    ds = load_dataset(make_source(kind, tmp_path, BASIC))

    assert ds.class_names() == ["cat", "dog"]
    assert [c.index for c in ds.classes] == [0, 1]
    assert [[i.path for i in c.images] for c in ds.classes] == [
        ["cat/a.png", "cat/b.jpg"],
        ["dog/c.webp", "dog/d.BMP", "dog/e.JPEG"],
    ]
    assert ds.images == 5
    assert ds.skipped == []
    item = ds.classes[1].images[2]
    assert (item.class_name, item.width, item.height) == ("dog", 5, 7)
    assert item.data == BASIC["dog/e.JPEG"]
    assert item.open().mode == "RGB" and item.open().size == (5, 7)


@pytest.mark.parametrize(
    ("kind", "file_name", "expected"),
    [("zip", "upload.tar", "zip"), ("tar.gz", "upload.bin", "tar.gz"), ("tar", "upload.zip", "tar")],
)
def test_format_is_detected_by_content_not_suffix(
    tmp_path: Path, kind: str, file_name: str, expected: str
) -> None:
    source = make_source(kind, tmp_path, BASIC)
    disguised = source.rename(tmp_path / file_name)

    assert detect_format(disguised) == expected
    assert load_dataset(disguised).class_names() == ["cat", "dog"]


def test_folder_is_detected_as_folder(tmp_path: Path) -> None:
    assert detect_format(make_folder(tmp_path / "d.zip", BASIC)) == "folder"


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"just some notes, not an archive\n" * 40, "accepted: .zip, .tar, .tar.gz"),
        (b"Rar!\x1a\x07\x00" + bytes(600), "RAR archive"),
        (b"BZh91AY&SY" + bytes(600), "bzip2"),
    ],
)
def test_a_file_that_is_not_an_archive_is_refused_by_name(tmp_path: Path, content: bytes, hint: str) -> None:
    source = tmp_path / "holiday photos.zip"
    source.write_bytes(content)

    message = load_error(source)

    assert "'holiday photos.zip' is not a zip or tar archive" in message
    assert hint in message


def test_an_empty_file_is_not_an_archive(tmp_path: Path) -> None:
    source = tmp_path / "empty.tar"
    source.write_bytes(b"")
    assert "'empty.tar' is an empty file" in load_error(source)


def test_gzip_without_a_tar_inside_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "notes.tar.gz"
    source.write_bytes(gzip.compress(b"plain text, no tar headers here " * 50))
    assert "'notes.tar.gz' is a gzip file that does not hold a tar archive" in load_error(source)


def test_truncated_tar_gz_is_refused_as_damaged(tmp_path: Path) -> None:
    source = make_tar(
        tmp_path / "cut.tar.gz", {"cat/a.png": png((64, 64)), "cat/b.txt": os.urandom(5000)}, True
    )
    source.write_bytes(source.read_bytes()[:-300])
    assert "'cut.tar.gz' is a damaged or truncated tar.gz archive" in load_error(source)


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    assert "dataset 'nowhere.zip' does not exist" in load_error(tmp_path / "nowhere.zip")


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "folder"])
def test_an_empty_source_has_no_class(tmp_path: Path, kind: str) -> None:
    source = make_source(kind, tmp_path, {})
    if kind == "folder":
        source.mkdir()
    assert "no class folder with images" in load_error(source)


def test_only_root_files_means_no_class_and_says_which(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "flat.zip", {"a.png": png(), "b.png": png(), "notes.txt": b"x"})
    message = load_error(source)
    assert "'flat.zip' has no class folder with images" in message
    assert "'a.png'" in message and "'notes.txt'" in message


def test_class_index_is_the_position_in_python_sorted_names(tmp_path: Path) -> None:
    names = ["b", "a", "B", "é", "Z", "10", "9", "_x"]
    ds = load_dataset(make_zip(tmp_path / "d.zip", {f"{n}/i.png": png() for n in names}))

    assert ds.class_names() == sorted(names) == ["10", "9", "B", "Z", "_x", "a", "b", "é"]
    assert [(c.index, c.name) for c in ds.classes] == list(enumerate(sorted(names)))
    assert all(c.images[0].class_name == c.name for c in ds.classes)


def test_images_nested_deeper_belong_to_their_top_folder(tmp_path: Path) -> None:
    ds = load_dataset(
        make_tar(tmp_path / "d.tar", {"cat/2020/x/a.png": png(), "cat/b.png": png(), "dog/sub/c.png": png()})
    )
    assert ds.class_names() == ["cat", "dog"]
    assert [i.path for i in ds.classes[0].images] == ["cat/2020/x/a.png", "cat/b.png"]
    assert [i.path for i in ds.classes[1].images] == ["dog/sub/c.png"]


def test_tar_with_dot_slash_prefix_and_directory_entries(tmp_path: Path) -> None:
    # What `tar -C dataset -cf d.tar .` writes.
    folder = make_folder(tmp_path / "src", {"cat/a.png": png(), "dog/b.png": png()})
    source = tmp_path / "d.tar"
    with tarfile.open(source, "w") as tf:
        tf.add(folder, arcname=".")
    ds = load_dataset(source)
    assert ds.class_names() == ["cat", "dog"]
    assert ds.classes[0].images[0].path == "cat/a.png"


def test_unicode_class_names_are_kept_and_nfc_normalised(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "café au lait")
    names = [nfd, "v1.2 release", "鳥 bird", "Ωmega"]
    ds = load_dataset(make_zip(tmp_path / "u.zip", {f"{n}/{n}.png": png() for n in names}))

    expected = sorted(unicodedata.normalize("NFC", n) for n in names)
    assert ds.class_names() == expected
    assert "café au lait" in ds.class_names() and nfd not in ds.class_names()
    cafe = ds.classes[expected.index("café au lait")]
    assert cafe.images[0].path == "café au lait/café au lait.png"


def test_zip_names_in_cp437_are_decoded(tmp_path: Path) -> None:
    # Old Windows tools write names in the DOS code page without the UTF-8 flag: 0x82 is "é".
    source = make_zip(tmp_path / "dos.zip", {"cafX/a.png": png(), "dog/b.png": png()}, zipfile.ZIP_STORED)
    patch(source, b"cafX/", b"caf\x82/", count=2)
    assert load_dataset(source).class_names() == ["café", "dog"]


def test_zip_names_in_utf8_without_the_flag_are_decoded(tmp_path: Path) -> None:
    placeholder = b"XXXXXX"  # as many bytes as the UTF-8 name
    real = "猫 ü".encode()
    assert len(real) == len(placeholder)
    source = make_zip(tmp_path / "u8.zip", {"XXXXXX/a.png": png()}, zipfile.ZIP_STORED)
    patch(source, placeholder, real, count=2)
    assert load_dataset(source).class_names() == ["猫 ü"]


def test_zip_unicode_path_extra_field_wins_over_the_header_name(tmp_path: Path) -> None:
    header_name = b"?/a.png"
    utf8_name = "星/a.png".encode()
    extra = struct.pack("<HHBI", 0x7075, 5 + len(utf8_name), 1, zlib.crc32(header_name)) + utf8_name
    source = tmp_path / "extra.zip"
    with zipfile.ZipFile(source, "w") as zf:
        info = zipfile.ZipInfo(header_name.decode())
        info.extra = extra
        zf.writestr(info, png())
    assert load_dataset(source).class_names() == ["星"]


def test_zip_backslash_separators_are_folders(tmp_path: Path) -> None:
    ds = load_dataset(make_zip(tmp_path / "win.zip", {"cat\\a.png": png(), "dog\\sub\\b.png": png()}))
    assert ds.class_names() == ["cat", "dog"]
    assert ds.classes[1].images[0].path == "dog/sub/b.png"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_single_wrapper_folder_is_unwrapped(tmp_path: Path, kind: str) -> None:
    entries = {
        "my data/cat/a.png": png(),
        "my data/dog/b.png": png(),
        "my data/.DS_Store": b"\0",
        "__MACOSX/my data/._cat": b"\0",
    }
    ds = load_dataset(make_source(kind, tmp_path, entries))
    assert ds.class_names() == ["cat", "dog"]
    assert ds.classes[0].images[0].path == "cat/a.png"
    assert ds.skipped == []


def test_a_wrapper_holding_a_file_is_not_unwrapped(tmp_path: Path) -> None:
    entries = {"data/cat/a.png": png(), "data/dog/b.png": png(), "data/README.txt": b"hi"}
    ds = load_dataset(make_zip(tmp_path / "d.zip", entries))
    assert ds.class_names() == ["data"]
    assert [i.path for i in ds.classes[0].images] == ["data/cat/a.png", "data/dog/b.png"]
    assert [s.path for s in ds.skipped] == ["data/README.txt"]


def test_a_single_class_is_not_mistaken_for_a_wrapper(tmp_path: Path) -> None:
    ds = load_dataset(make_zip(tmp_path / "d.zip", {"cat/a.png": png(), "cat/b.png": png()}))
    assert ds.class_names() == ["cat"]
    assert ds.classes[0].images[1].path == "cat/b.png"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_noise_is_ignored_and_other_files_are_skipped_with_a_reason(tmp_path: Path, kind: str) -> None:
    entries = {
        "cat/a.png": png(),
        "cat/.hidden.png": b"junk",
        "cat/._a.png": b"AppleDouble",
        "cat/Thumbs.db": b"junk",
        ".git/config": b"[core]",
        "__MACOSX/cat/._a.png": b"junk",
        ".DS_Store": b"junk",
        "cat/notes.txt": b"notes",
        "cat/scan.tiff": b"II*\0",
        "cat/LICENSE": b"MIT",
        "README.md": b"# my dataset",
    }
    ds = load_dataset(make_source(kind, tmp_path, entries))

    assert ds.class_names() == ["cat"]
    assert [i.path for i in ds.classes[0].images] == ["cat/a.png"]
    reasons = {s.path: s.reason for s in ds.skipped}
    assert set(reasons) == {"cat/notes.txt", "cat/scan.tiff", "cat/LICENSE", "README.md"}
    assert reasons["cat/notes.txt"].startswith("not an image file (.txt)")
    assert "(.tiff)" in reasons["cat/scan.tiff"]
    assert "(no suffix)" in reasons["cat/LICENSE"]
    assert reasons["README.md"] == "file at the top level, outside any class folder"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_class_folder_named_with_a_control_character_is_skipped_with_its_reason(
    tmp_path: Path, kind: str
) -> None:
    entries = {"cat/a.png": png(), "bad\x1bname/b.png": png(), "two\nlines/c.png": png()}
    ds = load_dataset(make_source(kind, tmp_path, entries))

    assert ds.class_names() == ["cat"]
    reasons = {s.path: s.reason for s in ds.skipped}
    assert set(reasons) == {"bad\x1bname/b.png", "two\nlines/c.png"}
    assert "control character U+001B at position 3" in reasons["bad\x1bname/b.png"]
    assert "control character U+000A" in reasons["two\nlines/c.png"]


def test_an_empty_folder_is_reported_not_made_a_class(tmp_path: Path) -> None:
    source = tmp_path / "d.zip"
    with zipfile.ZipFile(source, "w") as zf:
        zf.writestr("cat/a.png", png())
        zf.writestr("empty/", b"")
    ds = load_dataset(source)
    assert ds.class_names() == ["cat"]
    assert ds.skipped == [Skipped("empty/", "empty folder, not used as a class")]


def test_names_equal_after_nfc_keep_the_first_and_skip_the_second(tmp_path: Path) -> None:
    nfc, nfd = "é/a.png", unicodedata.normalize("NFD", "é/a.png")
    assert nfc != nfd
    first, second = png(colour=(255, 0, 0)), png(colour=(0, 0, 255))
    ds = load_dataset(make_zip(tmp_path / "d.zip", {nfc: first, nfd: second}))

    assert ds.class_names() == ["é"]
    assert [i.data for i in ds.classes[0].images] == [first]
    assert len(ds.skipped) == 1 and ds.skipped[0].path == nfc
    assert "same name as an earlier member" in ds.skipped[0].reason


def test_manifest_shape(tmp_path: Path) -> None:
    entries = {"b/x.png": png(), "a/y.png": png(), "a/z.png": png(), "a/n.txt": b"n"}
    ds = load_dataset(make_zip(tmp_path / "d.zip", entries))
    assert ds.manifest() == {
        "classes": [{"name": "a", "images": 2}, {"name": "b", "images": 1}],
        "images": 3,
        "skipped": [
            {
                "path": "a/n.txt",
                "reason": "not an image file (.txt); accepted: .bmp, .jpeg, .jpg, .png, .webp",
            }
        ],
    }


def test_load_writes_nothing(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "f", BASIC)
    archive = make_zip(tmp_path / "d.zip", BASIC)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(tmp_path.rglob("*"))}

    before = snapshot()
    load_dataset(folder)
    load_dataset(archive)
    inspect_archive(archive)
    assert snapshot() == before


def test_inspect_archive_lists_classes_without_decoding(tmp_path: Path) -> None:
    entries = {
        "cat/a.png": png(),
        "cat/cut.png": png()[:40],  # a PNG signature, but truncated: only decoding finds out
        "cat/text.png": b"not a png",  # no image signature: the cheap check finds out
        "dog/b.png": png(),
        "x.txt": b"x",
    }
    summary = inspect_archive(make_tar(tmp_path / "d.tar.gz", entries, compressed=True))

    assert summary.format == "tar.gz"
    assert summary.class_names == ["cat", "dog"]
    assert summary.image_files == {"cat": 2, "dog": 1}
    assert {s.path: s.reason for s in summary.skipped} == {
        "cat/text.png": "not a decodable JPEG, PNG, WebP or BMP image",
        "x.txt": "file at the top level, outside any class folder",
    }
    loaded = load_dataset(tmp_path / "d.tar.gz")
    assert loaded.manifest()["classes"][0] == {"name": "cat", "images": 1}
    assert {s.path for s in loaded.skipped} == {"cat/cut.png", "cat/text.png", "x.txt"}


@pytest.mark.parametrize("kind", ["zip", "folder", "tar"])
def test_inspect_archive_refuses_a_class_whose_files_have_no_image_signature(
    tmp_path: Path, kind: str
) -> None:
    entries = {"cat/a.png": png(), "dog/a.jpg": b"GIF89a pretending", "dog/b.webp": b"RIFF0000WAVE"}
    with pytest.raises(DatasetError, match="class 'dog' has no usable image") as caught:
        inspect_archive(make_source(kind, tmp_path, entries))
    assert "dog/a.jpg: not a decodable" in str(caught.value)


def test_inspect_archive_applies_the_structural_checks(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"'\.\./evil\.png' contains '\.\.'"):
        inspect_archive(make_zip(tmp_path / "d.zip", {"cat/a.png": png(), "../evil.png": png()}))
    with pytest.raises(DatasetError, match="class 'dog' has no usable image"):
        inspect_archive(make_zip(tmp_path / "e.zip", {"cat/a.png": png(), "dog/a.txt": b"t"}))
    with pytest.raises(DatasetError, match="uses bzip2 compression"):
        inspect_archive(make_zip(tmp_path / "f.zip", {"cat/a.png": png()}, zipfile.ZIP_BZIP2))


# ----------------------------------------------------------------------------------------------
# Unsafe members


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../evil.png", "contains '..' (path traversal)"),
        ("cat/../../evil.png", "contains '..' (path traversal)"),
        ("cat/../dog/a.png", "contains '..' (path traversal)"),
        ("..\\evil.png", "contains '..' (path traversal)"),
        ("cat\\..\\..\\evil.png", "contains '..' (path traversal)"),
        ("/etc/cat/a.png", "has an absolute path"),
        ("\\\\server\\share\\cat\\a.png", "has an absolute path"),
        ("C:/cat/a.png", "starts with a drive letter"),
        ("c:cat/a.png", "starts with a drive letter"),
    ],
)
def test_zip_path_traversal_is_refused(tmp_path: Path, name: str, says: str) -> None:
    source = make_zip(tmp_path / "evil.zip", {"cat/ok.png": png(), name: png()})
    message = load_error(source)
    assert f"'evil.zip': member {name!r} {says}" in message


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../evil.png", "contains '..'"),
        ("/abs/cat/a.png", "has an absolute path"),
        ("cat/../../x.png", "'..'"),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_tar_path_traversal_is_refused(tmp_path: Path, name: str, says: str, compressed: bool) -> None:
    source = make_tar(tmp_path / "evil.tar", {"cat/ok.png": png(), name: png()}, compressed)
    message = load_error(source)
    assert f"member {name!r}" in message and says in message


def test_zip_name_with_nul_byte_is_refused(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "nul.zip", {"cat/a.pngX.txt": png()}, zipfile.ZIP_STORED)
    patch(source, b"a.pngX.txt", b"a.png\x00.txt", count=2)
    assert "has a NUL character in its name" in load_error(source)


def test_tar_symlink_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("cat/passwd.png")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    message = load_error(tar_with(tmp_path / "l.tar", link))
    assert "member 'cat/passwd.png' is a symbolic link (to '/etc/passwd')" in message


def test_tar_hardlink_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("cat/b.png")
    link.type = tarfile.LNKTYPE
    link.linkname = "cat/a.png"
    assert "member 'cat/b.png' is a hard link (to 'cat/a.png')" in load_error(
        tar_with(tmp_path / "h.tar", link)
    )


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes) -> None:
    device = tarfile.TarInfo("cat/zero.png")
    device.type = kind
    assert "member 'cat/zero.png' is a device or FIFO" in load_error(tar_with(tmp_path / "d.tar", device))


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "l.zip"
    with zipfile.ZipFile(source, "w") as zf:
        zf.writestr("cat/a.png", png())
        info = zipfile.ZipInfo("cat/b.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    assert "'l.zip': member 'cat/b.png' is a symbolic link" in load_error(source)


def test_folder_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    outside = make_folder(tmp_path / "outside", {"secret.png": png()})
    root = make_folder(tmp_path / "ds", {"cat/a.png": png()})
    (root / "cat" / "b.png").symlink_to(outside / "secret.png")
    assert "'cat/b.png' is a symbolic link pointing outside the dataset folder" in load_error(root)

    (root / "cat" / "b.png").unlink()
    (root / "dog").symlink_to(outside, target_is_directory=True)
    assert "'dog' is a symbolic link pointing outside" in load_error(root)


def test_folder_symlinks_inside_are_read_for_files_and_not_followed_for_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat/a.png": png(), "dog/b.png": png()})
    (root / "dog" / "same.png").symlink_to(root / "cat" / "a.png")
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)

    ds = load_dataset(root)
    assert [i.path for i in ds.classes[1].images] == ["dog/b.png", "dog/same.png"]
    assert ds.skipped == [Skipped("cat/loop", "symbolic link to a folder inside the dataset, not followed")]


def test_folder_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat/a.png": png()})
    os.mkfifo(root / "cat" / "pipe.png")
    assert "'cat/pipe.png' is a device, FIFO or socket" in load_error(root)


def test_encrypted_zip_member_is_refused(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "pw.zip", {"cat/a.png": png()}, zipfile.ZIP_STORED)
    data = bytearray(source.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flag_offset] |= 0x1
    source.write_bytes(bytes(data))
    assert "member 'cat/a.png' is encrypted" in load_error(source)


def test_bzip2_zip_member_is_refused(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "bz.zip", {"cat/a.png": png()}, zipfile.ZIP_BZIP2)
    assert "member 'cat/a.png' uses bzip2 compression" in load_error(source)


# ----------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_member_count_limit(tmp_path: Path, kind: str) -> None:
    entries = {f"cat/{i}.png": png() for i in range(6)}
    source = make_source(kind, tmp_path, entries)
    # The folder counts the class folder as an entry too.
    message = load_error(source, DatasetLimits(max_members=5))
    assert "max_members" in message and "5" in message
    assert load_dataset(source, DatasetLimits(max_members=7)).images == 6


def test_zip_member_count_is_checked_before_parsing_the_directory(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "many.zip", {f"cat/{i}.png": png() for i in range(12)})
    assert "'many.zip' has 12 entries, over the limit of 10 (max_members)" in load_error(
        source, DatasetLimits(max_members=10)
    )


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_member_size_limit(tmp_path: Path, kind: str) -> None:
    entries = {"cat/a.png": png(), "cat/big.png": bytes(2000)}
    message = load_error(make_source(kind, tmp_path, entries), DatasetLimits(max_member_bytes=1000))
    assert "member 'cat/big.png' is 2,000 bytes uncompressed, over the limit of 1,000 bytes" in message
    assert "max_member_bytes" in message


def test_zip_whose_header_understates_the_size_is_refused(tmp_path: Path) -> None:
    # The directory says 1,000 bytes; the deflate stream holds 200,000.
    source = make_zip(tmp_path / "liar.zip", {"cat/a.png": png(), "cat/b.png": bytes(200_000)})
    data = bytearray(source.read_bytes())
    true_size = struct.pack("<I", 200_000)
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = -1
        while (at := data.find(signature, at + 1)) >= 0:
            if data[at + size_offset : at + size_offset + 4] == true_size:
                data[at + size_offset : at + size_offset + 4] = struct.pack("<I", 1000)
    source.write_bytes(bytes(data))
    with zipfile.ZipFile(source) as zf:
        assert zf.getinfo("cat/b.png").file_size == 1000

    message = load_error(source, DatasetLimits(max_member_bytes=10_000))
    assert "'liar.zip': member 'cat/b.png' is damaged and cannot be read" in message


def test_read_capped_stops_one_byte_past_the_limit() -> None:
    stream = io.BytesIO(bytes(10_000_000))
    assert read_capped(stream, 1000) is None
    assert stream.tell() == 1001  # never read further than needed to prove the excess

    exact = io.BytesIO(b"x" * 1000)
    assert read_capped(exact, 1000) == b"x" * 1000


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_total_uncompressed_limit(tmp_path: Path, kind: str) -> None:
    entries = {f"cat/{i}.png": bytes(300_000) for i in range(4)}
    source = make_source(kind, tmp_path, entries)
    if kind in ("zip", "tar.gz"):
        assert source.stat().st_size < 100_000  # compressible: a small zip bomb
    limits = DatasetLimits(max_member_bytes=400_000, max_total_bytes=1_000_000)
    message = load_error(source, limits)
    assert "more than 1,000,000 bytes uncompressed (max_total_bytes)" in message
    assert "counted 1,200,000" in message


def test_tar_gz_stream_is_cut_off_past_the_total_limit(tmp_path: Path) -> None:
    # A pax header is read into memory whatever its size, before any member is counted.
    source = tmp_path / "pax.tar.gz"
    with tarfile.open(source, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("cat/a.png")
        data = png()
        info.size = len(data)
        info.pax_headers = {"comment": "z" * 500_000}
        tf.addfile(info, io.BytesIO(data))
    assert source.stat().st_size < 10_000
    message = load_error(source, DatasetLimits(max_total_bytes=10_000, max_members=2))
    assert "'pax.tar.gz' decompresses to more than" in message and "max_total_bytes" in message
    assert load_dataset(source).images == 1  # within default limits it is fine


def test_archive_size_limit(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "d.zip", BASIC)
    size = source.stat().st_size
    message = load_error(source, DatasetLimits(max_archive_bytes=size - 1))
    assert (
        f"archive 'd.zip' is {size:,} bytes, over the limit of {size - 1:,} bytes (max_archive_bytes)"
        in message
    )
    assert load_dataset(source, DatasetLimits(max_archive_bytes=size)).images == 5


def test_class_count_limit(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "d.zip", {f"c{i}/a.png": png() for i in range(3)})
    assert "'d.zip' has 3 class folders, over the limit of 2 (max_classes)" in load_error(
        source, DatasetLimits(max_classes=2)
    )


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_members must be a positive integer"):
        DatasetLimits(max_members=0)


# ----------------------------------------------------------------------------------------------
# Images: skipped files, empty classes, conversion


def test_undecodable_files_are_skipped_and_reported(tmp_path: Path) -> None:
    good = png((16, 16))
    jpeg = encoded("JPEG", (64, 64))
    entries = {
        "cat/good.png": good,
        "cat/text.png": b"this is not a png",
        "cat/cut.jpg": jpeg[: len(jpeg) // 2],
        "cat/gif.png": encoded("GIF"),  # a real image, but not an accepted format
        "dog/ok.webp": encoded("WEBP"),
    }
    ds = load_dataset(make_zip(tmp_path / "d.zip", entries))

    assert [i.path for i in ds.classes[0].images] == ["cat/good.png"]
    reasons = {s.path: s.reason for s in ds.skipped}
    assert set(reasons) == {"cat/text.png", "cat/cut.jpg", "cat/gif.png"}
    assert reasons["cat/text.png"] == "not a decodable JPEG, PNG, WebP or BMP image"
    assert reasons["cat/gif.png"] == "not a decodable JPEG, PNG, WebP or BMP image"
    assert reasons["cat/cut.jpg"].startswith("damaged image, cannot be decoded")
    assert ds.manifest()["skipped"][0] == {"path": "cat/cut.jpg", "reason": reasons["cat/cut.jpg"]}


def test_an_image_with_the_wrong_suffix_is_judged_by_content(tmp_path: Path) -> None:
    ds = load_dataset(make_zip(tmp_path / "d.zip", {"cat/actually_png.jpg": png((3, 4))}))
    assert (ds.classes[0].images[0].width, ds.classes[0].images[0].height) == (3, 4)


def test_an_image_over_the_pixel_limit_is_skipped(tmp_path: Path) -> None:
    entries = {"cat/small.png": png((10, 10)), "cat/big.png": png((11, 10))}
    ds = load_dataset(make_zip(tmp_path / "d.zip", entries), DatasetLimits(max_pixels=100))
    assert [i.path for i in ds.classes[0].images] == ["cat/small.png"]
    assert ds.skipped == [
        Skipped("cat/big.png", "image is 11x10 = 110 pixels, over the limit of 100 pixels (max_pixels)")
    ]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: cheap to make, ruinous to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    entries = {"cat/ok.png": png(), "cat/huge.png": _png_header_only(8000, 6000)}
    ds = load_dataset(make_zip(tmp_path / "d.zip", entries))
    assert ds.skipped == [
        Skipped(
            "cat/huge.png",
            "image is 8000x6000 = 48,000,000 pixels, over the limit of 40,000,000 pixels (max_pixels)",
        )
    ]


def test_pillow_decompression_bomb_guard_is_a_skip_too(tmp_path: Path) -> None:
    entries = {"cat/ok.png": png(), "cat/bomb.png": _png_header_only(30_000, 30_000)}
    limits = DatasetLimits(max_pixels=10**12)  # an operator limit above Pillow's own
    ds = load_dataset(make_zip(tmp_path / "d.zip", entries), limits)
    assert [s.path for s in ds.skipped] == ["cat/bomb.png"]
    assert ds.skipped[0].reason.startswith("image is too large to decode safely")


def test_a_class_left_without_images_is_an_error_naming_it_and_why(tmp_path: Path) -> None:
    entries = {
        "cat/a.png": png(),
        "dog/broken.png": b"garbage",
        "dog/huge.png": png((20, 20)),
        "eel/notes.txt": b"no images here",
    }
    message = load_error(make_zip(tmp_path / "d.zip", entries), DatasetLimits(max_pixels=300))
    assert "class 'dog' has no usable image" in message
    assert "dog/broken.png: not a decodable JPEG, PNG, WebP or BMP image" in message
    assert "dog/huge.png: image is 20x20 = 400 pixels, over the limit of 300" in message
    assert "class 'eel' has no usable image (eel/notes.txt: not an image file (.txt)" in message
    assert "'cat'" not in message


def _item(data: bytes) -> ImageItem:
    return ImageItem(class_name="c", path="c/x", data=data, width=0, height=0)


def _save(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    image.putpixel((0, 0), 1)
    return _save(image, transparency=0)


def _grey16(value: int) -> bytes:
    return _save(Image.fromarray(np.full((4, 4), value, dtype=np.uint16)))


@pytest.mark.parametrize(
    ("data", "corner", "other"),
    [
        # Fully transparent red over white stays white, not red and not black.
        (_save(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), (255, 255, 255), (255, 255, 255)),
        (_save(Image.new("RGBA", (4, 4), (0, 0, 255, 255))), (0, 0, 255), (0, 0, 255)),
        (_save(Image.new("LA", (4, 4), (0, 0))), (255, 255, 255), (255, 255, 255)),
        (_palette_with_transparency(), (10, 200, 10), (255, 255, 255)),
        (_grey16(65535), (255, 255, 255), (255, 255, 255)),
        (_grey16(32896), (128, 128, 128), (128, 128, 128)),  # clipping would give white
        (_grey16(4096), (16, 16, 16), (16, 16, 16)),
        (_save(Image.new("L", (4, 4), 77)), (77, 77, 77), (77, 77, 77)),
        (_save(Image.new("1", (4, 4), 1), "BMP"), (255, 255, 255), (255, 255, 255)),
        (
            _save(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", quality=100),
            (255, 255, 255),
            (255, 255, 255),
        ),
    ],
    ids=[
        "rgba-clear",
        "rgba-opaque",
        "la-clear",
        "palette-transparency",
        "i16-max",
        "i16-mid",
        "i16-low",
        "l",
        "bilevel-bmp",
        "cmyk-jpeg",
    ],
)
def test_open_gives_rgb_for_every_mode(
    data: bytes, corner: tuple[int, int, int], other: tuple[int, int, int]
) -> None:
    image = _item(data).open()
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == corner
    assert image.getpixel((3, 3)) == other


def test_exif_orientation_is_applied_and_reflected_in_the_size(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _save(stored, "JPEG", exif=exif.tobytes(), quality=95)

    ds = load_dataset(make_zip(tmp_path / "d.zip", {"cat/photo.jpg": data}))
    item = ds.classes[0].images[0]
    upright = item.open()

    assert (item.width, item.height) == upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # red is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_open_returns_a_fresh_image_each_time(tmp_path: Path) -> None:
    item = (
        load_dataset(make_zip(tmp_path / "d.zip", {"cat/a.png": png((5, 5), (1, 2, 3))})).classes[0].images[0]
    )
    first = item.open()
    first.putpixel((0, 0), (9, 9, 9))
    assert item.open().getpixel((0, 0)) == (1, 2, 3)
