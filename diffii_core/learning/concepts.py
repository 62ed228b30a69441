"""Learned concepts as an artefact (placeholder token rows per class, and one LoRA on every UNet attention
projection unless the method learns tokens only), and the scope in which a model holds them.

`concepts_applied(model, concepts)` is the only way to put a job's concepts on a shared model: inside
the block the model is theirs (generation and inversion check this), and scopes do not overlap."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from diffii_core.denoising.prompts import ensure_tokens
from diffii_core.errors import ArtifactError
from diffii_core.models import LoadedModel
from diffii_core.models.batch_invariance import stabilize

ADAPTER = "diffii"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
FORMAT = 1
CONCEPTS_FILE = "concepts.json"  # the metadata file that marks a folder as holding our concepts
BASE = "base"  # scope key of the base model: no LoRA, no concept prompt


@dataclass
class Concepts:
    """What concept learning produced for one job: enough to rebuild its pipeline anywhere."""

    class_names: list[str]
    tokens: dict[str, list[str]]
    embeddings: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]  # empty for tokens-only concepts (DA-Fusion)
    lora_rank: int  # 0 for tokens-only concepts
    metaclass: str
    model: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    # How they were made, for the record: placeholder start, LoRA init, autocast, sampling, source.
    recipe: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> Literal["lora+tokens", "tokens"]:
        return "lora+tokens" if self.lora else "tokens"

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps([self.class_names, self.tokens, self.lora_rank]).encode())
        for name in sorted(self.embeddings):
            digest.update(self.embeddings[name].numpy().tobytes())
        for name in sorted(self.lora):
            digest.update(name.encode())
            digest.update(self.lora[name].numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "class_names": self.class_names,
            "tokens": self.tokens,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_rank,
            "lora_target_modules": LORA_TARGETS,
            "metaclass": self.metaclass,
            "model": self.model,
            "steps": self.steps,
            "losses": self.losses,
            "kind": self.kind,
            "recipe": self.recipe,
        }
        paths = [
            directory / "embeddings.safetensors",
            directory / "lora.safetensors",
            directory / CONCEPTS_FILE,
        ]
        save_file({k: v.contiguous() for k, v in self.embeddings.items()}, str(paths[0]))
        save_file({k: v.contiguous() for k, v in self.lora.items()}, str(paths[1]))
        paths[2].write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        return paths

    @classmethod
    def load(cls, directory: Path) -> Concepts:
        try:
            meta = json.loads((directory / CONCEPTS_FILE).read_text(encoding="utf-8"))
            embeddings = load_file(str(directory / "embeddings.safetensors"))
            lora = load_file(str(directory / "lora.safetensors"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"learned concepts in {directory} are missing or unreadable: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ArtifactError(
                f"learned concepts in {directory} have format {meta.get('format')}, not {FORMAT}"
            )
        missing = [t for toks in meta["tokens"].values() for t in toks if t not in embeddings]
        if missing:
            raise ArtifactError(f"learned concepts in {directory} lack embeddings for {missing[:3]}")
        return cls(
            class_names=meta["class_names"],
            tokens=meta["tokens"],
            embeddings=embeddings,
            lora=lora,
            lora_rank=int(meta["lora_rank"]),
            metaclass=meta["metaclass"],
            model=meta.get("model", {}),
            steps=int(meta.get("steps", 0)),
            losses=list(meta.get("losses", [])),
            recipe=dict(meta.get("recipe", {})),
        )

    def check_fits(self, kind: str, class_names: list[str], directory: Path | str = "") -> None:
        """Refuse concepts learned for other classes or by another recipe (LoRA vs tokens only)."""
        where = f" in {directory}" if directory else ""
        if self.class_names != class_names:
            missing = sorted(set(class_names) - set(self.class_names))
            extra = sorted(set(self.class_names) - set(class_names))
            raise ArtifactError(
                f"learned concepts{where} are for other classes (missing: {missing[:3]}, extra: {extra[:3]})"
            )
        if kind != self.kind:
            raise ArtifactError(f"learned concepts{where} are {self.kind}; this method needs {kind}")


def install_adapter(model: LoadedModel, rank: int, init_seed: int | None = None) -> None:
    """A fresh LoRA adapter of `rank`, initialised as the published adapters are (A ~ N(0, 1/r), B = 0);
    the init is seeded so every process builds the same one."""
    unet = model.unet
    if ADAPTER in getattr(unet, "peft_config", {}):
        unet.delete_adapters(ADAPTER)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if init_seed is None else init_seed)
        unet.add_adapter(config, adapter_name=ADAPTER)
    unet.set_adapters(ADAPTER)
    stabilize(unet)  # the adapter's own Linear layers are new
    # LoRA weights stay fp32 on fp16 models so small updates are not lost to rounding.
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()


def disable_adapter(model: LoadedModel) -> None:
    if getattr(model.unet, "peft_config", None):
        model.unet.disable_adapters()


def scope_key(concepts: Concepts | None) -> str:
    return BASE if concepts is None else concepts.fingerprint


@contextmanager
def concepts_applied(model: LoadedModel, concepts: Concepts | None) -> Iterator[LoadedModel]:
    """The model with a job's tokens and LoRA (None: the base model) for the length of the block.
    Entering with the concepts already installed costs nothing; scopes on one model may not overlap."""
    if model.in_use is not None:
        raise RuntimeError(f"model {model.name!r} is already in use by another job's concepts")
    _install(model, concepts)
    model.in_use = scope_key(concepts)
    try:
        yield model
    finally:
        model.in_use = None


def _install(model: LoadedModel, concepts: Concepts | None) -> None:
    key = scope_key(concepts)
    if model.installed == key:
        return
    model.installed = None  # a failure half-way leaves nothing that claims to be installed
    if concepts is None:
        disable_adapter(model)
        model.installed = key
        return
    unet = model.unet
    tokens = [t for name in concepts.class_names for t in concepts.tokens[name]]
    ids = ensure_tokens(model, tokens)
    weight = model.text_encoder.get_input_embeddings().weight
    if any(concepts.embeddings[t].shape[-1] != weight.shape[-1] for t in tokens):
        raise ArtifactError(
            f"learned embeddings are {concepts.embeddings[tokens[0]].shape[-1]}-d; model {model.name!r}'s "
            f"text encoder is {weight.shape[-1]}-d: the concepts were learned on another base model"
        )
    with torch.no_grad():
        for token, row in zip(tokens, ids, strict=True):
            weight[row] = concepts.embeddings[token].to(weight.device, weight.dtype)
    if concepts.kind == "tokens":
        disable_adapter(model)
    else:
        install_adapter(model, concepts.lora_rank)
        try:
            result = set_peft_model_state_dict(unet, concepts.lora, adapter_name=ADAPTER)
        except RuntimeError as exc:  # a shape mismatch: another base model
            raise ArtifactError(f"learned LoRA does not fit model {model.name!r}: {exc}") from exc
        if getattr(result, "unexpected_keys", None):
            raise ArtifactError(
                f"learned LoRA does not fit model {model.name!r}: {result.unexpected_keys[:3]}"
            )
        unet.enable_adapters()
    model.installed = key
