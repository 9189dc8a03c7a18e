"""The segment contract: the names, dtypes and shapes every segment graph, the runtime and every consumer of a
build (Triton, C++) agree on, stated once. ``leap_export.export`` writes graphs to it; the runtime reads them.

Segment ``i`` covers layers ``(a_i, b_i]``. The first takes token ids and the int32 attention mask and also
outputs the mask-derived tensors every later segment takes (``MASK_TENSORS``, computed once per batch);
later segments take the previous segment's hidden states instead of token ids. Every segment outputs its
pooled vector and convergence score, always float32 (docs/MANIFEST.md).
"""

IDS_DTYPE = "int32"  # token ids and mask travel as int32: TensorRT- and Triton-friendly, vocab < 2**31
HIDDEN_DTYPE = "float32"  # hidden states between segments, pooled vectors and scores, at every precision
# computed once by the first segment from the int32 mask, carried (and compacted) by the host
MASK_TENSORS = (
    {"name": "mask_bias", "dtype": HIDDEN_DTYPE, "shape": ["batch", 1, 1, "sequence"]},
    {"name": "pool_weights", "dtype": HIDDEN_DTYPE, "shape": ["batch", 1, "sequence"]},
)
CARRIED = tuple(t["name"] for t in MASK_TENSORS)

# A served encoder (the Triton model of `leap-export triton`): per text, one UTF-8 string in, its embedding
# (L2-normalised, ``hidden`` = the manifest's hidden_size) and its exit layer out
SERVED_INPUTS = ({"name": "TEXT", "dtype": "string", "shape": [1]},)
SERVED_OUTPUTS = (
    {"name": "EMBEDDING", "dtype": HIDDEN_DTYPE, "shape": ["hidden"]},
    {"name": "EXIT_LAYER", "dtype": "int32", "shape": [1]},
)
