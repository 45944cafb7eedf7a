"""`TTTLM`: a Llama-style language model whose token mixer is chosen per layer (TTT-Linear, LaCT,
attention, sliding-window attention, or none for the no-context control):
embeddings -> n_layers x [RMSNorm -> mixer, RMSNorm -> SwiGLU] with residuals -> RMSNorm ->
LM head. With `e2e_suffix_layers = N` (TTT-E2E, docs/ttt_e2e.md) the top N blocks are the
`E2ESuffix`, whose prime MLPs train on the context chunk by chunk; `blocks` holds the others."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import Cache
from .config import Mixer, ModelConfig
from .documents import Documents
from .e2e import E2ESuffix
from .files import atomic_directory, verify_checksums
from .mixers import MIXERS, LactMixer, TTTLinearMixer
from .norms import RMSNorm
from .precision import upcast
from .pretrained import (
    WEIGHTS_FILE,
    read_config,
    read_weights,
    refuse_legacy,
    write_pretrained,
)
from .swiglu import SwiGLU

IGNORE_INDEX = -100


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, mixer: Mixer):
        super().__init__()
        # Without a mixer a norm in front of it would be a parameter that never gets a gradient.
        no_mixer = mixer == "none"
        self.mixer_norm = nn.Identity() if no_mixer else RMSNorm(config.d_model, config.norm_eps)
        self.mixer = MIXERS[mixer](config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state,
        *,
        decode: bool,
        return_stats: bool,
        documents: Documents | None = None,
    ):
        """`documents`: run the mixer on each packed document as its own sequence (no state)."""
        h = self.mixer_norm(x)
        if decode:
            mixed = self.mixer.decode(h, positions, state)
        elif documents is not None:
            mixed = self.mixer(documents.pack(h), documents.positions, return_stats=return_stats)
            mixed = mixed._replace(y=documents.unpack(mixed.y), state=None)
        else:
            mixed = self.mixer(h, positions, state, return_stats=return_stats)
        x = x + mixed.y
        return x + self.mlp(self.mlp_norm(x)), mixed.state, mixed.stats


@dataclass
class ModelOutput:
    logits: Tensor  # (B, T, V)
    loss: Tensor | None = None  # mean next-token cross entropy over labelled positions
    cache: Cache | None = None
    # On request, per layer: TTT fast-weight stats ({} for other layers); None without TTT layers.
    stats: list[dict[str, Tensor]] | None = None


class TTTLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        prefix = config.mixers[: config.prefix_layers]
        self.blocks = nn.ModuleList(Block(config, mixer) for mixer in prefix)
        # TTT-E2E: the top e2e_suffix_layers blocks, with their inner loop (ttt_core.e2e)
        self.suffix = E2ESuffix(config) if config.e2e_suffix_layers else None
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) for every matrix, N(0, 0.02^2) for TTT-Linear's W0, ones/zeros for
        norms; LaCT layers then set their own (`LactMixer.reset_parameters`)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, TTTLinearMixer):
                nn.init.normal_(module.W0, std=0.02)
                nn.init.ones_(module.ln_weight)
                nn.init.zeros_(module.ln_bias)
        for module in self.modules():  # after the generic init, which covers their Linears
            if isinstance(module, LactMixer):
                module.reset_parameters()

    def save_pretrained(self, directory: Path | str, *, overwrite: bool = False) -> Path:
        """Write config.json + model.safetensors + checksums.json as one atomic directory
        (`ttt_core.pretrained`). An existing `directory` is refused unless `overwrite`, which
        replaces it whole once the new one is complete."""
        with atomic_directory(Path(directory), replace=overwrite) as tmp:
            write_pretrained(self, tmp)
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: Path | str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TTTLM:
        """Load a `save_pretrained` directory in eval mode, on `device`, in `dtype` (default: as
        saved). Every file `checksums.json` lists is verified first; a missing or changed file
        raises `ttt_core.files.IntegrityError` naming it."""
        directory = Path(directory)
        refuse_legacy(directory)
        verify_checksums(directory)
        config = read_config(directory)
        weights = read_weights(directory, device)
        if dtype is not None:
            weights = {k: v.to(dtype) for k, v in weights.items()}
        with torch.device("meta"):  # no memory or init time for weights about to be replaced
            model = cls(config)
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        allowed_missing = {"lm_head.weight"} if config.tie_embeddings else set()
        if set(missing) - allowed_missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_FILE}: weights do not fit config.json "
                f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})"
            )
        if config.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        return model.eval()

    def new_cache(
        self,
        batch: int,
        *,
        decode_mode: Literal["online", "chunked"] | None = None,
        init: Literal["learned", "zeros"] = "learned",
    ) -> Cache:
        """An empty cache for `batch` rows. TTT state starts from the learned W0 (cloned per row)
        or, as an ablation, from zeros; `decode_mode` defaults to the config's."""
        if init == "zeros" and "ttt_linear" not in self.config.mixers:
            raise ValueError(
                "init='zeros' is a TTT ablation (W0 = 0); this model has no ttt_linear layer"
            )
        mode = decode_mode or self.config.decode_mode
        layers = [
            block.mixer.init_state(batch, cold=init == "zeros", chunked=mode == "chunked")
            for block in self.blocks
        ]
        if self.suffix is not None:
            layers += self.suffix.init_state(batch)
        offsets = torch.zeros(batch, dtype=torch.long, device=self.embed.weight.device)
        return Cache(
            layers=layers, offsets=offsets, decode_mode=mode, config=self.config.model_dump()
        )

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        return_stats: bool = False,
        doc_starts: Tensor | None = None,
        inner_lr_scale: float = 1.0,
    ) -> ModelOutput:
        """Training / prefill over input_ids (B, T), dual form for TTT.

        labels (B, T): the id that should follow each input position (already shifted), or -100
        to ignore it. `cache` continues a sequence; with `use_cache` the updated cache is returned.
        doc_starts (B, T) bool: True where a packed document begins (e.g. `input_ids == bos`);
        every mixer then treats each document as its own sequence (`ttt_core.documents`).
        inner_lr_scale: TTT-E2E only, the inner lr multiplier of the training warm-up.
        """
        if inner_lr_scale != 1.0 and self.suffix is None:
            raise ValueError("inner_lr_scale scales TTT-E2E's inner lr; this model has no suffix")
        documents = None
        if doc_starts is not None:
            if self.suffix is not None:
                raise ValueError(
                    "doc_starts: TTT-E2E trains its prime MLPs across the whole row; isolating "
                    "packed documents is not implemented for e2e_suffix_layers > 0"
                )
            if cache is not None or use_cache:
                raise ValueError(
                    "doc_starts isolates packed documents in training and prefill without a "
                    "cache; a cache continues one sequence per row"
                )
            documents = Documents.from_starts(doc_starts)
        if cache is None and use_cache:
            cache = self.new_cache(input_ids.shape[0])
        return self._run(
            input_ids,
            labels,
            cache,
            decode=False,
            return_stats=return_stats,
            documents=documents,
            inner_lr_scale=inner_lr_scale,
        )

    def _head(self, x: Tensor) -> Tensor:
        """Final norm and LM head: hidden (B, T, D) -> logits (B, T, V)."""
        return self.lm_head(self.norm(x))

    def decode(self, input_ids: Tensor, cache) -> ModelOutput:
        """Consume input_ids (B, T) one token at a time from `cache` (TTT: online or chunked GD,
        per `cache.decode_mode`). Eval mode only. Returns logits for every token and the cache."""
        return self._run(input_ids, None, cache, decode=True, return_stats=False)

    def _run(
        self,
        input_ids: Tensor,
        labels: Tensor | None,
        cache,
        *,
        decode: bool,
        return_stats: bool,
        documents: Documents | None = None,
        inner_lr_scale: float = 1.0,
    ) -> ModelOutput:
        B, T = input_ids.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache holds {cache.batch_size} rows but input_ids has {B}")
        start = cache.offsets if cache is not None else input_ids.new_zeros(B)
        positions = start[:, None] + torch.arange(T, device=input_ids.device)  # (B, T)
        x = self.embed(input_ids)
        states, stats = [], []
        for i, block in enumerate(self.blocks):
            state = cache.layers[i] if cache is not None else None
            x, state, layer_stats = block(
                x, positions, state, decode=decode, return_stats=return_stats, documents=documents
            )
            states.append(state)
            stats.append(layer_stats)
        if self.suffix is None:
            logits = self._head(x)
        else:
            suffix_states = cache.layers[len(self.blocks) :] if cache is not None else None
            logits, suffix_states = self.suffix(
                x, input_ids, positions, self._head, suffix_states, inner_lr_scale=inner_lr_scale
            )
            states += suffix_states or []
        new_cache = None
        if cache is not None:
            new_cache = Cache(
                layers=states, offsets=start + T, decode_mode=cache.decode_mode, config=cache.config
            )
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                upcast(logits).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
            )
        if not return_stats or "ttt_linear" not in self.config.mixers:
            stats = None
        else:
            stats = [layer or {} for layer in stats]
        return ModelOutput(logits=logits, loss=loss, cache=new_cache, stats=stats)
