"""Members -> classes: the wrapper folder removed, noise dropped, each file a class image or a skip.

Rules (also in docs/ARCHITECTURE.md and the "Dataset in" section of the service spec):

- A class is a top-level folder holding at least one file; images nested deeper belong to it.
  Class index = position in ``sorted(class names)``, as torchvision's ImageFolder does.
- Names are NFC-normalised; zip names may be UTF-8 (flagged or not) or cp437.
- If every member lies under one single top-level folder that holds only folders, that folder is
  a wrapper (the user zipped the dataset's parent folder) and is removed.
- ``__MACOSX``, ``Thumbs.db``, ``desktop.ini`` and dot-files are operating-system noise: ignored and
  reported nowhere. Other non-image files, files outside any class folder and duplicate names are
  skipped and reported, and so are class folders whose name holds a control character.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffii_core.dataset.limits import DatasetLimits
from diffii_core.dataset.members import Member
from diffii_core.dataset.model import Skipped
from diffii_core.dataset.names import IMAGE_SUFFIXES, control_character, is_noise, suffix
from diffii_core.dataset.report import no_class_message
from diffii_core.errors import DatasetError

_DUPLICATE = "same name as an earlier member (after Unicode NFC normalisation); the first is kept"


@dataclass
class Layout:
    class_names: list[str]
    files: dict[str, list[tuple[str, Member]]]  # class -> (class-relative path "<class>/...", member)
    skipped: list[Skipped]
    class_skips: dict[str, list[Skipped]]

    def skip(self, class_name: str, member: Member, reason: str) -> None:
        entry = Skipped(member.source_path, reason)
        self.skipped.append(entry)
        self.class_skips.setdefault(class_name, []).append(entry)


def arrange(members: list[Member], limits: DatasetLimits, label: str) -> Layout:
    members = [m for m in members if not is_noise(m.parts)]
    skipped = [Skipped(m.source_path, m.skip_reason) for m in members if m.skip_reason is not None]
    members = [m for m in members if m.skip_reason is None]
    files = [m for m in members if not m.is_dir]
    strip = 0
    if files and len({m.parts[0] for m in members}) == 1 and all(len(m.parts) >= 3 for m in files):
        strip = 1

    layout = Layout(class_names=[], files={}, skipped=skipped, class_skips={})
    seen: set[str] = set()
    for member in files:
        parts = member.parts[strip:]
        if len(parts) == 1:
            skipped.append(Skipped(member.source_path, "file at the top level, outside any class folder"))
            continue
        name = parts[0]
        if (found := control_character(name)) is not None:
            # It would become a prompt word and a metadata.jsonl label.
            skipped.append(Skipped(member.source_path, f"class folder name {name!r} has a {found}"))
            continue
        images = layout.files.setdefault(name, [])
        rel = "/".join(parts)
        if rel in seen:
            layout.skip(name, member, _DUPLICATE)
        elif suffix(parts[-1]) not in IMAGE_SUFFIXES:
            kind = suffix(parts[-1]) or "no suffix"
            layout.skip(
                name, member, f"not an image file ({kind}); accepted: {', '.join(sorted(IMAGE_SUFFIXES))}"
            )
        else:
            images.append((rel, member))
        seen.add(rel)

    # Folders with no file at all are left out, but said, so a missing class is not a mystery.
    for member in members:
        parts = member.parts[strip:]
        if (
            member.is_dir
            and len(parts) == 1
            and parts[0] not in layout.files
            and not control_character(parts[0])
        ):
            skipped.append(Skipped(member.source_path + "/", "empty folder, not used as a class"))

    if not layout.files:
        raise DatasetError(no_class_message(label, members, skipped))
    if len(layout.files) > limits.max_classes:
        raise DatasetError(
            f"{label!r} has {len(layout.files):,} class folders, over the limit of {limits.max_classes:,} "
            "(max_classes)"
        )
    layout.class_names = sorted(layout.files)
    layout.files = {n: sorted(layout.files[n], key=lambda pair: pair[0]) for n in layout.class_names}
    return layout
