/* trt_runtime's host loop in C: one call runs a whole batch through the segment chain.
 *
 * Built at install as trt_runtime/_chain*.so (pyproject.toml, an optional extension: without a C compiler
 * the install goes on and trt_runtime keeps its Python loop) and loaded with ctypes by
 * trt_runtime/native.py. It needs no ONNX Runtime headers or link step: it dlopen()s the libonnxruntime.so
 * that the onnxruntime wheel ships beside its Python module and calls ONNX Runtime's C API, a table of
 * function pointers (OrtApi) whose slots ort_api.h names by index (API version 22, ONNX Runtime >= 1.22),
 * and lx_init checks a few of them on a tensor of known shape before anything else runs.
 *
 * Why: between two segment runs at batch 1 the Python loop pays the Python binding's per-run work (numpy
 * in, a list of new arrays out) with caches the weights just flushed, the largest part of the batch-1
 * monitoring overhead the host adds (docs/runtime.md). Here the loop of trt_runtime/encoder.py
 * (_run_padded_python) runs without leaving C: the exit test in float32, the statistics, compaction with
 * the padding trim, the scatter back to input order. Tensors pass from one segment to the next as
 * OrtValues, without copies, until some row leaves.
 *
 * Settings as trt_runtime.runners sets them for the Python binding: one process-wide intra-op pool of
 * THREADS threads with spinning, one shared CPU arena (session.use_env_allocators), ORT_ENABLE_ALL,
 * sessions without pools of their own. Every call is independent (the chain's statistics are added to under
 * a lock), so one chain may serve several threads; ctypes releases the GIL during each call.
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ort_api.h"

enum { SRC_IDS = -1, SRC_MASK = -2 };

#define MAX_SEG 64
#define MAX_IO 16
#define MAX_DIMS 8

static const void* const* api;
static Obj* env;
static Obj* options;
static Obj* mem_info;
static char version[64];
static _Thread_local char last_err[1024]; /* the calling thread's last error: lx_last_error() */
#define ERR last_err, (int)sizeof last_err

typedef Status (*TensorWithDataFn)(Obj*, void*, size_t, const int64_t*, size_t, int, Obj**);

static void set_err(char* err, int len, const char* a, const char* b) {
  if (err && len > 0) snprintf(err, (size_t)len, "%s%s", a, b ? b : "");
}

/* 0 when s is OK; else the message into err, the status released, -1 */
static int failed(Status s, char* err, int len, const char* what) {
  if (!s) return 0;
  if (err && len > 0)
    snprintf(err, (size_t)len, "%s: %s", what, FN(GET_ERROR_MESSAGE, const char* (*)(Status))(s));
  FN(RELEASE_STATUS, void (*)(Status))(s);
  return -1;
}

static void release(Obj* v) {
  if (v) FN(RELEASE_VALUE, void (*)(Obj*))(v);
}

/* element type, rank and dimensions of a tensor value */
static int shape_of(Obj* v, int* type, int64_t* dims, size_t* ndim, char* err, int len) {
  Obj* info = NULL;
  if (failed(FN(GET_TENSOR_TYPE_AND_SHAPE, Status (*)(const Obj*, Obj**))(v, &info), err, len, "GetTensorTypeAndShape"))
    return -1;
  int rc = failed(FN(GET_TENSOR_ELEMENT_TYPE, Status (*)(const Obj*, int*))(info, type), err, len, "GetTensorElementType");
  if (!rc) rc = failed(FN(GET_DIMENSIONS_COUNT, Status (*)(const Obj*, size_t*))(info, ndim), err, len, "GetDimensionsCount");
  if (!rc && *ndim > MAX_DIMS) {
    set_err(err, len, "a tensor of more than 8 dimensions", NULL);
    rc = -1;
  }
  if (!rc) rc = failed(FN(GET_DIMENSIONS, Status (*)(const Obj*, int64_t*, size_t))(info, dims, *ndim), err, len, "GetDimensions");
  FN(RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, void (*)(Obj*))(info);
  return rc;
}

static Obj* wrap(void* data, size_t bytes, const int64_t* dims, size_t ndim, int type, char* err, int len) {
  Obj* v = NULL;
  if (failed(FN(CREATE_TENSOR_WITH_DATA, TensorWithDataFn)(mem_info, data, bytes, dims, ndim, type, &v), err, len,
             "CreateTensorWithDataAsOrtValue"))
    return NULL;
  return v;
}

static int elem_size(int type) {
  return type == T_FLOAT || type == T_INT32 ? 4 : type == T_INT64 || type == T_DOUBLE ? 8 : 0;
}

