"""Concepts learned by the published Diff-Mix code, as diffii Concepts.

Its layout: `learned_embeds*.bin` (or `.safetensors`), a mapping placeholder -> embedding with one
placeholder per class named `<Class_name>` (the class name, spaces as `_`), and
`pytorch_lora_weights.safetensors`, diffusers' LoRA file for the UNet."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers.utils import convert_unet_state_dict_to_peft
from safetensors.torch import load_file

from diffii_core.denoising.prompts import class_prompt_name, placeholder_tokens
from diffii_core.errors import ArtifactError
from diffii_core.learning.concepts import Concepts

LORA_FILE = "pytorch_lora_weights.safetensors"


def is_published_layout(directory: Path) -> bool:
    return (directory / LORA_FILE).exists() or bool(_embedding_files(directory))


def _embedding_files(directory: Path) -> list[Path]:
    files = [p for p in directory.glob("learned_embeds*") if p.suffix in (".bin", ".safetensors")]

    def step(path: Path) -> int:
        found = re.search(r"(\d+)", path.stem)
        return int(found.group(1)) if found else 1 << 62  # "learned_embeds.bin": the final one

    return sorted(files, key=step)


def published_placeholder(name: str) -> str:
    return f"<{name.replace(' ', '_')}>"


def import_published(
    directory: Path, class_names: list[str], metaclass: str, class_prompts: Mapping[str, str] | None = None
) -> Concepts:
    """The last saved embeddings and the LoRA of a published run, mapped onto our classes by name
    (the folder name or its readable form). Names every class it cannot find."""
    files = _embedding_files(directory)
    if not files or not (directory / LORA_FILE).exists():
        raise ArtifactError(
            f"{directory} is not a published Diff-Mix concepts folder: "
            f"it needs learned_embeds*.bin and {LORA_FILE}"
        )
    try:
        path = files[-1]
        raw = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        lora_raw = load_file(str(directory / LORA_FILE))
    except (OSError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"published concepts in {directory} are unreadable: {exc}") from exc
    embeddings, tokens, missing = {}, {}, []
    for index, folder in enumerate(class_names):
        readable = class_prompt_name(folder, class_prompts)
        candidates = [published_placeholder(folder), published_placeholder(readable)]
        found = next((c for c in candidates if c in raw), None)
        if found is None:
            missing.append(folder)
            continue
        token = placeholder_tokens(index, 1)[0]
        tokens[folder] = [token]
        embeddings[token] = raw[found].detach().float().reshape(-1).clone()
    if missing:
        known = sorted(raw)[:5]
        raise ArtifactError(
            f"published concepts in {directory} have no embedding for classes {missing[:5]} "
            f"(they hold {known}{'...' if len(raw) > 5 else ''})"
        )
    lora = {
        k.removeprefix("unet."): v.float()
        for k, v in convert_unet_state_dict_to_peft(dict(lora_raw)).items()
        if k.startswith("unet.") or not k.startswith("text_encoder.")
    }
    ranks = {v.shape[0] for k, v in lora.items() if "lora_A" in k}
    if len(ranks) != 1:
        raise ArtifactError(f"{directory / LORA_FILE} is not a diffusers UNet LoRA of one rank: {ranks}")
    return Concepts(
        class_names=list(class_names),
        tokens=tokens,
        embeddings=embeddings,
        lora=lora,
        lora_rank=ranks.pop(),
        metaclass=metaclass,
        model={},
        recipe={"source": f"published Diff-Mix ({path.name})"},
    )
