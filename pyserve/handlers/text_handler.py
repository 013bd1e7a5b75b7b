"""TorchServe's TextHandler, without torchtext: text clean-up helpers and the vocabulary.

TorchServe's version needs torchtext, which no longer installs beside current torch, so
the tokenizer and n-grams come from pyserve.handlers.text_utils instead. The vocabulary
(`source_vocab.pt` in the model folder, or the file the manifest names under
`sourceVocab`/`source_vocab`) must be a {token: index} dict, saved with torch.save or as
JSON. A pickled torchtext Vocab object is refused: unpickling it needs torchtext itself.
Convert one with `torch.save(vocab.get_stoi(), "source_vocab.pt")` where torchtext still
works. Unknown tokens map to the index of "<unk>", or 0 without one.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from abc import ABC

import torch
import torch.nn.functional as F

from pyserve.handlers.base_handler import BaseHandler
from pyserve.handlers.text_utils import (
    CLEANUP_REGEX,
    CONTRACTION_MAP,
    CONTRACTIONS_PATTERN,
    get_tokenizer,
    implicit_softmax_dim,
    load_vocab,
)


class TextHandler(BaseHandler, ABC):
    """Base of the text handlers: loads the vocabulary and offers TorchServe's clean-up steps."""

    def __init__(self):
        super().__init__()
        self.source_vocab = None
        self.tokenizer = get_tokenizer("basic_english")
        self.input_text = None
        self.lig = None
        self.initialized = None

    def initialize(self, context):
        super().initialize(context)
        self.initialized = False
        model_info = self.manifest["model"]
        named = model_info.get("sourceVocab") or model_info.get("source_vocab")
        if named:
            path = os.path.join(context.system_properties.get("model_dir"), named)
        else:
            path = self.get_source_vocab_path(context)
        self.source_vocab = load_vocab(path)
        self.initialized = True

    def get_source_vocab_path(self, ctx):
        path = os.path.join(ctx.system_properties.get("model_dir"), "source_vocab.pt")
        if os.path.isfile(path):
            return path
        raise RuntimeError(
            "Missing the source_vocab file. Refer default handler "
            "documentation for details on using text_handler."
        )

    def _expand_contractions(self, text):
        """don't -> do not (keeping the first letter's case), then drops the apostrophes left."""

        def expand(match):
            found = match.group(0)
            expansion = CONTRACTION_MAP.get(found) or CONTRACTION_MAP.get(found.lower())
            return found[0] + expansion[1:]

        return re.sub("'", "", CONTRACTIONS_PATTERN.sub(expand, text))

    def _remove_accented_characters(self, text):
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")

    def _remove_html_tags(self, text):
        return CLEANUP_REGEX.sub("", text)

    def _remove_puncutation(self, *args, **kwargs):
        """TorchServe's original, misspelt name, still called by older handlers."""
        return self._remove_punctuation(*args, **kwargs)

    def _remove_punctuation(self, text):
        return text.translate(str.maketrans("", "", string.punctuation))

    def _tokenize(self, text):
        return self.tokenizer(text)

    def get_word_token(self, input_tokens):
        """Drops the space marker ("Ġ") BPE tokenizers put on tokens."""
        return [token.replace("Ġ", "") for token in input_tokens]

    def summarize_attributions(self, attributions):
        attributions = F.softmax(attributions, dim=implicit_softmax_dim(attributions))
        return attributions / torch.norm(attributions.sum(dim=-1))