const char* lx_version(void) { return version; }

/* what went wrong in this thread's last call that failed */
const char* lx_last_error(void) { return last_err; }

/* Once per process: load ONNX Runtime, create its environment with one global intra-op pool of `threads`
 * threads and one shared CPU arena, and the session options every session here uses. 0: ready. */
int lx_init(const char* lib_path, int threads) {
  char* err = last_err;
  int len = (int)sizeof last_err;
  if (env) return 0;
  void* lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    set_err(err, len, "cannot load ONNX Runtime's C library: ", dlerror());
    return -1;
  }
  const ApiBase* (*get_base)(void) = (const ApiBase* (*)(void))dlsym(lib, "OrtGetApiBase");
  if (!get_base) {
    set_err(err, len, "no OrtGetApiBase in ", lib_path);
    return -1;
  }
  const ApiBase* base = get_base();
  snprintf(version, sizeof version, "%s", base->get_version_string());
  const void* const* table = base->get_api(API_VERSION);
  if (!table) {
    set_err(err, len, "this ONNX Runtime does not offer C API version 22 (ONNX Runtime >= 1.22 needed); it is ",
            version);
    return -1;
  }
  api = table;
  /* the slots read shapes back: check them on a tensor of known shape before trusting any */
  float probe[30];
  int64_t want[3] = {2, 3, 5}, got[MAX_DIMS] = {0};
  Obj* info = NULL;
  if (failed(FN(CREATE_CPU_MEMORY_INFO, Status (*)(int, int, Obj**))(ARENA_ALLOCATOR, MEM_DEFAULT, &info), err, len,
             "CreateCpuMemoryInfo"))
    return -1;
  mem_info = info;
  Obj* v = wrap(probe, sizeof probe, want, 3, T_FLOAT, err, len);
  if (!v) return -1;
  int type = 0;
  size_t ndim = 0;
  void* data = NULL;
  int rc = shape_of(v, &type, got, &ndim, err, len);
  if (!rc) rc = failed(FN(GET_TENSOR_MUTABLE_DATA, Status (*)(Obj*, void**))(v, &data), err, len, "GetTensorMutableData");
  release(v);
  if (rc) return -1;
  if (type != T_FLOAT || ndim != 3 || got[0] != 2 || got[1] != 3 || got[2] != 5 || data != (void*)probe) {
    set_err(err, len, "ONNX Runtime's C API table is not laid out as expected in ", version);
    return -1;
  }

  Obj *pool = NULL, *e = NULL, *so = NULL;
  if (failed(FN(CREATE_THREADING_OPTIONS, Status (*)(Obj**))(&pool), err, len, "CreateThreadingOptions") ||
      failed(FN(SET_GLOBAL_INTRA_OP_NUM_THREADS, Status (*)(Obj*, int))(pool, threads), err, len,
             "SetGlobalIntraOpNumThreads") ||
      failed(FN(SET_GLOBAL_INTER_OP_NUM_THREADS, Status (*)(Obj*, int))(pool, 1), err, len,
             "SetGlobalInterOpNumThreads") ||
      failed(FN(CREATE_ENV_WITH_GLOBAL_THREAD_POOLS, Status (*)(int, const char*, Obj*, Obj**))(
                 LOG_ERROR, "trt_runtime", pool, &e), err, len, "CreateEnvWithGlobalThreadPools") ||
      failed(FN(CREATE_AND_REGISTER_ALLOCATOR, Status (*)(Obj*, Obj*, Obj*))(e, mem_info, NULL), err, len,
             "CreateAndRegisterAllocator") ||
      failed(FN(CREATE_SESSION_OPTIONS, Status (*)(Obj**))(&so), err, len, "CreateSessionOptions") ||
      failed(FN(SET_GRAPH_OPTIMIZATION_LEVEL, Status (*)(Obj*, int))(so, ENABLE_ALL), err, len,
             "SetSessionGraphOptimizationLevel") ||
      failed(FN(DISABLE_PER_SESSION_THREADS, Status (*)(Obj*))(so), err, len, "DisablePerSessionThreads") ||
      failed(FN(ADD_SESSION_CONFIG_ENTRY, Status (*)(Obj*, const char*, const char*))(so, "session.use_env_allocators",
                                                                                    "1"),
             err, len, "AddSessionConfigEntry"))
    return -1;
  options = so;
  env = e; /* last: a failed init is tried again in full */
  return 0;
}

