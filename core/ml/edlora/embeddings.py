"""Layer-wise concept embeddings: their initialisation, and encoding prompts once per UNet cross-attention layer.

Mix-of-Show adds ``2 x n_layers`` tokens to the tokenizer and rows to the embedding table. We reach the same
encoder states without touching the shared tokenizer or text encoder: a concept slot is tokenized as a placeholder
id, and a forward hook on the token-embedding module (a supported PyTorch extension point, not a patched
``forward``) writes the concept's layer-``l`` row over it in prompt copy ``l``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from core.errors import InvalidRequestError
from core.ml.prompts import ConceptSlot, PromptPart

RAND_INIT_STD = 0.013
"""Std of the ``V_rand`` word's initial embedding (Mix-of-Show ``<rand-0.013>``)."""


def init_concept_embeddings(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    class_word: str,
    num_layers: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Initial embeddings of a concept's two words: ``V_rand`` ~ N(0, 0.013²) and ``V_class`` = the class word's.

    A class word that tokenizes into several pieces is initialised with their mean.

    Returns:
        ``[2, num_layers, hidden]`` float32 on CPU; every layer row starts equal.

    Raises:
        InvalidRequestError: ``class_word`` is empty or yields no tokens.
    """
    ids = tokenizer(class_word, add_special_tokens=False).input_ids if class_word.strip() else []
    if not ids:
        raise InvalidRequestError(f"class_word must be a plain word, got {class_word!r}", field="class_word")
    table = text_encoder.get_input_embeddings().weight
    class_vector = table[torch.tensor(ids, device=table.device)].detach().float().mean(dim=0).cpu()
    rand_vector = torch.randn(class_vector.shape, generator=generator) * RAND_INIT_STD
    words = torch.stack([rand_vector, class_vector])  # [2, hidden]
    return words[:, None, :].repeat(1, num_layers, 1).contiguous()


def tokenize_parts(
    tokenizer: CLIPTokenizer, parts: Sequence[PromptPart]
) -> tuple[list[int], list[tuple[int, str, int]]]:
    """Token ids of a bound prompt, padded to ``tokenizer.model_max_length``, and where its concept words sit.

    Each ``ConceptSlot`` takes two positions (the concept's two words). Text beyond the length limit is cut, as
    ``CLIPTokenizer(truncation=True)`` does.

    Returns:
        ``(ids, slots)``: ``ids`` has ``model_max_length`` entries (BOS, tokens, EOS, padding); ``slots`` lists
        ``(position, concept_name, word_index)`` for each concept word that fits.
    """
    max_length = int(tokenizer.model_max_length)
    bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
    body: list[int] = []
    slots: list[tuple[int, str, int]] = []
    for part in parts:
        if isinstance(part, ConceptSlot):
            for word in (0, 1):
                slots.append((1 + len(body), part.name, word))
                body.append(eos)  # placeholder; the embedding hook overwrites it
        else:
            body.extend(tokenizer(part, add_special_tokens=False).input_ids)
    body = body[: max_length - 2]
    ids = [bos, *body, eos]
    ids += [pad] * (max_length - len(ids))
    return ids, [s for s in slots if s[0] <= len(body)]


@contextmanager
def _overwrite_token_embeddings(
    text_encoder: CLIPTextModel, where: torch.Tensor, values: torch.Tensor
) -> Iterator[None]:
    """Within the block, token-embedding outputs ``[N, seq, hidden]`` take ``values`` where ``where`` is True."""

    def hook(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.where(where[..., None], values.to(output.dtype), output)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_layerwise(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    prompts: Sequence[Sequence[PromptPart]],
    embeddings: Mapping[str, torch.Tensor],
    num_layers: int,
) -> torch.Tensor:
    """Encode bound prompts once per cross-attention layer, layer ``l`` seeing every concept's layer-``l`` rows.

    Prompts without concept slots are encoded once and repeated over the layer axis.

    Args:
        prompts: ``B`` bound prompts (``core.ml.prompts.bind_prompt``/``bind_caption``).
        embeddings: concept name → ``[2, num_layers, hidden]`` (gradients flow back into these).
        num_layers: cross-attention layers of the UNet (16 for SD 1.5).

    Returns:
        ``[B, num_layers, seq, hidden]`` last hidden states, in the text encoder's dtype.
    """
    device = text_encoder.device
    tokenized = [tokenize_parts(tokenizer, parts) for parts in prompts]
    input_ids = torch.tensor([ids for ids, _ in tokenized], device=device)  # [B, seq]
    batch, seq = input_ids.shape
    if not any(slots for _, slots in tokenized):
        states: torch.Tensor = text_encoder(input_ids).last_hidden_state  # [B, seq, hidden]
        return states[:, None].expand(batch, num_layers, seq, states.shape[-1]).contiguous()

    hidden = int(text_encoder.config.hidden_size)
    where = torch.zeros(batch, num_layers, seq, dtype=torch.bool, device=device)
    rows: list[torch.Tensor] = []
    index: list[tuple[int, int]] = []
    for b, (_, slots) in enumerate(tokenized):
        for position, name, word in slots:
            where[b, :, position] = True
            rows.append(embeddings[name][word].to(device))  # [num_layers, hidden]
            index.append((b, position))
    values = torch.zeros(batch, num_layers, seq, hidden, device=device, dtype=torch.float32)
    batch_index = torch.tensor([b for b, _ in index], device=device)
    position_index = torch.tensor([p for _, p in index], device=device)
    values[batch_index, :, position_index] = torch.stack(rows).float()  # [K, num_layers, hidden]
    layer_ids = input_ids[:, None].expand(batch, num_layers, seq).reshape(batch * num_layers, seq)
    with _overwrite_token_embeddings(text_encoder, where.reshape(-1, seq), values.reshape(-1, seq, hidden)):
        states = text_encoder(layer_ids).last_hidden_state  # [B·L, seq, hidden]
    return states.reshape(batch, num_layers, seq, hidden)
