/* leap_runtime.h: the C API of leap-export's early-exit runtime (libleap_runtime.so).
 *
 * Runs an artifact folder written by `leap-export build` (manifest.json, per-segment ONNX graphs) through
 * ONNX Runtime's C library, with early exit: after each segment, rows whose convergence score reaches the
 * policy's theta leave the batch with that segment's pooled vector; the others go on, compacted.
 * It takes token ids, not text: `leap-export tokenize ART --input texts.txt --output ids.json` writes them,
 * and docs/MANIFEST.md names the tokenizer settings a program that tokenizes itself must reproduce.
 *
 * Conventions
 * - Every function that can fail returns a leap_status; LEAP_OK (0) is success. On failure,
 *   leap_last_error() returns a message for the calling thread (valid until that thread's next call).
 * - Handles are opaque. A leap_model keeps its leap_runtime alive: destroy and close in any order.
 * - Threads: leap_run, leap_stats and leap_model_info_get may be called on one model from any number of
 *   threads at once (each run is independent; the statistics are added to under a lock). leap_model_close
 *   must not overlap any other call on that model, and leap_runtime_destroy no leap_model_open on that
 *   runtime; neither handle may be used after it is closed / destroyed (models opened before keep their
 *   runtime alive). leap_runtime_create and leap_model_open may run in any thread, beside anything else.
 * - No process-wide state of this library: everything lives in the handles. ONNX Runtime itself keeps one
 *   environment per process and library: the thread pool of the first runtime created with a given
 *   libonnxruntime.so serves every later one (their `threads` are then ignored) until all are destroyed.
 * - Versioning: LEAP_RUNTIME_VERSION is the version of this header; leap_version() that of the library.
 *   The major version changes when a declaration here changes incompatibly; options structs start with
 *   their own size (struct_size) so that later minor versions can add fields at their end.
 */
#ifndef LEAP_RUNTIME_H
#define LEAP_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LEAP_RUNTIME_VERSION_MAJOR 1
#define LEAP_RUNTIME_VERSION_MINOR 0
#define LEAP_RUNTIME_VERSION_PATCH 0
/* major * 10000 + minor * 100 + patch */
#define LEAP_RUNTIME_VERSION \
  (LEAP_RUNTIME_VERSION_MAJOR * 10000 + LEAP_RUNTIME_VERSION_MINOR * 100 + LEAP_RUNTIME_VERSION_PATCH)

#if defined(__GNUC__)
#define LEAP_API __attribute__((visibility("default")))
#else
#define LEAP_API
#endif

typedef enum leap_status {
  LEAP_OK = 0,
  LEAP_ERR_ARGUMENT = 1,    /* a NULL pointer, a size or count out of range, a buffer too small */
  LEAP_ERR_INPUT = 2,       /* token ids / mask: shape, type, values (out of vocabulary, not right-padded) */
  LEAP_ERR_POLICY = 3,      /* a policy these artifacts cannot run (theta, min_layer, patience) */
  LEAP_ERR_ARTIFACT = 4,    /* the folder: missing, unreadable, manifest invalid, a file's sha256 differs */
  LEAP_ERR_UNSUPPORTED = 5, /* a valid build this library cannot run (a TensorRT variant, unknown inputs) */
  LEAP_ERR_ONNXRUNTIME = 6, /* ONNX Runtime could not be loaded, or one of its calls failed */
  LEAP_ERR_MEMORY = 7       /* out of memory */
} leap_status;

typedef enum leap_dtype { LEAP_INT32 = 6, LEAP_INT64 = 7 } leap_dtype; /* ONNX's element type numbers */

typedef struct leap_runtime leap_runtime; /* ONNX Runtime: its library, environment, thread pool */
typedef struct leap_model leap_model;     /* one opened build: its segment sessions and statistics */

typedef struct leap_runtime_options {
  size_t struct_size;      /* sizeof(leap_runtime_options) */
  const char* ort_library; /* path of libonnxruntime.so (>= 1.22); NULL: $LEAP_ORT_LIBRARY if set, else
                              the onnxruntime wheel's installed beside this library (site-packages), else
                              "libonnxruntime.so.1" on the loader's search path */
  int threads;             /* ONNX Runtime's intra-op pool size; 0: the CPUs this process may use */
} leap_runtime_options;

#define LEAP_OPEN_NO_HASH_CHECK 1u /* trust the files: do not compare their sha256 with the manifest */

typedef struct leap_open_options {
  size_t struct_size;  /* sizeof(leap_open_options) */
  const char* variant; /* "fp32", "int8", ...; NULL: the manifest's default_variant */
  uint32_t flags;      /* LEAP_OPEN_* */
} leap_open_options;

/* The exit rule: a row leaves after a segment ending at layer l (l below the last layer) when exits is
 * nonzero, l >= min_layer, l > patience and its score cos(p_l, p_{l-patience}) >= theta (in float32). */