Obj* lx_session_open(const char* path) {
  Obj* s = NULL;
  if (!env) {
    set_err(ERR, "lx_init has not run", NULL);
    return NULL;
  }
  if (failed(FN(CREATE_SESSION, Status (*)(Obj*, const char*, Obj*, Obj**))(env, path, options, &s), ERR, path))
    return NULL;
  return s;
}

void lx_session_close(Obj* s) {
  if (s) FN(RELEASE_SESSION, void (*)(Obj*))(s);
}

/* -- the chain -------------------------------------------------------------------------------------- */

typedef struct {
  Obj* session;
  int end;            /* the layer this segment ends at (its exit layer) */
  int n_in, n_out;
  int pooled, score;  /* output indices; score -1: no score (a monolithic graph: every row leaves) */
  char* in_names[MAX_IO];
  int src_seg[MAX_IO], src_out[MAX_IO]; /* SRC_IDS, SRC_MASK, or output src_out of segment src_seg */
  char* out_names[MAX_IO];
  int seq_axis[MAX_IO];  /* the sequence axis of each output (-1: none), for the padding trim */
  int last_use[MAX_IO];  /* the last segment that takes the output as an input (-1: none) */
} Seg;

typedef struct {
  int n_seg;
  Seg seg[MAX_SEG];
  /* production statistics, per segment: sum of the scores seen, rows run, rows that left (lx_chain_stats) */
  pthread_mutex_t lock;
  double totals[3 * MAX_SEG];
} Chain;

Chain* lx_chain_new(int n_seg) {
  if (n_seg < 1 || n_seg > MAX_SEG) return NULL;
  Chain* c = calloc(1, sizeof(Chain));
  if (!c) return NULL;
  c->n_seg = n_seg;
  pthread_mutex_init(&c->lock, NULL);
  return c;
}

/* the statistics so far into out [3 * n_seg]; reset: start again from zero */
void lx_chain_stats(Chain* c, double* out, int reset) {
  pthread_mutex_lock(&c->lock);
  memcpy(out, c->totals, sizeof(double) * 3 * (size_t)c->n_seg);
  if (reset) memset(c->totals, 0, sizeof c->totals);
  pthread_mutex_unlock(&c->lock);
}

void lx_chain_free(Chain* c) {
  if (!c) return;
  pthread_mutex_destroy(&c->lock);
  for (int k = 0; k < c->n_seg; k++) {
    for (int i = 0; i < c->seg[k].n_in; i++) free(c->seg[k].in_names[i]);
    for (int j = 0; j < c->seg[k].n_out; j++) free(c->seg[k].out_names[j]);
  }
  free(c);
}

/* Segment k of the chain. Sources name segments before k; ids and the mask feed the first segment only. */
int lx_chain_segment(Chain* c, int k, Obj* session, int end, int n_in, const char** in_names, const int* src_seg,
                     const int* src_out, int n_out, const char** out_names, const int* seq_axis, int pooled,
                     int score) {
  char* err = last_err;
  int len = (int)sizeof last_err;
  if (!c || k < 0 || k >= c->n_seg || !session || n_in < 1 || n_in > MAX_IO || n_out < 1 || n_out > MAX_IO ||
      pooled < 0 || pooled >= n_out || score >= n_out || (score < 0 && k != c->n_seg - 1)) {
    set_err(err, len, "lx_chain_segment: a bad segment description", NULL);
    return -1;
  }
  Seg* s = &c->seg[k];
  s->session = session;
  s->end = end;
  s->n_in = n_in;
  s->n_out = n_out;
  s->pooled = pooled;
  s->score = score;
  for (int i = 0; i < n_in; i++) {
    int from = src_seg[i];
    if ((from < 0 && (k != 0 || (from != SRC_IDS && from != SRC_MASK))) || from >= k ||
        (from >= 0 && (src_out[i] < 0 || src_out[i] >= c->seg[from].n_out))) {
      set_err(err, len, "lx_chain_segment: a bad input source for ", in_names[i]);
      return -1;
    }
    s->in_names[i] = strdup(in_names[i]);
    s->src_seg[i] = from;
    s->src_out[i] = src_out[i];
    if (from >= 0) c->seg[from].last_use[src_out[i]] = k;
  }
  for (int j = 0; j < n_out; j++) {
    s->out_names[j] = strdup(out_names[j]);
    s->seq_axis[j] = seq_axis[j];
    s->last_use[j] = -1;
  }
  return 0;
}

typedef struct {
  Obj* value; /* an OrtValue: a run's output, or a compacted copy over `own` */
  void* own;
} Held;

