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
