"""TorchServe's TextClassifier: one text in, {label: probability} for every class out.

Like TorchServe's, it reads only the first request of a batch. The model is called as
model(token_ids, offsets), the EmbeddingBag convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyserve.handlers.base_handler import captum_attr
from pyserve.handlers.text_handler import TextHandler
from pyserve.handlers.text_utils import implicit_softmax_dim, ngrams_iterator
from pyserve.handlers.util import map_class_to_label


class TextClassifier(TextHandler):
    """Cleans the text, tokenizes it, adds `ngrams`-grams and looks them up in the vocabulary."""

    ngrams = 2

    def preprocess(self, data):
        """Returns (token id tensor, tokens) for the first request."""
        row = data[0]
        text = row.get("data") or row.get("body")
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        text = self._remove_html_tags(text)
        text = text.lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        text = self._remove_punctuation(text)
        tokens = self._tokenize(text)
        ids = [self.source_vocab[token] for token in ngrams_iterator(tokens, self.ngrams)]
        return torch.as_tensor(ids, device=self.device), tokens

    def inference(self, data, *args, **kwargs):
        text_tensor, _ = data
        offsets = torch.as_tensor([0], device=self.device)
        return super().inference(text_tensor, offsets)

    def postprocess(self, data):
        probabilities = F.softmax(data, dim=implicit_softmax_dim(data))
        return map_class_to_label(probabilities.tolist(), self.mapping)

    def get_insights(self, text_preprocess, _, target=0):
        """Per-token importances (captum's LayerIntegratedGradients on model.embedding)."""
        attr = captum_attr()
        if self.lig is None:
            self.lig = attr.LayerIntegratedGradients(self.model, self.model.embedding)
        text_tensor, all_tokens = text_preprocess
        offsets = torch.tensor([0]).to(self.device)
        reference = attr.TokenReferenceBase().generate_reference(
            text_tensor.shape[0], device=self.device
        ).squeeze(0)
        attributions = self.lig.attribute(
            text_tensor, reference, additional_forward_args=(offsets),
            return_convergence_delta=False, target=target,
        )
        importances = self.summarize_attributions(attributions)
        return [{"importances": importances.tolist(), "words": self.get_word_token(all_tokens)}]