/* keep only rows `keep` (n of them) and the first `width` positions of the sequence axis */
static int compact(Held* h, const int64_t* keep, int64_t n, int seq_axis, int64_t width, char* err, int len) {
  int type = 0;
  size_t ndim = 0;
  int64_t dims[MAX_DIMS];
  void* data = NULL;
  if (shape_of(h->value, &type, dims, &ndim, err, len) ||
      failed(FN(GET_TENSOR_MUTABLE_DATA, Status (*)(Obj*, void**))(h->value, &data), err, len, "GetTensorMutableData"))
    return -1;
  int es = elem_size(type);
  if (!es || ndim < 1 || (seq_axis >= 0 && (size_t)seq_axis >= ndim) || seq_axis == 0) {
    set_err(err, len, "compaction: an output of an unexpected type or shape", NULL);
    return -1;
  }
  /* a row = outer blocks of `t` positions of `inner` elements each */
  int64_t outer = 1, inner = 1, t = 1;
  if (seq_axis > 0) {
    for (int a = 1; a < seq_axis; a++) outer *= dims[a];
    for (size_t a = (size_t)seq_axis + 1; a < ndim; a++) inner *= dims[a];
    t = dims[seq_axis];
    if (width > t) width = t;
  } else {
    for (size_t a = 1; a < ndim; a++) inner *= dims[a];
    width = 1;
  }
  size_t row_in = (size_t)(outer * t * inner) * (size_t)es, chunk = (size_t)(width * inner) * (size_t)es;
  size_t span = (size_t)(t * inner) * (size_t)es, bytes = (size_t)n * (size_t)outer * chunk;
  char* dst = malloc(bytes ? bytes : 1);
  if (!dst) {
    set_err(err, len, "compaction: out of memory", NULL);
    return -1;
  }
  const char* src = data;
  char* d = dst;
  for (int64_t r = 0; r < n; r++)
    for (int64_t o = 0; o < outer; o++, d += chunk) memcpy(d, src + (size_t)keep[r] * row_in + (size_t)o * span, chunk);
  dims[0] = n;
  if (seq_axis > 0) dims[seq_axis] = width;
  Obj* v = wrap(dst, bytes, dims, ndim, type, err, len);
  if (!v) {
    free(dst);
    return -1;
  }
  release(h->value);
  free(h->own);
  h->value = v;
  h->own = dst;
  return 0;
}

/* One padded batch [B, T] (right-padded: each mask row is ones then zeros) through the chain.
 *   theta, can_exit[k]: the exit rule (a row leaves after segment k when can_exit[k] and score >= theta;
 *     every row still running leaves after the last segment)
 *   out [B, H] float32: each row's pooled vector at its exit; layers [B]: its exit layer
 * The chain's statistics are added to once the batch is done (lx_chain_stats).
 * 0: done; -1: an error, described by lx_last_error(). */