typedef struct leap_policy {
  float theta;       /* in (0, 1] */
  int32_t min_layer; /* 1 .. num_layers */
  int32_t patience;  /* must equal the build's (the scores are computed inside the graphs) */
  int32_t exits;     /* 0: every row runs to full depth */
} leap_policy;

/* A [rows, cols] row-major matrix of token ids or mask values. */
typedef struct leap_tensor {
  const void* data;
  leap_dtype dtype;
  int64_t rows, cols;
} leap_tensor;

typedef struct leap_model_info {
  int32_t num_layers;
  int32_t hidden_size;    /* the length of one embedding */
  int32_t max_seq_length; /* the most tokens per row, special tokens included */
  int32_t vocab_size;     /* ids must be in [0, vocab_size); 0: not known (leap_model_open_graph) */
  int32_t pad_id;         /* the id padding positions hold (any valid id is accepted there) */
  int32_t normalize;      /* nonzero: the model's embeddings are L2-normalised (LEAP_RUN_NORMALIZE does it) */
  int32_t num_segments;
  const int32_t* segment_layers; /* [num_segments]: the layer each segment ends at (the exit layers) */
  leap_policy default_policy;    /* the manifest's exit_policy */
  const char* variant;
  const char* architecture;
} leap_model_info;

typedef struct leap_segment_stats {
  int64_t layer;    /* the layer the segment ends at */
  double score_sum; /* sum of the scores it computed */
  int64_t rows;     /* rows it ran */
  int64_t exited;   /* rows that left after it */
} leap_segment_stats;

#define LEAP_RUN_NORMALIZE 1u /* L2-normalise each output row (as EarlyExitEncoder.encode does) */

/* -- library ----------------------------------------------------------------------------------------- */

LEAP_API int leap_version(void);                /* LEAP_RUNTIME_VERSION of the library */
LEAP_API const char* leap_version_string(void); /* "1.0.0" */
LEAP_API const char* leap_status_name(leap_status status); /* "LEAP_ERR_INPUT"... */
/* The calling thread's last failure: a NUL-terminated message, "" if none. */
LEAP_API const char* leap_last_error(void);

/* -- runtime ----------------------------------------------------------------------------------------- */

/* options NULL: the defaults. Loads ONNX Runtime and checks its C API table before anything else. */
LEAP_API leap_status leap_runtime_create(const leap_runtime_options* options, leap_runtime** out);
LEAP_API const char* leap_runtime_ort_version(const leap_runtime* runtime); /* "1.32.0" */
LEAP_API int leap_runtime_threads(const leap_runtime* runtime);
LEAP_API void leap_runtime_destroy(leap_runtime* runtime); /* NULL is fine; open models stay usable */

/* -- models ------------------------------------------------------------------------------------------ */

/* Opens an artifact folder: reads manifest.json, checks the sha256 of the tokenizer and of the variant's
 * segment graphs (unless LEAP_OPEN_NO_HASH_CHECK), opens one ONNX Runtime session per segment.
 * options NULL: the default variant, hashes checked. */
LEAP_API leap_status leap_model_open(leap_runtime* runtime, const char* folder, const leap_open_options* options,
                                     leap_model** out);

/* One ONNX graph taking input_ids and attention_mask, run as a model whose every row leaves at its end (a
 * full-depth baseline timed in the same ONNX Runtime, pool and arena). output_names: every output to compute;
 * output_names[pooled] is [rows, hidden_size] float32. No vocabulary or length check; policies are ignored. */
LEAP_API leap_status leap_model_open_graph(leap_runtime* runtime, const char* onnx_path,
                                           const char* const* output_names, size_t num_outputs, size_t pooled,
                                           int32_t hidden_size, leap_model** out);

LEAP_API leap_status leap_model_info_get(const leap_model* model, leap_model_info* out); /* valid while open */
LEAP_API void leap_model_close(leap_model* model);                                         /* NULL is fine */

/* Runs one batch. input_ids and mask: [B, T] of one dtype (int32 or int64), B >= 1, 1 <= T <= max_seq_length;
 * each mask row is ones then zeros (right padding) with at least one 1; every id in [0, vocab_size).
 * policy NULL: the manifest's default policy.
 * embeddings: B * hidden_size floats (embeddings_len counts floats), row r = row r's pooled vector at its
 * exit (L2-normalised with LEAP_RUN_NORMALIZE); exit_layers: B entries (exit_layers_len), or NULL.
 * On failure nothing is added to the statistics; the outputs' contents are then unspecified. */
LEAP_API leap_status leap_run(leap_model* model, const leap_tensor* input_ids, const leap_tensor* mask,
                              const leap_policy* policy, uint32_t flags, float* embeddings, size_t embeddings_len,
                              int64_t* exit_layers, size_t exit_layers_len);

/* The statistics of every successful leap_run so far, one entry per segment (out_len >= num_segments);
 * reset nonzero: start again from zero (atomically with the read). */
LEAP_API leap_status leap_stats(leap_model* model, leap_segment_stats* out, size_t out_len, int reset);

#ifdef __cplusplus
}
#endif

#endif /* LEAP_RUNTIME_H */
