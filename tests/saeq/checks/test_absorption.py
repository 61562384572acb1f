"""First-letter absorption: an SAE built by hand absorbs a known share of one letter's words and the
check finds exactly those; the word formulas on hand numbers; the words and prompts from the tiny
model's vocabulary (the word never at position 0, batched reads equal single ones); spec errors
named by their field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from saeq.checks.absorption import first_letter_absorption, word_absorption
from saeq.checks.absorption_words import first_letter_words, word_activations, word_prompts
from saeq.ml.features import read_hook
from saeq.ml.sae import SparseAutoencoder
from saeq.specs import JobCreate
from saeq.specs.checks import AbsorptionCheck

HOOK = "blocks.1.hook_resid_post"
LETTERS = "abcd"
N_PER_LETTER = 40
ABSORBED = range(0, 40, 5)
"""The 'a' words (by index) whose letter a token-specific latent carries instead of latent 0."""


def _planted(seed: int = 0):
    """Activations 3 e_L + noise per word; an absorbed 'a' word also has its own direction e_{4+j}.
    Latent L reads e_L (latent 0 is pushed below zero by any e_{4+j}); latent 4+j reads e_{4+j}
    and writes (e_a + e_{4+j}) / sqrt 2: it carries the letter on that word alone."""
    g = torch.Generator().manual_seed(seed)
    n_abs, d = len(ABSORBED), 24
    words, letters, acts = [], [], []
    for li, letter in enumerate(LETTERS):
        for i in range(N_PER_LETTER):
            x = 0.1 * torch.randn(d, generator=g)
            x[li] += 3.0
            if letter == "a" and i in ABSORBED:
                x[4 + ABSORBED.index(i)] += 2.0
            words.append(f"{letter}{i:02d}")
            letters.append(letter)
            acts.append(x)
    sae = SparseAutoencoder(d, 4 + n_abs, "relu")
    W_enc, W_dec, b_enc = torch.zeros(d, 4 + n_abs), torch.zeros(4 + n_abs, d), torch.full((4 + n_abs,), -0.5)
    for li in range(4):
        W_enc[li, li], W_dec[li, li] = 1.0, 1.0
    for j in range(n_abs):
        W_enc[4 + j, 0] = -2.0
        W_enc[4 + j, 4 + j] = 1.5
        W_dec[4 + j, 0] = W_dec[4 + j, 4 + j] = 2**-0.5
    with torch.no_grad():
        for param, value in ((sae.W_enc, W_enc), (sae.W_dec, W_dec), (sae.b_enc, b_enc)):
            param.copy_(value)
        sae.b_dec.zero_()
    rng = np.random.default_rng(seed)
    test = [bool(t) for t in rng.random(len(words)) < 0.3]
    return torch.stack(acts), words, letters, test, sae


def test_a_planted_absorption_is_found_word_by_word():
    acts, words, letters, test, sae = _planted()
    result = first_letter_absorption(acts, words, letters, test, sae, max_k=5, min_probe_f1=0.6, seed=0)
    by_letter = {r.letter: r for r in result.letters}
    a = by_letter["a"]
    test_a = [w for w, letter, t in zip(words, letters, test, strict=True) if letter == "a" and t]
    planted = {f"a{i:02d}" for i in ABSORBED} & set(test_a)
    assert 0 < len(planted) < len(test_a)
    assert a.probe_f1 == 1.0 and a.n_probe_positive == len(test_a)
    assert a.main_features == [0]  # the letter's latent; the absorbers fire on one word each
    assert {w.word for w in a.absorbed} == planted and all(w.full and w.fraction == 1.0 for w in a.absorbed)
    assert {w.absorber for w in a.absorbed} == {4 + ABSORBED.index(int(w[1:])) for w in planted}
    share = len(planted) / len(test_a)
    assert a.absorption_fraction is not None and a.full_absorption_rate is not None
    assert math.isclose(a.absorption_fraction.value, share) and math.isclose(a.full_absorption_rate.value, share)
    assert a.absorption_fraction.n == len(test_a) and a.absorption_fraction.contains(share)
    assert a.full_absorption_rate.method == "wilson" and a.full_absorption_rate.low > 0
    for letter in "bcd":  # nothing planted: nothing absorbed
        r = by_letter[letter]
        assert r.main_features == [LETTERS.index(letter)] and r.absorbed == [] and r.n_full == 0
    mean = result.mean_absorption_fraction
    assert math.isclose(mean.value, share / 4) and mean.low <= share / 4 <= mean.high and mean.high < share
    assert math.isclose(result.mean_full_absorption_rate.value, share / 4)
    summary = result.summary()
    assert summary["n_letters"] == 4 and summary["n_words"] == sum(test) and summary["mean_n_main_features"] == 1.0


def test_a_letter_the_probe_cannot_tell_is_left_out_of_the_means():
    acts, words, letters, test, sae = _planted()
    acts = acts.clone()
    d_rows = [i for i, letter in enumerate(letters) if letter == "d"]
    acts[d_rows, 2], acts[d_rows, 3] = 3.0, 0.0  # 'd' words now look like 'c' words: no probe tells them apart
    result = first_letter_absorption(acts, words, letters, test, sae, max_k=3, min_probe_f1=0.6, seed=0)
    for r in result.letters:
        if r.letter in "cd":
            assert not r.included and r.probe_f1 < 0.6 and r.absorption_fraction is None and r.main_features == []
    assert result.summary()["n_letters"] == 2 and result.summary()["n_letters_left_out"] == 2


def test_word_formulas_on_hand_numbers():
    # Latents: 0 main, 1 aligned (cos 0.8), 2 barely aligned (cos 0.05), 3 against the probe.
    cos = np.array([1.0, 0.8, 0.05, -0.5])
    lat = np.array(
        [
            [3.0, 0.0, 0.0, 0.0],  # the main latent carries it all: 0
            [1.5, 1.875, 0.0, 0.0],  # main 1.5, aligned 1.5 of x.u = 3: partial, 0.5
            [0.0, 2.5, 0.0, 0.0],  # main silent, aligned 2.0 of 3: full, 1
            [0.0, 0.0, 30.0, 0.0],  # only a latent below ABSORBER_MIN_COS: not a fraction, but full (cos >= 0.025)
            [0.0, 1.0, 0.0, 1.0],  # aligned 0.8 of 3 < 0.4 share: 0, and no full absorption
        ]
    )
    fraction, full, top = word_absorption(np.full(5, 3.0), lat, cos, [0])
    assert np.allclose(fraction, [0.0, 0.5, 1.0, 0.0, 0.0])
    assert full.tolist() == [False, False, True, True, False] and top.tolist() == [0, 0, 1, 2, 1]


def test_words_and_prompts_from_the_tiny_vocabulary(tiny_llama, one_thread):
    tok = tiny_llama.tokenizer
    words = first_letter_words(tok, "abcps", per_letter=6, test_share=0.3, seed=0)
    assert words and {w.letter for w in words} <= set("abcps")
    for w in words:
        assert tok.decode([w.token_id]) == " " + w.text and w.text[0] == w.letter and w.text.isalpha()
    assert words == first_letter_words(tok, "abcps", per_letter=6, test_share=0.3, seed=0)  # seeded
    assert any(w.test for w in words) and any(not w.test for w in words)
    prompts = word_prompts(words, tok, n_examples=3, seed=0)
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    template = set(tok(" has the first letter:", add_special_tokens=False)["input_ids"])
    split = {w.token_id: w.test for w in words if w.token_id not in template}
    for w, p in zip(words, prompts, strict=True):
        assert p[-1] == w.token_id and p[: len(sep)] == sep and len(p) - 1 > 0  # never position 0
        examples = [t for t in p[:-1] if t in split]
        assert examples and all(split[t] == w.test for t in examples)  # examples from the word's own split
    sae = SparseAutoencoder(tiny_llama.d_model, 64, "topk", k=4)
    acts, ordinary = word_activations(tiny_llama, HOOK, prompts[:5], sinks=None, batch_size=2)
    assert ordinary.all()
    for i, p in enumerate(prompts[:5]):
        with torch.inference_mode():
            alone = read_hook(tiny_llama, HOOK, torch.tensor([p]))[-1]
        assert torch.allclose(acts[i], alone, atol=1e-5)
    assert sae.encode(acts).shape == (5, 64)


def test_spec_errors_name_the_field():
    assert AbsorptionCheck().letters == "abcdefghijklmnopqrstuvwxyz"
    base = {"kind": "evaluate", "sae": {"job_id": "0" * 32}}
    for bad, field, says in [
        ({"letters": "abca"}, "letters", "letters listed twice: a"),
        ({"letters": "aB"}, "letters", "pattern"),
        ({"words_per_letter": 2}, "words_per_letter", "greater than or equal to 4"),
        ({"test_share": 1.0}, "test_share", "less than 1"),
        ({"max_k": 0}, "max_k", "greater than or equal to 1"),
        ({"lettres": "ab"}, "lettres", "Extra inputs"),
    ]:
        with pytest.raises(ValidationError) as e:
            JobCreate.model_validate({"spec": {**base, "checks": {"absorption": bad}}})
        err = e.value.errors()[0]
        assert err["loc"] == ("spec", "evaluate", "checks", "absorption", field) and says in str(e.value)
