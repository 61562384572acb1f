"""The absorption check's words and their activations: single-token lowercase words from the
model's own vocabulary, split into train and test words, each read after a few solved examples
("\\n{word} has the first letter: W\\n..." then the word), at the word's own token."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from saeq.checks.absorption import first_letter_absorption
from saeq.errors import Cancelled, InvalidSpec
from saeq.ml.features import read_hook
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.specs.checks import AbsorptionCheck

TEMPLATE = " has the first letter:"
"""SAEBench's template. The target word's own template is never appended: the model is causal, so
tokens after the word cannot change the activation read at it."""
SEPARATOR = "\n"
"""Position 0 is an attention sink (docs/sinks.md): the separator takes it, so a word never does."""


@dataclass(frozen=True)
class Word:
    text: str
    """The word, without its leading space."""
    token_id: int
    letter: str
    test: bool


def first_letter_words(tokenizer, letters: str, *, per_letter: int, test_share: float, seed: int) -> list[Word]:
    """Up to `per_letter` vocabulary tokens per letter that are a space and then 2+ lowercase ASCII
    letters (" cat"), sampled with `seed`; per letter, `test_share` of them (at least one, when
    there are two) are test words."""
    by_letter: dict[str, list[tuple[str, int]]] = {c: [] for c in letters}
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        body = text[1:]
        word = text.startswith(" ") and len(body) >= 2 and body.isascii() and body.isalpha() and body.islower()
        if word and body[0] in by_letter:
            by_letter[body[0]].append((body, token_id))
    rng = random.Random(seed)
    words = []
    for letter in letters:
        found = by_letter[letter]
        chosen = rng.sample(found, min(per_letter, len(found)))
        n_test = min(max(round(test_share * len(chosen)), 1), len(chosen) - 1) if len(chosen) >= 2 else 0
        words += [Word(text, tid, letter, i < n_test) for i, (text, tid) in enumerate(chosen)]
    return words


def word_prompts(words: list[Word], tokenizer, *, n_examples: int, seed: int) -> list[list[int]]:
    """Token ids per word: the separator, `n_examples` solved examples drawn from the same split's
    other words, then the word; the word is the last token."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    sep, template, newline = ids(SEPARATOR), ids(TEMPLATE), ids("\n")
    answer = {c: ids(" " + c.upper()) for c in {w.letter for w in words}}
    rng = random.Random(seed)
    pools = {split: [w for w in words if w.test == split] for split in (False, True)}
    prompts = []
    for w in words:
        others = [o for o in pools[w.test] if o.token_id != w.token_id]
        prompt = list(sep)
        for ex in rng.sample(others, min(n_examples, len(others))):
            prompt += [ex.token_id, *template, *answer[ex.letter], *newline]
        prompts.append([*prompt, w.token_id])
    return prompts


def word_activations(
    lm: LoadedModel,
    hook: str,
    prompts: list[list[int]],
    *,
    sinks: SinkReference | None,
    batch_size: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda done: None,
) -> tuple[Tensor, Tensor]:
    """(words, d_model) the activation at each prompt's last token, and (words,) bool: False where
    that token is a sink by the harvest's norm rule (never by position: it is never position 0)."""
    acts = torch.zeros(len(prompts), lm.d_model)
    ordinary = torch.ones(len(prompts), dtype=torch.bool)
    pad_id = lm.tokenizer.pad_token_id
    pad = pad_id if isinstance(pad_id, int) else 0
    for b0 in range(0, len(prompts), batch_size):
        if should_stop():
            raise Cancelled("checks cancelled")
        batch = prompts[b0 : b0 + batch_size]
        T = max(len(p) for p in batch)
        ids_BT = torch.full((len(batch), T), pad, dtype=torch.long)
        for j, p in enumerate(batch):
            ids_BT[j, : len(p)] = torch.tensor(p)  # right-padded: causal attention keeps padding out
        last_B = torch.tensor([len(p) - 1 for p in batch])
        with torch.inference_mode():
            x_BTD = read_hook(lm, hook, ids_BT.to(lm.device)).view(len(batch), T, -1)
            x_BD = x_BTD[torch.arange(len(batch)), last_B.to(x_BTD.device)].float().cpu()
        acts[b0 : b0 + len(batch)] = x_BD
        if sinks is not None:
            ordinary[b0 : b0 + len(batch)] = ~sink_mask(last_B, x_BD.norm(dim=-1), sinks.median_norm, sinks.norm_factor)
        on_batch(min(b0 + batch_size, len(prompts)))
    return acts, ordinary


def measure_absorption(
    spec: AbsorptionCheck,
    sae: SparseAutoencoder,
    lm: LoadedModel,
    hook: str,
    *,
    sinks: SinkReference | None,
    batch_size: int,
    seed: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[float], None] = lambda fraction: None,
) -> dict:
    """The absorption check's section of the checks doc: the spec, a summary and each letter."""
    words = first_letter_words(
        lm.tokenizer, spec.letters, per_letter=spec.words_per_letter, test_share=spec.test_share, seed=seed
    )
    if not words:
        raise InvalidSpec(
            f"the model's vocabulary has no single-token lowercase word starting with any of {spec.letters!r}",
            field="spec.checks.absorption.letters",
        )
    prompts = word_prompts(words, lm.tokenizer, n_examples=spec.n_examples, seed=seed)
    acts_ND, ordinary_N = word_activations(
        lm,
        hook,
        prompts,
        sinks=sinks,
        batch_size=batch_size,
        should_stop=should_stop,
        on_batch=lambda n: on_batch(n / len(prompts)),
    )
    kept = [w for w, ok in zip(words, ordinary_N.tolist(), strict=True) if ok]
    result = first_letter_absorption(
        acts_ND[ordinary_N],
        [w.text for w in kept],
        [w.letter for w in kept],
        [w.test for w in kept],
        sae,
        max_k=spec.max_k,
        min_probe_f1=spec.min_probe_f1,
        seed=seed,
    )
    doc = result.to_dict()
    doc["summary"] |= {"n_sinks_left_out": len(words) - len(kept), "n_prompt_tokens": sum(map(len, prompts))}
    return {"spec": spec.model_dump(mode="json"), **doc}
