"""Text helpers for the built-in text handlers, in place of torchtext (which is gone).

The tokenizer, n-grams and contraction table reproduce what TorchServe's text handlers
use, so a model trained against those sees the same tokens here.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Iterator

import torch

# TorchServe's ts.utils.util.CLEANUP_REGEX: HTML tags and character entities.
CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")

# TorchServe's contraction table, in its order: the pattern built from it is an alternation,
# so a shorter key listed first ("can't") wins over a longer one ("can't've"). Its entries,
# typo included ("he he will have"), are kept as they are so models see the same text.
_CONTRACTIONS = """
    ain't=is not|aren't=are not|can't=cannot|can't've=cannot have|'cause=because|
    could've=could have|couldn't=could not|couldn't've=could not have|didn't=did not|
    doesn't=does not|don't=do not|hadn't=had not|hadn't've=had not have|hasn't=has not|
    haven't=have not|he'd=he would|he'd've=he would have|he'll=he will|
    he'll've=he he will have|he's=he is|how'd=how did|how'd'y=how do you|how'll=how will|
    how's=how is|I'd=I would|I'd've=I would have|I'll=I will|I'll've=I will have|I'm=I am|
    I've=I have|i'd=i would|i'd've=i would have|i'll=i will|i'll've=i will have|i'm=i am|
    i've=i have|isn't=is not|it'd=it would|it'd've=it would have|it'll=it will|
    it'll've=it will have|it's=it is|let's=let us|ma'am=madam|mayn't=may not|
    might've=might have|mightn't=might not|mightn't've=might not have|must've=must have|
    mustn't=must not|mustn't've=must not have|needn't=need not|needn't've=need not have|
    o'clock=of the clock|oughtn't=ought not|oughtn't've=ought not have|shan't=shall not|
    sha'n't=shall not|shan't've=shall not have|she'd=she would|she'd've=she would have|
    she'll=she will|she'll've=she will have|she's=she is|should've=should have|
    shouldn't=should not|shouldn't've=should not have|so've=so have|so's=so as|
    that'd=that would|that'd've=that would have|that's=that is|there'd=there would|
    there'd've=there would have|there's=there is|they'd=they would|
    they'd've=they would have|they'll=they will|they'll've=they will have|they're=they are|
    they've=they have|to've=to have|wasn't=was not|we'd=we would|we'd've=we would have|
    we'll=we will|we'll've=we will have|we're=we are|we've=we have|weren't=were not|
    what'll=what will|what'll've=what will have|what're=what are|what's=what is|
    what've=what have|when's=when is|when've=when have|where'd=where did|where's=where is|
    where've=where have|who'll=who will|who'll've=who will have|who's=who is|
    who've=who have|why's=why is|why've=why have|will've=will have|won't=will not|
    won't've=will not have|would've=would have|wouldn't=would not|
    wouldn't've=would not have|y'all=you all|y'all'd=you all would|
    y'all'd've=you all would have|y'all're=you all are|y'all've=you all have|
    you'd=you would|you'd've=you would have|you'll=you will|you'll've=you will have|
    you're=you are|you've=you have
"""
CONTRACTION_MAP: dict[str, str] = dict(
    entry.strip().split("=", 1) for entry in _CONTRACTIONS.split("|") if entry.strip()
)
CONTRACTIONS_PATTERN = re.compile(
    "({})".format("|".join(CONTRACTION_MAP)), flags=re.IGNORECASE | re.DOTALL
)

# torchtext's basic_english rules, applied in this order after lowercasing.
_BASIC_ENGLISH = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
        (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "),
        (r"\(", " ( "), (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "),
        (r"\:", " "), (r"\s+", " "),
    ]
]


def basic_english(line: str) -> list[str]:
    """torchtext's basic_english tokenizer."""
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        line = pattern.sub(replacement, line)
    return line.split()


def get_tokenizer(tokenizer, language: str = "en"):
    """torchtext's get_tokenizer for the cases TorchServe uses: None, "basic_english", a callable."""
    if tokenizer is None:
        return str.split
    if tokenizer == "basic_english":
        if language != "en":
            raise ValueError("Basic normalization is only available for Enlish(en)")
        return basic_english
    if callable(tokenizer):
        return tokenizer
    raise ValueError(f"tokenizer {tokenizer!r} is not available without torchtext")


def ngrams_iterator(token_list: list[str], ngrams: int) -> Iterator[str]:
    """The tokens, then every 2..ngrams-gram joined by spaces: ['a', 'b'] -> a, b, 'a b'."""
    yield from token_list
    for n in range(2, ngrams + 1):
        for gram in zip(*[token_list[i:] for i in range(n)]):
            yield " ".join(gram)


def implicit_softmax_dim(tensor) -> int:
    """The dim F.softmax picks when called without one, as TorchServe's text handlers call it."""
    return 0 if tensor.dim() in (0, 1, 3) else 1


class Vocab:
    """A token -> index table with torchtext Vocab's lookups; unknown tokens get the default index."""

    def __init__(self, stoi: dict[str, int], default_index: int | None = None):
        self._stoi = {str(token): int(index) for token, index in stoi.items()}
        self._default = self._stoi.get("<unk>", 0) if default_index is None else default_index

    def __getitem__(self, token: str) -> int:
        return self._stoi.get(token, self._default)

    def __contains__(self, token: str) -> bool:
        return token in self._stoi

    def __len__(self) -> int:
        return len(self._stoi)

    def lookup_indices(self, tokens: Iterable[str]) -> list[int]:
        return [self[token] for token in tokens]

    def get_stoi(self) -> dict[str, int]:
        return dict(self._stoi)

    def get_itos(self) -> list[str]:
        return [token for token, _ in sorted(self._stoi.items(), key=lambda item: item[1])]

    def get_default_index(self) -> int:
        return self._default

    def set_default_index(self, index: int) -> None:
        self._default = index


def load_vocab(path: str) -> Vocab:
    """Reads a vocabulary saved as a torch.save'd {token: index} dict or as a JSON object."""
    try:
        stoi = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as torch_error:  # not a torch file, or a pickled torchtext Vocab
        try:
            with open(path, encoding="utf-8") as file:
                stoi = json.load(file)
        except ValueError:  # undecodable text or not JSON
            raise ValueError(
                f"{path}: the vocabulary must be a torch.save'd or JSON {{token: index}} dict; "
                "torchtext Vocab objects cannot be loaded without torchtext "
                f"(torch.load said: {torch_error})"
            ) from None
    if not isinstance(stoi, dict):
        raise ValueError(f"{path}: the vocabulary must be a {{token: index}} dict, not {type(stoi).__name__}")
    return Vocab(stoi)
