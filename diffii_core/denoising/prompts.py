"""Prompts, placeholder tokens and text encoding."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from diffii_core.models import LoadedModel


def placeholder_tokens(class_index: int, tokens_per_class: int) -> list[str]:
    """Named by class index, not class name: any Unicode class name maps to plain tokens, and a worker
    reuses the same tokenizer entries from one job to the next."""
    return [f"<diffii-c{class_index}-t{k}>" for k in range(tokens_per_class)]


def concept_prompt(tokens: list[str], metaclass: str, suffix: str | None = None) -> str:
    text = f"a photo of a {' '.join(tokens)} {metaclass}"
    return f"{text} {suffix}" if suffix else text


def name_prompt(class_name: str, metaclass: str, suffix: str | None = None) -> str:
    """The prompt of methods that use the base model: the plain class name."""
    text = f"a photo of a {class_name} {metaclass}"
    return f"{text} {suffix}" if suffix else text


def readable_name(folder: str) -> str:
    """A class folder name as words: "001.Black_footed_Albatross" -> "Black footed Albatross"."""
    text = re.sub(r"^\s*\d+\s*[._\-\s]\s*", "", folder)
    text = " ".join(text.replace("_", " ").split())
    return text or " ".join(folder.replace("_", " ").split()) or folder


def class_prompt_name(folder: str, names: Mapping[str, str] | None = None) -> str:
    """The user's name for the class when given, else the folder's readable name."""
    if names and folder in names:
        return names[folder]
    return readable_name(folder)


def ensure_tokens(model: LoadedModel, tokens: list[str]) -> list[int]:
    """Add the placeholder tokens to the tokenizer and grow the embedding matrix to fit; return their ids."""
    tokenizer = model.tokenizer
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    size = len(tokenizer)
    embeddings = model.text_encoder.get_input_embeddings()
    if embeddings.weight.shape[0] < size:
        # mean_resizing draws new rows from the global RNG; our rows are set explicitly right after.
        model.text_encoder.resize_token_embeddings(size, mean_resizing=False)
        model.text_encoder.get_input_embeddings().requires_grad_(False)
    return tokenizer.convert_tokens_to_ids(tokens)


def tokenize(model: LoadedModel, prompts: list[str]) -> torch.Tensor:
    tokenizer = model.tokenizer
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(model.device)


def encode_prompts(model: LoadedModel, prompts: list[str]) -> torch.Tensor:
    """Text embeddings [len(prompts), 77, d] in the UNet's dtype."""
    with torch.no_grad():
        hidden = model.text_encoder(tokenize(model, prompts))[0]
    return hidden.to(model.dtype)
