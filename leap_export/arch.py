"""One declaration per architecture: everything the exporter needs to know about a model family.

A declaration says how to turn token ids into the first hidden states, how to run transformer layer
``i``, and what per-sequence extras a layer needs. The segment module (``export.Segment``) composes
them and never branches on the architecture.

MPNet's relative position bias is a function of the sequence length and the shared
``encoder.relative_attention_bias`` weights only. Each segment recomputes it from its own input, which
gives exactly the tensor the full model computes once, instead of shipping a ``[B, heads, S, S]``
tensor across every segment boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    name: str
    pad_token_default: int

    def embed(self, model, input_ids):
        raise NotImplementedError

    def layer_extras(self, model, hidden) -> dict[str, Any]:
        return {}

    def run_layer(self, model, index: int, hidden, additive_mask, extras: dict[str, Any]):
        raise NotImplementedError

    def layers(self, model):
        return model.encoder.layer


class Bert(Architecture):
    def embed(self, model, input_ids):
        # token_type_ids default to the registered all-zeros buffer, as sentence-transformers feeds zeros
        return model.embeddings(input_ids=input_ids)

    def run_layer(self, model, index, hidden, additive_mask, extras):
        out = model.encoder.layer[index](hidden, attention_mask=additive_mask)
        return out[0] if isinstance(out, tuple) else out


class MPNet(Architecture):
    def embed(self, model, input_ids):
        # positions derive from input_ids and padding_idx inside the embeddings module
        return model.embeddings(input_ids=input_ids)

    def layer_extras(self, model, hidden):
        return {"position_bias": model.encoder.compute_position_bias(hidden)}

    def run_layer(self, model, index, hidden, additive_mask, extras):
        # by keyword: transformers 4.x has head_mask where 5.x has position_bias (third positional)
        out = model.encoder.layer[index](
            hidden, attention_mask=additive_mask, position_bias=extras["position_bias"]
        )
        return out[0] if isinstance(out, tuple) else out


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Bert("bert", pad_token_default=0),
    "mpnet": MPNet("mpnet", pad_token_default=1),
}


def get_architecture(name: str) -> Architecture:
    from leap_export.errors import LeapError

    if name not in ARCHITECTURES:
        raise LeapError(f"architecture '{name}' has no declaration; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
