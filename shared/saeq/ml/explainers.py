"""Who names a feature and who judges a name: a local model, an OpenAI-compatible endpoint, or
the corpus metadata. Prompts live here, versioned, so a label records how it was made."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from saeq.ml.corpus import Document
from saeq.ml.features import Example
from saeq.ml.models import LoadedModel

PROMPT_VERSION = "saeq.label-prompts/1"
MARK_OPEN, MARK_CLOSE = "<<", ">>"

Decode = Callable[[list[int]], list[str]]
"""Token ids -> one string per token (the pieces join into the text)."""


@dataclass(frozen=True)
class Explanation:
    label: str
    description: str


@dataclass(frozen=True)
class Evidence:
    """What an explainer sees of one feature: its top windows."""

    feature: int
    top: list[Example]


class Explainer(Protocol):
    name: str

    def explain(self, evidence: list[Evidence]) -> list[Explanation]: ...


class Judge(Protocol):
    name: str

    def detect(self, items: list[tuple[Explanation, str]]) -> list[float]:
        """P(the text is about the concept) for each (explanation, text)."""
        ...

    def fuzz(self, items: list[tuple[Explanation, str]]) -> list[float]:
        """P(the marked tokens are examples of the concept) for each (explanation, marked text)."""
        ...


# --- shared text helpers -------------------------------------------------------------------------


def token_pieces(tokenizer) -> Decode:
    """A Decode for `tokenizer`: each token id decoded alone, memoised (windows repeat tokens)."""
    cache: dict[int, str] = {}

    def decode(ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in cache:
                cache[i] = tokenizer.decode([i])
            out.append(cache[i])
        return out

    return decode


def text_of(example: Example, decode: Decode) -> str:
    return "".join(decode(example.token_ids))


def marked_text(example: Example, decode: Decode, marked: list[bool] | None = None) -> str:
    """The window with marked tokens (default: those where the feature fires) in << >>."""
    marked = marked if marked is not None else [a > 0 for a in example.acts]
    out = []
    for piece, m in zip(decode(example.token_ids), marked, strict=False):
        if m and piece.strip():
            lead = piece[: len(piece) - len(piece.lstrip())]
            out.append(f"{lead}{MARK_OPEN}{piece.strip()}{MARK_CLOSE}")
        else:
            out.append(piece)
    return "".join(out)


def top_words(evidence: Evidence, decode: Decode, n: int = 10) -> list[str]:
    """The tokens on which the feature is strongest across its top windows, most frequent first
    (a token counts where it reaches half its window's peak)."""
    counts: Counter[str] = Counter()
    for ex in evidence.top:
        peak = ex.max_act
        for piece, a in zip(decode(ex.token_ids), ex.acts, strict=False):
            word = piece.strip()
            if a >= 0.5 * peak and a > 0 and word:
                counts[word] += 1
    return [w for w, _ in counts.most_common(n)]


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


# --- metadata -----------------------------------------------------------------------------------


class MetadataExplainer:
    """Names a feature by the titles and topics of the documents its top windows come from; when
    neither dominates, by its top tokens. Needs no LLM: an offline baseline."""

    name = "metadata"

    def __init__(self, documents: Callable[[list[int]], dict[int, Document]], decode: Decode, share: float = 0.5):
        self.documents, self.decode, self.share = documents, decode, share

    def explain(self, evidence: list[Evidence]) -> list[Explanation]:
        docs = self.documents(sorted({ex.doc_id for ev in evidence for ex in ev.top} - {-1}))
        return [self._one(ev, docs) for ev in evidence]

    def _one(self, ev: Evidence, docs: dict[int, Document]) -> Explanation:
        found = [docs[ex.doc_id] for ex in ev.top if ex.doc_id in docs]
        words = top_words(ev, self.decode, 4)
        tokens = ", ".join(f'"{w}"' for w in words) or "no clear tokens"
        n = max(len(ev.top), 1)
        titles = Counter(d.title for d in found if d.title)
        topics = Counter(d.topic for d in found if d.topic)
        if titles and titles.most_common(1)[0][1] / n >= self.share:
            title, k = titles.most_common(1)[0]
            return Explanation(title, f"Fires in the article {title!r} ({k} of {n} top contexts), on {tokens}.")
        if topics and topics.most_common(1)[0][1] / n >= self.share:
            topic, k = topics.most_common(1)[0]
            examples = ", ".join(t for t, _ in titles.most_common(3))
            return Explanation(
                topic, f"Fires in {topic} articles ({k} of {n} top contexts; e.g. {examples}), on {tokens}."
            )
        label = " / ".join(words[:3]) if words else "unclear"
        return Explanation(label, f"Fires on the tokens {tokens} across unrelated articles.")


# --- a local Hugging Face model ----------------------------------------------------------------

_FEW_SHOT = (  # one topical, one syntactic, one named-entity shot: a 135M model copies a lone theme
    "Words: apple, banana, cherry, mango\nTheme: fruit\nMeaning: names of fruits.\n\n"
    "Words: the, a, an, this\nTheme: articles\nMeaning: small words that introduce a noun.\n\n"
    "Words: Paris, London, Berlin, Madrid\nTheme: European capitals\nMeaning: capital cities of European countries.\n\n"
)


class LocalLLM:
    """Greedy generation and yes/no probabilities from a causal LM on the worker, batched."""

    def __init__(self, lm: LoadedModel, batch_size: int = 16):
        self.lm, self.batch_size = lm, batch_size
        tok = lm.tokenizer
        self.yes_id = tok(" Yes", add_special_tokens=False)["input_ids"][-1]
        self.no_id = tok(" No", add_special_tokens=False)["input_ids"][-1]

    def _encode(self, prompts: list[str]):
        tok = self.lm.tokenizer
        tok.padding_side = "left"  # so every prompt's last token sits at the last position
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.lm.device) for k, v in enc.items()}

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out = []
        tok = self.lm.tokenizer
        for i in range(0, len(prompts), self.batch_size):
            enc = self._encode(prompts[i : i + self.batch_size])
            # A causal LM is a GenerationMixin, which PreTrainedModel's type does not say.
            ids = self.lm.model.generate(  # pyright: ignore[reportCallIssue]
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    def yes_probability(self, prompts: list[str]) -> list[float]:
        """P(" Yes") / (P(" Yes") + P(" No")) for the token after each prompt."""
        return [p[0] for p in self._next_token_shares(prompts, [self.yes_id, self.no_id])]

    def option_probabilities(self, prompts: list[str], options: list[str]) -> list[list[float]]:
        """For prompts ending in "...:", the probabilities of answering each option (" 0" or, with
        tokenizers that split the space from digits, " " then "0"), renormalised over the options."""
        tok = self.lm.tokenizer
        head = tok("Answer:", add_special_tokens=False)["input_ids"]
        option_ids, suffix = [], ""
        for o in options:
            ids = tok(f"Answer: {o}", add_special_tokens=False)["input_ids"]
            if ids[:-1] == head:  # " 0" is one token
                option_ids.append(ids[-1])
            else:  # "Answer:", " ", "0": the prompt takes the space, the option is the last token
                option_ids.append(ids[-1])
                suffix = " "
        return self._next_token_shares([p + suffix for p in prompts], option_ids)

    @torch.inference_mode()
    def _next_token_shares(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            enc = self._encode(prompts[i : i + self.batch_size])
            logits = self.lm.model(**enc, use_cache=False).logits[:, -1].float()
            out += logits[:, token_ids].softmax(-1).tolist()
        return out


class LocalExplainer:
    """Few-shot completion ("Words: ... / Theme: ... / Meaning: ..."), the format FIELD-NOTES
    found to work best with SmolLM2-135M; weak, and its scores say so."""

    def __init__(self, llm: LocalLLM, decode: Decode, max_new_tokens: int, name: str):
        self.llm, self.decode, self.max_new_tokens, self.name = llm, decode, max_new_tokens, name

    def explain(self, evidence: list[Evidence]) -> list[Explanation]:
        prompts = [f"{_FEW_SHOT}Words: {', '.join(top_words(ev, self.decode)) or '(none)'}\nTheme:" for ev in evidence]
        return [parse_theme(text) for text in self.llm.generate(prompts, self.max_new_tokens)]


def parse_theme(completion: str) -> Explanation:
    """'<label>\\nMeaning: <description>...' -> Explanation; the label is never empty."""
    lines = [ln.strip() for ln in completion.split("\n")]
    label = one_line(lines[0] if lines else "", 80) or "unclear"
    meaning = next((ln.split(":", 1)[1].strip() for ln in lines[1:3] if ln.lower().startswith("meaning:")), "")
    return Explanation(label, one_line(meaning) or f"Text about {label}.")


class LocalJudge:
    """Yes/no questions answered from the next-token probabilities of " Yes" and " No"."""

    def __init__(self, llm: LocalLLM, name: str):
        self.llm, self.name = llm, name

    def detect(self, items: list[tuple[Explanation, str]]) -> list[float]:
        return self.llm.yes_probability(
            [
                f'Text: "{one_line(text, 400)}"\nQuestion: Is this text about {e.label}? Answer Yes or No.\nAnswer:'
                for e, text in items
            ]
        )

    def fuzz(self, items: list[tuple[Explanation, str]]) -> list[float]:
        return self.llm.yes_probability(
            [
                f'Text: "{one_line(text, 400)}"\nQuestion: Are the words marked {MARK_OPEN} {MARK_CLOSE} examples of '
                f"{e.label}? Answer Yes or No.\nAnswer:"
                for e, text in items
            ]
        )


# --- an OpenAI-compatible endpoint ----------------------------------------------------------------

_EXPLAIN_SYSTEM = (
    "You explain features of a sparse autoencoder trained on a language model's activations. You see "
    f"text excerpts; the tokens on which the feature fires are marked {MARK_OPEN}like this{MARK_CLOSE}. "
    "Say what the marked tokens have in common, in context. Reply with exactly two lines:\n"
    "Label: <2 to 6 words>\nDescription: <one sentence>"
)
_JUDGE_SYSTEM = "You decide whether a text matches a concept. Answer with one word: Yes or No."


class EndpointExplainer:
    def __init__(self, endpoint, decode: Decode, max_new_tokens: int, name: str):
        self.endpoint, self.decode, self.max_new_tokens, self.name = endpoint, decode, max_new_tokens, name

    def explain(self, evidence: list[Evidence]) -> list[Explanation]:
        requests = []
        for ev in evidence:
            excerpts = "\n".join(
                f"{i + 1}. {one_line(marked_text(ex, self.decode), 600)}" for i, ex in enumerate(ev.top)
            )
            requests.append(
                [{"role": "system", "content": _EXPLAIN_SYSTEM}, {"role": "user", "content": f"Excerpts:\n{excerpts}"}]
            )
        answers = self.endpoint.complete_batch(requests, max_tokens=self.max_new_tokens)
        return [parse_label_reply(a) for a in answers]


def parse_label_reply(reply: str) -> Explanation:
    """'Label: ...' and 'Description: ...' lines; a reply without them keeps its first line as the
    label, so nothing is silently dropped."""
    label = re.search(r"^[\s*_#]*label[\s*_]*:[\s*_]*(.+)$", reply, re.I | re.M)
    desc = re.search(r"^[\s*_#]*description[\s*_]*:[\s*_]*(.+)$", reply, re.I | re.M)
    first = next((ln for ln in reply.splitlines() if ln.strip()), "unclear")
    lab = one_line(label.group(1) if label else first, 80)
    return Explanation(lab, one_line(desc.group(1)) if desc else f"Text about {lab}.")


class EndpointJudge:
    def __init__(self, endpoint, name: str):
        self.endpoint, self.name = endpoint, name

    def _ask(self, questions: list[str]) -> list[float]:
        return self.endpoint.yes_probability_batch(
            [[{"role": "system", "content": _JUDGE_SYSTEM}, {"role": "user", "content": q}] for q in questions]
        )

    def detect(self, items: list[tuple[Explanation, str]]) -> list[float]:
        return self._ask(
            [
                f"Concept: {e.label} ({e.description})\nText: {one_line(t, 1000)}\nIs this text about the concept?"
                for e, t in items
            ]
        )

    def fuzz(self, items: list[tuple[Explanation, str]]) -> list[float]:
        return self._ask(
            [
                f"Concept: {e.label} ({e.description})\nText: {one_line(t, 1000)}\n"
                f"Are the tokens marked {MARK_OPEN} {MARK_CLOSE} examples of the concept?"
                for e, t in items
            ]
        )