int lx_chain_run(Chain* c, void* ids, void* mask, int id_type, int64_t B, int64_t T, float theta,
                 const uint8_t* can_exit, float* out, int64_t H, int64_t* layers) {
  char* err = last_err;
  int len = (int)sizeof last_err;
  double stats[3 * MAX_SEG] = {0};
  int es = elem_size(id_type), rc = -1;
  if (!c || B < 1 || T < 1 || (id_type != T_INT32 && id_type != T_INT64)) {
    set_err(err, len, "lx_chain_run: bad arguments", NULL);
    return -1;
  }
  Held held[MAX_SEG][MAX_IO];
  memset(held, 0, sizeof held[0] * (size_t)c->n_seg); /* only this chain's rows are read */
  int64_t* active = malloc(sizeof(int64_t) * (size_t)B * 3); /* rows still running; keep list; row lengths */
  if (!active) {
    set_err(err, len, "out of memory", NULL);
    return -1;
  }
  int64_t *keep = active + B, *lens = active + 2 * B, n = B;
  for (int64_t r = 0; r < B; r++) {
    active[r] = r;
    int64_t l = 0;
    for (int64_t p = 0; p < T; p++)
      l += id_type == T_INT32 ? (int64_t)((int32_t*)mask)[r * T + p] : ((int64_t*)mask)[r * T + p];
    lens[r] = l;
  }
  int64_t dims[2] = {B, T};
  Obj* tok = wrap(ids, (size_t)(B * T) * (size_t)es, dims, 2, id_type, err, len);
  Obj* msk = tok ? wrap(mask, (size_t)(B * T) * (size_t)es, dims, 2, id_type, err, len) : NULL;
  if (!msk) goto done;

  for (int k = 0; k < c->n_seg; k++) {
    Seg* s = &c->seg[k];
    const Obj* in[MAX_IO];
    Obj* outv[MAX_IO] = {NULL};
    char what[48];
    snprintf(what, sizeof what, "segment %d (ending at layer %d)", k, s->end);
    for (int i = 0; i < s->n_in; i++)
      in[i] = s->src_seg[i] == SRC_IDS ? tok : s->src_seg[i] == SRC_MASK ? msk : held[s->src_seg[i]][s->src_out[i]].value;
    if (failed(FN(RUN, RunFn)(s->session, NULL, (const char* const*)s->in_names, in, (size_t)s->n_in,
                              (const char* const*)s->out_names, (size_t)s->n_out, outv),
               err, len, what)) {
      for (int j = 0; j < s->n_out; j++) release(outv[j]);
      goto done;
    }
    for (int j = 0; j < s->n_out; j++) held[k][j].value = outv[j];
    /* the pooled output must be [n, H] float32, the score [n] */
    int type = 0;
    size_t ndim = 0;
    int64_t d[MAX_DIMS];
    float *pooled = NULL, *score = NULL;
    if (shape_of(outv[s->pooled], &type, d, &ndim, err, len)) goto done;
    if (type != T_FLOAT || ndim != 2 || d[0] != n || d[1] != H) {
      set_err(err, len, "a segment's pooled output is not [rows, hidden] float32: ", s->out_names[s->pooled]);
      goto done;
    }
    if (failed(FN(GET_TENSOR_MUTABLE_DATA, Status (*)(Obj*, void**))(outv[s->pooled], (void**)&pooled), err, len,
               "GetTensorMutableData"))
      goto done;
    int last = k == c->n_seg - 1;
    int64_t n_exit = last ? n : 0;
    if (s->score >= 0) {
      if (shape_of(outv[s->score], &type, d, &ndim, err, len)) goto done;
      if (type != T_FLOAT || ndim != 1 || d[0] != n) {
        set_err(err, len, "a segment's score output is not [rows] float32: ", s->out_names[s->score]);
        goto done;
      }
      if (failed(FN(GET_TENSOR_MUTABLE_DATA, Status (*)(Obj*, void**))(outv[s->score], (void**)&score), err, len,
                 "GetTensorMutableData"))
        goto done;
      double sum = 0;
      for (int64_t r = 0; r < n; r++) sum += (double)score[r];
      if (!last && can_exit[k])
        for (int64_t r = 0; r < n; r++) n_exit += score[r] >= theta;
      stats[3 * k] += sum;
      stats[3 * k + 1] += (double)n;
      stats[3 * k + 2] += (double)n_exit;
    }
    if (n_exit == n) { /* every remaining row leaves here */
      for (int64_t r = 0; r < n; r++) {
        memcpy(out + active[r] * H, pooled + r * H, sizeof(float) * (size_t)H);
        layers[active[r]] = s->end;
      }
      rc = 0;
      goto done;
    }
    if (n_exit) {
      int64_t m = 0, width = 0;
      for (int64_t r = 0; r < n; r++) {
        if (score[r] >= theta) {
          memcpy(out + active[r] * H, pooled + r * H, sizeof(float) * (size_t)H);
          layers[active[r]] = s->end;
        } else {
          keep[m] = r;
          active[m++] = active[r]; /* m <= r: in place */
          if (lens[active[m - 1]] > width) width = lens[active[m - 1]];
        }
      }
      /* every value a later segment still takes: survivors only, padding no survivor needs trimmed */
      for (int q = 0; q <= k; q++)
        for (int j = 0; j < c->seg[q].n_out; j++)
          if (held[q][j].value && c->seg[q].last_use[j] > k &&
              compact(&held[q][j], keep, m, c->seg[q].seq_axis[j], width, err, len))
            goto done;
      n = m;
    }
    /* values no later segment takes go now */
    for (int j = 0; j < s->n_out; j++)
      if (s->last_use[j] <= k) {
        release(held[k][j].value);
        free(held[k][j].own);
        held[k][j].value = NULL;
        held[k][j].own = NULL;
      }
  }
  set_err(err, len, "lx_chain_run: the last segment did not end the batch", NULL);
done:
  if (rc == 0) {
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < 3 * c->n_seg; i++) c->totals[i] += stats[i];
    pthread_mutex_unlock(&c->lock);
  }
  for (int q = 0; q < c->n_seg; q++)
    for (int j = 0; j < MAX_IO; j++) {
      release(held[q][j].value);
      free(held[q][j].own);
    }
  release(tok);
  release(msk);
  free(active);
  return rc;
}
