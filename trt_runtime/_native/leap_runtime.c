/* libleap_runtime: the early-exit chain through ONNX Runtime's C API (the public API: include/leap_runtime.h).
 *
 * Built at install as trt_runtime/libleap_runtime.so (setup.py; optional: without a C compiler the install
 * goes on and trt_runtime runs its Python loop). trt_runtime/native.py loads it with ctypes and calls the same
 * public functions a C or C++ program calls. It needs no ONNX Runtime headers or link step: it dlopen()s the
 * libonnxruntime.so that the onnxruntime wheel ships and calls ONNX Runtime's C API through the typed slot
 * table of ort_api.h, which leap_runtime_create checks on objects of known content before anything runs.
 *
 * Why C: between two segment runs at batch 1 the Python loop pays the Python binding's per-run work (numpy
 * in, a list of new arrays out) with caches the weights just flushed, the largest part of the batch-1
 * monitoring overhead the host adds (docs/runtime.md). Here the loop of trt_runtime/chain.py runs without
 * leaving C: the exit test in float32, the statistics, compaction with the padding trim, the scatter back to
 * input order. Tensors pass from one segment to the next as OrtValues, without copies, until some row leaves.
 * The two loops give the same results to the last bit (tests/trt_runtime/test_native.py).
 *
 * ONNX Runtime settings as trt_runtime.runners sets them for the Python binding: one process-wide intra-op
 * pool with spinning, one shared CPU arena (session.use_env_allocators), ORT_ENABLE_ALL, sessions without
 * pools of their own. All state lives in the handles; each leap_run is independent (one allocation for its
 * workspace; the statistics are added to under the model's lock once the batch is done). */
#define _GNU_SOURCE
#include "leap_runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <glob.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "leap_json.h"
#include "ort_api.h"

#define LEAP_MAX_DIMS 8
#define LEAP_MAX_SEGMENTS 1024   /* more segments than any model has layers */
#define LEAP_MAX_IO 256          /* inputs or outputs of one graph */
#define LEAP_MAX_THREADS 4096
#define LEAP_MAX_HIDDEN (1 << 20)
#define LEAP_MAX_MANIFEST (64u << 20)   /* bytes of manifest.json */
#define LEAP_MAX_TOKENIZER (512u << 20) /* bytes of tokenizer.json */
#define LEAP_MAX_PATH 4096

enum { SRC_IDS = -1, SRC_MASK = -2 };

/* -- errors ------------------------------------------------------------------------------------------ */

static _Thread_local char last_error[2048]; /* the calling thread's last failure */

static leap_status fail(leap_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static leap_status fail(leap_status status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return status;
}

int leap_version(void) { return LEAP_RUNTIME_VERSION; }

const char* leap_version_string(void) {
#define LEAP_STR2(x) #x
#define LEAP_STR(x) LEAP_STR2(x)
  return LEAP_STR(LEAP_RUNTIME_VERSION_MAJOR) "." LEAP_STR(LEAP_RUNTIME_VERSION_MINOR) "." LEAP_STR(
      LEAP_RUNTIME_VERSION_PATCH);
}

const char* leap_last_error(void) { return last_error; }

const char* leap_status_name(leap_status status) {
  switch (status) {
    case LEAP_OK: return "LEAP_OK";
    case LEAP_ERR_ARGUMENT: return "LEAP_ERR_ARGUMENT";
    case LEAP_ERR_INPUT: return "LEAP_ERR_INPUT";
    case LEAP_ERR_POLICY: return "LEAP_ERR_POLICY";
    case LEAP_ERR_ARTIFACT: return "LEAP_ERR_ARTIFACT";
    case LEAP_ERR_UNSUPPORTED: return "LEAP_ERR_UNSUPPORTED";
    case LEAP_ERR_ONNXRUNTIME: return "LEAP_ERR_ONNXRUNTIME";
    case LEAP_ERR_MEMORY: return "LEAP_ERR_MEMORY";
  }
  return "LEAP_ERR_UNKNOWN";
}

/* -- the runtime ------------------------------------------------------------------------------------- */

struct leap_runtime {
  leap_ort ort;
  OrtEnv* env;
  OrtSessionOptions* options;
  OrtMemoryInfo* mem_info;
  int threads;
  atomic_int refs; /* the creator's reference + one per open model */
  char ort_version[64];
};

/* ONNX Runtime's message for a failed call (released), as LEAP_ERR_ONNXRUNTIME; 0 for success */
static leap_status ort_failed(const leap_ort* ort, OrtStatus* s, const char* what) {
  if (!s) return LEAP_OK;
  fail(LEAP_ERR_ONNXRUNTIME, "%s: %s", what, ort->GetErrorMessage(s));
  ort->ReleaseStatus(s);
  return LEAP_ERR_ONNXRUNTIME;
}

/* element type, rank and dimensions of a tensor value */
static leap_status shape_of(const leap_ort* ort, const OrtValue* v, int* type, int64_t* dims, size_t* ndim) {
  OrtTensorTypeAndShapeInfo* info = NULL;
  leap_status rc = ort_failed(ort, ort->GetTensorTypeAndShape(v, &info), "GetTensorTypeAndShape");
  if (rc) return rc;
  rc = ort_failed(ort, ort->GetTensorElementType(info, type), "GetTensorElementType");
  if (!rc) rc = ort_failed(ort, ort->GetDimensionsCount(info, ndim), "GetDimensionsCount");
  if (!rc && *ndim > LEAP_MAX_DIMS) rc = fail(LEAP_ERR_ONNXRUNTIME, "a tensor of more than 8 dimensions");
  if (!rc) rc = ort_failed(ort, ort->GetDimensions(info, dims, *ndim), "GetDimensions");
  ort->ReleaseTensorTypeAndShapeInfo(info);
  return rc;
}

static OrtValue* wrap(const leap_runtime* rt, void* data, size_t bytes, const int64_t* dims, size_t ndim, int type,
                      leap_status* rc) {
  OrtValue* v = NULL;
  *rc = ort_failed(&rt->ort, rt->ort.CreateTensorWithDataAsOrtValue(rt->mem_info, data, bytes, dims, ndim, type, &v),
                   "CreateTensorWithDataAsOrtValue");
  return *rc ? NULL : v;
}

/* Fills rt->ort from ONNX Runtime's table (every slot must be set), then checks what can be checked without
 * running a graph: a status made with a known code and message reads back both; a tensor wrapped over a known
 * buffer with a known shape reads back its type, rank, dimensions and data pointer. A table laid out otherwise
 * than ort_api.h says fails here, not in the middle of a run. */
static leap_status bind_ort(leap_runtime* rt, const void* table) {
  const void* const* slots = (const void* const*)table;
#define LEAP_ORT_BIND(slot, ret, name, params)                                                       \
  if (!slots[slot]) return fail(LEAP_ERR_ONNXRUNTIME, "ONNX Runtime %s has no %s (slot %d)", rt->ort_version, \
                                #name, slot);                                                        \
  memcpy(&rt->ort.name, &slots[slot], sizeof rt->ort.name);
  LEAP_ORT_SLOTS(LEAP_ORT_BIND)
#undef LEAP_ORT_BIND
  const leap_ort* ort = &rt->ort;
  OrtStatus* s = ort->CreateStatus(ORT_RUNTIME_EXCEPTION, "leap probe");
  int ok = s && ort->GetErrorCode(s) == ORT_RUNTIME_EXCEPTION && !strcmp(ort->GetErrorMessage(s), "leap probe");
  if (s) ort->ReleaseStatus(s);
  if (!ok) return fail(LEAP_ERR_ONNXRUNTIME, "ONNX Runtime %s: its C API table is not laid out as expected", rt->ort_version);
  leap_status rc = ort_failed(ort, ort->CreateCpuMemoryInfo(ORT_ARENA_ALLOCATOR, ORT_MEM_TYPE_DEFAULT, &rt->mem_info),
                              "CreateCpuMemoryInfo");
  if (rc) return rc;
  float probe[30];
  int64_t want[3] = {2, 3, 5}, got[LEAP_MAX_DIMS] = {0};
  OrtValue* v = wrap(rt, probe, sizeof probe, want, 3, ORT_FLOAT, &rc);
  if (!v) return rc;
  int type = 0;
  size_t ndim = 0;
  void* data = NULL;
  rc = shape_of(ort, v, &type, got, &ndim);
  if (!rc) rc = ort_failed(ort, ort->GetTensorMutableData(v, &data), "GetTensorMutableData");
  ort->ReleaseValue(v);
  if (rc) return rc;
  if (type != ORT_FLOAT || ndim != 3 || got[0] != 2 || got[1] != 3 || got[2] != 5 || data != (void*)probe)
    return fail(LEAP_ERR_ONNXRUNTIME, "ONNX Runtime %s: its C API table is not laid out as expected", rt->ort_version);
  return LEAP_OK;
}

/* the onnxruntime wheel installed beside this library: <site-packages>/onnxruntime/capi/libonnxruntime.so* */
static int find_wheel_ort(char* out, size_t len) {
  Dl_info info;
  if (!dladdr((void*)&leap_version, &info) || !info.dli_fname) return 0;
  char pattern[LEAP_MAX_PATH];
  const char* slash = strrchr(info.dli_fname, '/');
  int dir = slash ? (int)(slash - info.dli_fname) : 1;
  const char* base = slash ? info.dli_fname : ".";
  for (int up = 1; up <= 2; up++) { /* <site>/trt_runtime/lib.so, and an include/lib layout one level deeper */
    int n = snprintf(pattern, sizeof pattern, "%.*s%s/onnxruntime/capi/libonnxruntime.so*", dir, base,
                     up == 1 ? "/.." : "/../..");
    if (n < 0 || (size_t)n >= sizeof pattern) return 0;
    glob_t g;
    if (glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0) {
      int ok = snprintf(out, len, "%s", g.gl_pathv[0]) < (int)len;
      globfree(&g);
      if (ok) return 1;
    } else {
      globfree(&g);
    }
  }
  return 0;
}

static int default_threads(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return 1;
}

static void runtime_release(leap_runtime* rt) {
  if (!rt || atomic_fetch_sub(&rt->refs, 1) != 1) return;
  /* the library stays loaded: ONNX Runtime is not made to be unloaded (the loader counts references) */
  if (rt->options) rt->ort.ReleaseSessionOptions(rt->options);
  if (rt->mem_info) rt->ort.ReleaseMemoryInfo(rt->mem_info);
  if (rt->env) rt->ort.ReleaseEnv(rt->env);
  free(rt);
}

leap_status leap_runtime_create(const leap_runtime_options* options, leap_runtime** out) {
  if (!out) return fail(LEAP_ERR_ARGUMENT, "leap_runtime_create: out is NULL");
  *out = NULL;
  leap_runtime_options o = {sizeof o, NULL, 0};
  if (options) {
    if (options->struct_size < offsetof(leap_runtime_options, threads) + sizeof(int) || options->struct_size > 4096)
      return fail(LEAP_ERR_ARGUMENT, "leap_runtime_create: options->struct_size must be sizeof(leap_runtime_options)");
    o.ort_library = options->ort_library;
    o.threads = options->threads;
  }
  if (o.threads < 0 || o.threads > LEAP_MAX_THREADS)
    return fail(LEAP_ERR_ARGUMENT, "leap_runtime_create: threads must be 0 (all CPUs) to %d, got %d", LEAP_MAX_THREADS,
                o.threads);
  int threads = o.threads ? o.threads : default_threads();
  char found[LEAP_MAX_PATH];
  const char* path = o.ort_library;
  void* lib = NULL;
  if (!path) path = getenv("LEAP_ORT_LIBRARY");
  if (path && *path) {
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  } else if (find_wheel_ort(found, sizeof found)) {
    path = found;
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  } else {
    path = "libonnxruntime.so.1";
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen(path = "libonnxruntime.so", RTLD_NOW | RTLD_LOCAL);
  }
  if (!lib) {
    const char* why = dlerror();
    return fail(LEAP_ERR_ONNXRUNTIME,
                "cannot load ONNX Runtime's C library %s: %s (pass leap_runtime_options.ort_library; "
                "`leap-export c-api --ort-library` prints the onnxruntime wheel's)",
                path, why ? why : "unknown error");
  }
  const OrtApiBase* (*get_base)(void) = NULL;
  void* sym = dlsym(lib, "OrtGetApiBase");
  if (!sym) return fail(LEAP_ERR_ONNXRUNTIME, "%s is not ONNX Runtime: it has no OrtGetApiBase", path);
  memcpy(&get_base, &sym, sizeof get_base);
  const OrtApiBase* base = get_base();
  leap_runtime* rt = calloc(1, sizeof *rt);
  if (!rt) return fail(LEAP_ERR_MEMORY, "leap_runtime_create: out of memory");
  atomic_init(&rt->refs, 1);
  rt->threads = threads;
  snprintf(rt->ort_version, sizeof rt->ort_version, "%s", base && base->GetVersionString ? base->GetVersionString() : "?");
  const void* table = base && base->GetApi ? base->GetApi(LEAP_ORT_API_VERSION) : NULL;
  leap_status rc;
  if (!table) {
    rc = fail(LEAP_ERR_ONNXRUNTIME,
              "ONNX Runtime %s (%s) does not offer C API version %d (ONNX Runtime >= 1.22 needed)", rt->ort_version,
              path, LEAP_ORT_API_VERSION);
    free(rt);
    return rc;
  }
  rc = bind_ort(rt, table);
  const leap_ort* ort = &rt->ort;
  OrtThreadingOptions* pool = NULL;
  if (!rc) rc = ort_failed(ort, ort->CreateThreadingOptions(&pool), "CreateThreadingOptions");
  if (!rc) rc = ort_failed(ort, ort->SetGlobalIntraOpNumThreads(pool, threads), "SetGlobalIntraOpNumThreads");
  if (!rc) rc = ort_failed(ort, ort->SetGlobalInterOpNumThreads(pool, 1), "SetGlobalInterOpNumThreads");
  if (!rc)
    rc = ort_failed(ort, ort->CreateEnvWithGlobalThreadPools(ORT_LOGGING_LEVEL_ERROR, "leap_runtime", pool, &rt->env),
                    "CreateEnvWithGlobalThreadPools");
  if (pool) ort->ReleaseThreadingOptions(pool);
  if (!rc)
    rc = ort_failed(ort, ort->CreateAndRegisterAllocator(rt->env, rt->mem_info, NULL), "CreateAndRegisterAllocator");
  if (rc == LEAP_ERR_ONNXRUNTIME && strstr(last_error, "already registered")) { /* a second runtime: ONNX */
    rc = LEAP_OK;                                                                 /* Runtime's env is shared */
    last_error[0] = '\0';
  }
  if (!rc) rc = ort_failed(ort, ort->CreateSessionOptions(&rt->options), "CreateSessionOptions");
  if (!rc)
    rc = ort_failed(ort, ort->SetSessionGraphOptimizationLevel(rt->options, ORT_ENABLE_ALL),
                    "SetSessionGraphOptimizationLevel");
  if (!rc) rc = ort_failed(ort, ort->DisablePerSessionThreads(rt->options), "DisablePerSessionThreads");
  if (!rc)
    rc = ort_failed(ort, ort->AddSessionConfigEntry(rt->options, "session.use_env_allocators", "1"),
                    "AddSessionConfigEntry");
  if (rc) {
    runtime_release(rt);
    return rc;
  }
  *out = rt;
  return LEAP_OK;
}

const char* leap_runtime_ort_version(const leap_runtime* rt) { return rt ? rt->ort_version : ""; }
int leap_runtime_threads(const leap_runtime* rt) { return rt ? rt->threads : 0; }
void leap_runtime_destroy(leap_runtime* rt) { runtime_release(rt); }

/* -- models ------------------------------------------------------------------------------------------ */

typedef struct {
  OrtValue* value; /* a run's output, or a compacted copy over `own` */
  void* own;
} held_t;

typedef struct {
  OrtSession* session;
  int32_t end;       /* the layer this segment ends at (its exit layer) */
  int32_t ref_layer; /* its score is cos(p_end, p_ref_layer) */
  int n_in, n_out;
  int pooled, score; /* output indices; score -1: no score (a monolithic graph: every row leaves) */
  int held_base;     /* its outputs' first slot in a run's held-values table */
  char** in_names;
  int* src_seg;  /* SRC_IDS, SRC_MASK, or a segment before this one */
  int* src_out;  /* ... and that segment's output index */
  char** out_names;
  int* seq_axis; /* the sequence axis of each output (-1: none), for the padding trim */
  int* last_use; /* the last segment that takes the output as an input (-1: none) */
} seg_t;

struct leap_model {
  leap_runtime* rt;
  int n_seg, total_out, max_in, max_out;
  seg_t* seg;
  int32_t* layers;
  int graph_only;  /* leap_model_open_graph: no policy, no vocabulary */
  int id_type;     /* the graphs' id and mask element type (0: as given: open_graph) */
  int32_t hidden, num_layers, max_seq, vocab, pad_id, normalize;
  leap_policy default_policy;
  char* variant;
  char* architecture;
  pthread_mutex_t lock;
  double* totals; /* [3 * n_seg]: per segment the sum of its scores, rows run, rows that left */
};

static void model_free(leap_model* m) {
  if (!m) return;
  for (int k = 0; m->seg && k < m->n_seg; k++) {
    seg_t* s = &m->seg[k];
    if (s->session) m->rt->ort.ReleaseSession(s->session);
    for (int i = 0; s->in_names && i < s->n_in; i++) free(s->in_names[i]);
    for (int j = 0; s->out_names && j < s->n_out; j++) free(s->out_names[j]);
    free(s->in_names), free(s->src_seg), free(s->src_out), free(s->out_names), free(s->seq_axis), free(s->last_use);
  }
  free(m->seg), free(m->layers), free(m->totals), free(m->variant), free(m->architecture);
  pthread_mutex_destroy(&m->lock);
  runtime_release(m->rt);
  free(m);
}

void leap_model_close(leap_model* m) { model_free(m); }

static leap_model* model_new(leap_runtime* rt, int n_seg) {
  leap_model* m = calloc(1, sizeof *m);
  if (!m) return NULL;
  pthread_mutex_init(&m->lock, NULL);
  atomic_fetch_add(&rt->refs, 1);
  m->rt = rt;
  m->n_seg = n_seg;
  m->seg = calloc((size_t)n_seg, sizeof *m->seg);
  m->layers = calloc((size_t)n_seg, sizeof *m->layers);
  m->totals = calloc(3 * (size_t)n_seg, sizeof *m->totals);
  if (!m->seg || !m->layers || !m->totals) {
    model_free(m);
    return NULL;
  }
  return m;
}

/* room for segment k's inputs and outputs */
static int seg_alloc(seg_t* s, int n_in, int n_out) {
  s->n_in = n_in, s->n_out = n_out;
  s->in_names = calloc((size_t)n_in, sizeof(char*));
  s->src_seg = calloc((size_t)n_in, sizeof(int));
  s->src_out = calloc((size_t)n_in, sizeof(int));
  s->out_names = calloc((size_t)n_out, sizeof(char*));
  s->seq_axis = calloc((size_t)n_out, sizeof(int));
  s->last_use = calloc((size_t)n_out, sizeof(int));
  if (!s->in_names || !s->src_seg || !s->src_out || !s->out_names || !s->seq_axis || !s->last_use) return -1;
  for (int j = 0; j < n_out; j++) s->last_use[j] = -1;
  return 0;
}

/* once every segment is described: where each output is last used, the held-values layout, the maxima */
static void model_finish(leap_model* m) {
  m->total_out = m->max_in = m->max_out = 0;
  for (int k = 0; k < m->n_seg; k++) {
    seg_t* s = &m->seg[k];
    s->held_base = m->total_out;
    m->total_out += s->n_out;
    if (s->n_in > m->max_in) m->max_in = s->n_in;
    if (s->n_out > m->max_out) m->max_out = s->n_out;
    for (int i = 0; i < s->n_in; i++)
      if (s->src_seg[i] >= 0) m->seg[s->src_seg[i]].last_use[s->src_out[i]] = k;
    m->layers[k] = s->end;
  }
}

static leap_status open_session(leap_model* m, seg_t* s, const char* path) {
  return ort_failed(&m->rt->ort, m->rt->ort.CreateSession(m->rt->env, path, m->rt->options, &s->session), path);
}

static char* dup_str(const char* s) {
  size_t n = strlen(s) + 1;
  char* d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* reads a whole file (at most `limit` bytes) into a NUL-terminated buffer */
static leap_status read_file(const char* path, size_t limit, char** out, size_t* len) {
  struct stat st;
  if (stat(path, &st) != 0) return fail(LEAP_ERR_ARTIFACT, "%s: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode)) return fail(LEAP_ERR_ARTIFACT, "%s is not a regular file", path);
  if ((unsigned long long)st.st_size > limit)
    return fail(LEAP_ERR_ARTIFACT, "%s is larger than %zu bytes", path, limit);
  FILE* f = fopen(path, "rb");
  if (!f) return fail(LEAP_ERR_ARTIFACT, "%s: %s", path, strerror(errno));
  char* buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    fclose(f);
    return fail(LEAP_ERR_MEMORY, "out of memory reading %s", path);
  }
  size_t n = fread(buf, 1, (size_t)st.st_size, f);
  int bad = ferror(f);
  fclose(f);
  if (bad || n != (size_t)st.st_size) {
    free(buf);
    return fail(LEAP_ERR_ARTIFACT, "%s: a read error", path);
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return LEAP_OK;
}

static leap_status read_json(const char* path, size_t limit, lj_value* out) {
  char* text = NULL;
  size_t len = 0;
  leap_status rc = read_file(path, limit, &text, &len);
  if (rc) return rc;
  char err[256];
  if (lj_parse(text, len, out, err, sizeof err)) rc = fail(LEAP_ERR_ARTIFACT, "%s is not valid JSON: %s", path, err);
  free(text);
  return rc;
}

/* folder/name for a file the manifest names: relative, no "..", no empty name */
static leap_status artifact_path(const char* folder, const lj_value* name, const char* where, char* out) {
  if (!name || name->type != LJ_STRING || !name->length || strlen(name->string) != name->length)
    return fail(LEAP_ERR_ARTIFACT, "manifest.json: %s must be a file name", where);
  const char* f = name->string;
  if (f[0] == '/' || !strcmp(f, "..") || !strncmp(f, "../", 3) || strstr(f, "/../") ||
      (name->length >= 3 && !strcmp(f + name->length - 3, "/..")))
    return fail(LEAP_ERR_ARTIFACT, "manifest.json: %s names %s, outside the artifact folder", where, f);
  int n = snprintf(out, LEAP_MAX_PATH, "%s/%s", folder, f);
  if (n < 0 || n >= LEAP_MAX_PATH) return fail(LEAP_ERR_ARTIFACT, "a path longer than %d bytes", LEAP_MAX_PATH);
  return LEAP_OK;
}

/* a {"file", "sha256"} entry: its path, and its hash compared unless `trust` */
static leap_status check_file(const char* folder, const lj_value* entry, const char* where, int trust, char* path) {
  if (!entry || entry->type != LJ_OBJECT)
    return fail(LEAP_ERR_ARTIFACT, "manifest.json: %s must be an object with \"file\" and \"sha256\"", where);
  leap_status rc = artifact_path(folder, lj_get(entry, "file"), where, path);
  if (rc) return rc;
  const lj_value* sha = lj_get(entry, "sha256");
  if (!sha || sha->type != LJ_STRING) return fail(LEAP_ERR_ARTIFACT, "manifest.json: %s.sha256 must be a string", where);
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
    return fail(LEAP_ERR_ARTIFACT, "artifact folder %s is not intact: missing file %s", folder, path);
  if (trust) return LEAP_OK;
  char hex[65];
  if (leap_sha256_file(path, hex)) return fail(LEAP_ERR_ARTIFACT, "%s: %s", path, strerror(errno));
  if (strcmp(hex, sha->string))
    return fail(LEAP_ERR_ARTIFACT,
                "artifact folder %s is not intact: %s does not match its sha256 in the manifest (corrupt or "
                "replaced); rebuild it with `leap-export build`",
                folder, path);
  return LEAP_OK;
}

static int str_is(const lj_value* v, const char* s) { return v && v->type == LJ_STRING && !strcmp(v->string, s); }

static int index_of(const lj_value* named_list, const char* name) {
  for (size_t i = 0; named_list && i < named_list->length; i++)
    if (str_is(lj_get(&named_list->items[i], "name"), name)) return (int)i;
  return -1;
}

/* the vocabulary size of a tokenizer.json: 1 + the largest id of its model's vocab and added tokens
 * (WordPiece / BPE: a {token: id} object; Unigram: a list of [piece, score], ids by position) */
static leap_status vocab_size(const char* path, int32_t* out) {
  lj_value tok;
  leap_status rc = read_json(path, LEAP_MAX_TOKENIZER, &tok);
  if (rc) return rc;
  const lj_value* vocab = lj_get(lj_get(&tok, "model"), "vocab");
  int64_t top = -1, id;
  if (vocab && vocab->type == LJ_OBJECT) {
    for (size_t i = 0; i < vocab->length; i++)
      if (lj_int(&vocab->items[i], 0, INT32_MAX - 1, &id) && id > top) top = id;
  } else if (vocab && vocab->type == LJ_ARRAY) {
    top = (int64_t)vocab->length - 1;
  }
  const lj_value* added = lj_get(&tok, "added_tokens");
  for (size_t i = 0; added && added->type == LJ_ARRAY && i < added->length; i++)
    if (lj_int(lj_get(&added->items[i], "id"), 0, INT32_MAX - 1, &id) && id > top) top = id;
  lj_free(&tok);
  if (top < 0 || top >= INT32_MAX) return fail(LEAP_ERR_ARTIFACT, "%s has no vocabulary (model.vocab)", path);
  *out = (int32_t)(top + 1);
  return LEAP_OK;
}

#define BAD(...) fail(LEAP_ERR_ARTIFACT, __VA_ARGS__)

static leap_status read_policy(const lj_value* p, leap_policy* out) {
  /* ExitPolicy's defaults for keys a manifest leaves out */
  leap_policy d = {0.95f, 1, 1, 1};
  int64_t v;
  if (!p || p->type != LJ_OBJECT) return BAD("manifest.json: exit_policy must be an object");
  const lj_value* theta = lj_get(p, "theta");
  if (theta) {
    if (theta->type != LJ_NUMBER || !(theta->number > 0 && theta->number <= 1))
      return BAD("manifest.json: exit_policy.theta must be a number in (0, 1]");
    d.theta = (float)theta->number;
  }
  if (lj_get(p, "patience")) {
    if (!lj_int(lj_get(p, "patience"), 1, LEAP_MAX_SEGMENTS, &v)) return BAD("manifest.json: exit_policy.patience must be an integer >= 1");
    d.patience = (int32_t)v;
  }
  if (lj_get(p, "min_layer")) {
    if (!lj_int(lj_get(p, "min_layer"), 1, INT32_MAX, &v)) return BAD("manifest.json: exit_policy.min_layer must be an integer >= 1");
    d.min_layer = (int32_t)v;
  }
  const lj_value* en = lj_get(p, "enabled");
  if (en) {
    if (en->type != LJ_TRUE && en->type != LJ_FALSE) return BAD("manifest.json: exit_policy.enabled must be true or false");
    d.exits = en->type == LJ_TRUE;
  }
  *out = d;
  return LEAP_OK;
}

/* the manifest's structure, geometry and chosen variant into m; the graphs' paths into paths[k] */
static leap_status read_manifest(leap_model* m, const lj_value* man, const char* folder, const char* variant,
                                 char (*paths)[LEAP_MAX_PATH]) {
  int64_t v;
  const lj_value *segs = lj_get(man, "segments"), *variants = lj_get(man, "variants");
  if (!lj_int(lj_get(man, "num_layers"), 1, LEAP_MAX_SEGMENTS, &v)) return BAD("manifest.json: num_layers must be an integer 1..1024");
  m->num_layers = (int32_t)v;
  if (!lj_int(lj_get(man, "hidden_size"), 1, LEAP_MAX_HIDDEN, &v)) return BAD("manifest.json: hidden_size must be a positive integer");
  m->hidden = (int32_t)v;
  if (!lj_int(lj_get(man, "max_seq_length"), 1, INT32_MAX, &v)) return BAD("manifest.json: max_seq_length must be a positive integer");
  m->max_seq = (int32_t)v;
  if (!str_is(lj_get(man, "pooling"), "mean")) return BAD("manifest.json: pooling must be \"mean\"");
  const lj_value* norm = lj_get(man, "normalize");
  if (!norm || (norm->type != LJ_TRUE && norm->type != LJ_FALSE)) return BAD("manifest.json: normalize must be true or false");
  m->normalize = norm->type == LJ_TRUE;
  const lj_value* arch = lj_get(man, "architecture");
  if (!arch || arch->type != LJ_STRING) return BAD("manifest.json: architecture must be a string");
  if (!(m->architecture = dup_str(arch->string))) return fail(LEAP_ERR_MEMORY, "out of memory");
  leap_status rc = read_policy(lj_get(man, "exit_policy"), &m->default_policy);
  if (rc) return rc;
  /* the graphs' id type (io.ids; int32 unless it says int64) */
  const lj_value* ids = lj_get(lj_get(man, "io"), "ids");
  m->id_type = str_is(ids, "int64") ? ORT_INT64 : ORT_INT32;
  if (ids && !str_is(ids, "int64") && !str_is(ids, "int32")) return BAD("manifest.json: io.ids must be \"int32\" or \"int64\"");

  /* the variant */
  if (!variants || variants->type != LJ_OBJECT || !variants->length) return BAD("manifest.json: variants must be a non-empty object");
  const lj_value* dv = lj_get(man, "default_variant");
  const char* name = variant ? variant : dv && dv->type == LJ_STRING ? dv->string : variants->keys[0];
  const lj_value* var = lj_get(variants, name);
  if (!var) return BAD("%s: no '%s' build in this artifact folder", folder, name);
  if (!(m->variant = dup_str(name))) return fail(LEAP_ERR_MEMORY, "out of memory");
  const lj_value* backend = lj_get(var, "backend");
  if (backend && !str_is(backend, "onnxruntime"))
    return fail(LEAP_ERR_UNSUPPORTED, "variant '%s' is built for %s; this library runs ONNX Runtime builds only", name,
                backend->type == LJ_STRING ? backend->string : "another backend");
  const lj_value* files = lj_get(var, "segments");
  if (!files || files->type != LJ_ARRAY || files->length != (size_t)m->n_seg)
    return BAD("manifest.json: variants.%s.segments must list one file per segment (%d)", name, m->n_seg);

  for (int k = 0; k < m->n_seg; k++) {
    const lj_value* s = &segs->items[k];
    seg_t* g = &m->seg[k];
    const lj_value *layers = lj_get(s, "layers"), *ins = lj_get(s, "inputs"), *outs = lj_get(s, "outputs");
    int64_t a, b, idx, ref;
    if (s->type != LJ_OBJECT) return BAD("manifest.json: segments[%d] must be an object", k);
    if (!lj_int(lj_get(s, "index"), k, k, &idx)) return BAD("manifest.json: segments[%d].index must be %d (its place in the list)", k, k);
    if (!layers || layers->type != LJ_ARRAY || layers->length != 2 || !lj_int(&layers->items[0], 0, m->num_layers, &a) ||
        !lj_int(&layers->items[1], 1, m->num_layers, &b) || b <= a)
      return BAD("manifest.json: segments[%d].layers must be [first layer - 1, last layer]", k);
    if (a != (k ? m->seg[k - 1].end : 0)) return BAD("manifest.json: segment %d does not start where the one before ends", k);
    if (k == m->n_seg - 1 && b != m->num_layers) return BAD("manifest.json: the last segment must end at layer %d", m->num_layers);
    g->end = (int32_t)b;
    if (!lj_int(lj_get(s, "ref_layer"), 0, m->num_layers, &ref)) return BAD("manifest.json: segments[%d].ref_layer must be an integer >= 0", k);
    g->ref_layer = (int32_t)ref;
    if (!ins || ins->type != LJ_ARRAY || !ins->length || ins->length > LEAP_MAX_IO || !outs || outs->type != LJ_ARRAY ||
        !outs->length || outs->length > LEAP_MAX_IO)
      return BAD("manifest.json: segments[%d].inputs and .outputs must be lists of 1 to %d {\"name\": ...}", k, LEAP_MAX_IO);
    if (seg_alloc(g, (int)ins->length, (int)outs->length)) return fail(LEAP_ERR_MEMORY, "out of memory");
    for (int j = 0; j < g->n_out; j++) {
      const lj_value* o = &outs->items[j];
      const lj_value *oname = lj_get(o, "name"), *shape = lj_get(o, "shape");
      if (!oname || oname->type != LJ_STRING) return BAD("manifest.json: segments[%d].outputs[%d].name must be a string", k, j);
      if (!(g->out_names[j] = dup_str(oname->string))) return fail(LEAP_ERR_MEMORY, "out of memory");
      g->seq_axis[j] = -1;
      for (size_t d = 0; shape && shape->type == LJ_ARRAY && d < shape->length; d++)
        if (str_is(&shape->items[d], "sequence")) g->seq_axis[j] = (int)d;
      if (g->seq_axis[j] == 0 || g->seq_axis[j] >= LEAP_MAX_DIMS)
        return BAD("manifest.json: segments[%d].outputs[%d]: the sequence axis cannot be axis %d", k, j, g->seq_axis[j]);
    }
    g->pooled = index_of(outs, "pooled");
    g->score = index_of(outs, "score");
    if (g->pooled < 0 || g->score < 0) return fail(LEAP_ERR_UNSUPPORTED, "segment %d has no pooled or score output", k);
    const lj_value* ref_from = lj_get(s, "ref_from");
    const lj_value* ref_output = lj_get(s, "ref_output");
    for (int i = 0; i < g->n_in; i++) {
      const lj_value* iname = lj_get(&ins->items[i], "name");
      if (!iname || iname->type != LJ_STRING) return BAD("manifest.json: segments[%d].inputs[%d].name must be a string", k, i);
      const char* in = iname->string;
      if (!(g->in_names[i] = dup_str(in))) return fail(LEAP_ERR_MEMORY, "out of memory");
      int from = -3, out = -1;
      if (k == 0 && !strcmp(in, "input_ids")) from = SRC_IDS, out = 0;
      else if (k == 0 && !strcmp(in, "attention_mask")) from = SRC_MASK, out = 0;
      else if (k > 0 && !strcmp(in, "hidden_in")) from = k - 1, out = index_of(lj_get(&segs->items[k - 1], "outputs"), "hidden_out");
      else if (k > 0 && (!strcmp(in, "mask_bias") || !strcmp(in, "pool_weights")))
        from = 0, out = index_of(lj_get(&segs->items[0], "outputs"), in);
      else if (!strcmp(in, "ref_pooled") && ref_from && ref_from->type == LJ_NUMBER) {
        if (!lj_int(ref_from, 0, k - 1, &v)) return BAD("manifest.json: segments[%d].ref_from must be an earlier segment", k);
        from = (int)v;
        const char* want = ref_output && ref_output->type == LJ_STRING ? ref_output->string : "pooled";
        out = index_of(lj_get(&segs->items[from], "outputs"), want);
      }
      if (from == -3)
        return fail(LEAP_ERR_UNSUPPORTED, "segment %d takes an input this library does not know: %s", k, in);
      if (out < 0) return BAD("manifest.json: segment %d's input %s has no source output", k, in);
      g->src_seg[i] = from;
      g->src_out[i] = out;
    }
    char where[64];
    snprintf(where, sizeof where, "variants.%s.segments[%d]", name, k);
    if ((rc = check_file(folder, &files->items[k], where, 1, paths[k]))) return rc; /* hashed once all is read */
  }
  if (m->seg[m->n_seg - 1].end != m->num_layers) return BAD("manifest.json: the last segment must end at layer %d", m->num_layers);
  return LEAP_OK;
}

leap_status leap_model_open(leap_runtime* rt, const char* folder, const leap_open_options* options, leap_model** out) {
  if (!out) return fail(LEAP_ERR_ARGUMENT, "leap_model_open: out is NULL");
  *out = NULL;
  if (!rt || !folder) return fail(LEAP_ERR_ARGUMENT, "leap_model_open: runtime and folder must not be NULL");
  if (strlen(folder) > LEAP_MAX_PATH - 256) return fail(LEAP_ERR_ARGUMENT, "leap_model_open: the folder path is too long");
  const char* variant = NULL;
  uint32_t flags = 0;
  if (options) {
    if (options->struct_size < offsetof(leap_open_options, flags) + sizeof(uint32_t) || options->struct_size > 4096)
      return fail(LEAP_ERR_ARGUMENT, "leap_model_open: options->struct_size must be sizeof(leap_open_options)");
    variant = options->variant;
    flags = options->flags;
  }
  struct stat st;
  if (stat(folder, &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(LEAP_ERR_ARTIFACT, "%s is not a folder; pass the --out folder of `leap-export build`", folder);
  char path[LEAP_MAX_PATH];
  snprintf(path, sizeof path, "%s/manifest.json", folder);
  if (stat(path, &st) != 0)
    return fail(LEAP_ERR_ARTIFACT, "%s has no manifest.json; is it a `leap-export build` output folder?", folder);
  lj_value man;
  leap_status rc = read_json(path, LEAP_MAX_MANIFEST, &man);
  if (rc) return rc;
  leap_model* m = NULL;
  char (*paths)[LEAP_MAX_PATH] = NULL;
  int64_t v;
  const lj_value *fmt = lj_get(&man, "format"), *segs = lj_get(&man, "segments");
  if (man.type != LJ_OBJECT || !str_is(fmt, "leap-export")) {
    rc = BAD("%s: not a leap-export manifest (format must be \"leap-export\")", path);
    goto done;
  }
  if (!lj_int(lj_get(&man, "schema_version"), 2, 2, &v)) {
    rc = BAD("%s: schema_version must be 2, the version this library reads; rebuild the artifacts or update leap-export", path);
    goto done;
  }
  if (!segs || segs->type != LJ_ARRAY || !segs->length || segs->length > LEAP_MAX_SEGMENTS) {
    rc = BAD("%s: segments must be a list of 1 to %d segments", path, LEAP_MAX_SEGMENTS);
    goto done;
  }
  m = model_new(rt, (int)segs->length);
  paths = calloc(segs->length, sizeof *paths);
  if (!m || !paths) {
    rc = fail(LEAP_ERR_MEMORY, "out of memory");
    goto done;
  }
  int trust = (flags & LEAP_OPEN_NO_HASH_CHECK) != 0;
  if ((rc = read_manifest(m, &man, folder, variant, paths))) {
    if (rc == LEAP_ERR_ARTIFACT && !strncmp(last_error, "manifest.json: ", 15)) { /* name the folder */
      char named[sizeof last_error];
      if (snprintf(named, sizeof named, "%s/%s", folder, last_error) > 0) /* truncated if need be */
        memcpy(last_error, named, sizeof last_error);
    }
    goto done;
  }
  const lj_value* tok = lj_get(&man, "tokenizer");
  char tok_path[LEAP_MAX_PATH];
  if ((rc = check_file(folder, tok, "tokenizer", trust, tok_path))) goto done;
  if (!lj_int(lj_get(tok, "pad_id"), 0, INT32_MAX, &v)) {
    rc = BAD("%s: tokenizer.pad_id must be an integer >= 0", path);
    goto done;
  }
  m->pad_id = (int32_t)v;
  if (!lj_int(lj_get(tok, "max_length"), 1, INT32_MAX, &v)) {
    rc = BAD("%s: tokenizer.max_length must be a positive integer", path);
    goto done;
  }
  if (v < m->max_seq) m->max_seq = (int32_t)v; /* truncation: no row is ever longer */
  if ((rc = vocab_size(tok_path, &m->vocab))) goto done;
  if (m->pad_id >= m->vocab) {
    rc = BAD("%s: tokenizer.pad_id %d is outside the vocabulary (%d)", path, m->pad_id, m->vocab);
    goto done;
  }
  /* the graphs' hashes last: every cheaper check has passed by then (hashing reads every byte) */
  const lj_value* files = lj_get(lj_get(lj_get(&man, "variants"), m->variant), "segments");
  for (int k = 0; k < m->n_seg && !trust; k++) {
    char where[64];
    snprintf(where, sizeof where, "variants.%s.segments[%d]", m->variant, k);
    if ((rc = check_file(folder, &files->items[k], where, 0, paths[k]))) goto done;
  }
  model_finish(m);
  for (int k = 0; k < m->n_seg; k++)
    if ((rc = open_session(m, &m->seg[k], paths[k]))) goto done;
done:
  lj_free(&man);
  free(paths);
  if (rc) {
    model_free(m);
    return rc;
  }
  *out = m;
  return LEAP_OK;
}

leap_status leap_model_open_graph(leap_runtime* rt, const char* onnx_path, const char* const* output_names,
                                  size_t num_outputs, size_t pooled, int32_t hidden_size, leap_model** out) {
  if (!out) return fail(LEAP_ERR_ARGUMENT, "leap_model_open_graph: out is NULL");
  *out = NULL;
  if (!rt || !onnx_path || !output_names)
    return fail(LEAP_ERR_ARGUMENT, "leap_model_open_graph: runtime, onnx_path and output_names must not be NULL");
  if (!num_outputs || num_outputs > LEAP_MAX_IO || pooled >= num_outputs || hidden_size < 1 || hidden_size > LEAP_MAX_HIDDEN)
    return fail(LEAP_ERR_ARGUMENT, "leap_model_open_graph: 1 to %d outputs, pooled one of them, hidden_size >= 1",
                LEAP_MAX_IO);
  for (size_t j = 0; j < num_outputs; j++)
    if (!output_names[j]) return fail(LEAP_ERR_ARGUMENT, "leap_model_open_graph: output_names[%zu] is NULL", j);
  leap_model* m = model_new(rt, 1);
  if (!m) return fail(LEAP_ERR_MEMORY, "out of memory");
  seg_t* s = &m->seg[0];
  m->graph_only = 1;
  m->hidden = hidden_size;
  m->num_layers = 1;
  m->max_seq = INT32_MAX;
  m->default_policy = (leap_policy){1.0f, 1, 1, 0};
  leap_status rc = LEAP_OK;
  if (seg_alloc(s, 2, (int)num_outputs) || !(m->variant = dup_str("graph")) || !(m->architecture = dup_str("")))
    rc = fail(LEAP_ERR_MEMORY, "out of memory");
  if (!rc) {
    s->end = 0;
    s->pooled = (int)pooled;
    s->score = -1;
    const char* names[2] = {"input_ids", "attention_mask"};
    for (int i = 0; i < 2; i++) {
      s->src_seg[i] = i ? SRC_MASK : SRC_IDS;
      if (!(s->in_names[i] = dup_str(names[i]))) rc = fail(LEAP_ERR_MEMORY, "out of memory");
    }
    for (size_t j = 0; j < num_outputs && !rc; j++) {
      s->seq_axis[j] = -1;
      if (!(s->out_names[j] = dup_str(output_names[j]))) rc = fail(LEAP_ERR_MEMORY, "out of memory");
    }
  }
  if (!rc) {
    model_finish(m);
    rc = open_session(m, s, onnx_path);
  }
  if (rc) {
    model_free(m);
    return rc;
  }
  *out = m;
  return LEAP_OK;
}

leap_status leap_model_info_get(const leap_model* m, leap_model_info* out) {
  if (!m || !out) return fail(LEAP_ERR_ARGUMENT, "leap_model_info_get: model and out must not be NULL");
  out->num_layers = m->num_layers;
  out->hidden_size = m->hidden;
  out->max_seq_length = m->graph_only ? 0 : m->max_seq;
  out->vocab_size = m->vocab;
  out->pad_id = m->pad_id;
  out->normalize = m->normalize;
  out->num_segments = m->n_seg;
  out->segment_layers = m->layers;
  out->default_policy = m->default_policy;
  out->variant = m->variant;
  out->architecture = m->architecture;
  return LEAP_OK;
}

leap_status leap_stats(leap_model* m, leap_segment_stats* out, size_t out_len, int reset) {
  if (!m || !out) return fail(LEAP_ERR_ARGUMENT, "leap_stats: model and out must not be NULL");
  if (out_len < (size_t)m->n_seg)
    return fail(LEAP_ERR_ARGUMENT, "leap_stats: out holds %zu entries; this model has %d segments", out_len, m->n_seg);
  pthread_mutex_lock(&m->lock);
  for (int k = 0; k < m->n_seg; k++) {
    out[k].layer = m->layers[k];
    out[k].score_sum = m->totals[3 * k];
    out[k].rows = (int64_t)m->totals[3 * k + 1];
    out[k].exited = (int64_t)m->totals[3 * k + 2];
  }
  if (reset) memset(m->totals, 0, 3 * (size_t)m->n_seg * sizeof *m->totals);
  pthread_mutex_unlock(&m->lock);
  return LEAP_OK;
}

/* -- running a batch --------------------------------------------------------------------------------- */

static int elem_size(int type) {
  return type == ORT_FLOAT || type == ORT_INT32 ? 4 : type == ORT_INT64 || type == ORT_DOUBLE ? 8 : 0;
}

static void release_held(const leap_ort* ort, held_t* h) {
  if (h->value) ort->ReleaseValue(h->value);
  free(h->own);
  h->value = NULL;
  h->own = NULL;
}

/* keep only rows `keep` (n of them) and the first `width` positions of the sequence axis */
static leap_status compact(const leap_runtime* rt, held_t* h, const int64_t* keep, int64_t n, int seq_axis,
                           int64_t width) {
  const leap_ort* ort = &rt->ort;
  int type = 0;
  size_t ndim = 0;
  int64_t dims[LEAP_MAX_DIMS];
  void* data = NULL;
  leap_status rc = shape_of(ort, h->value, &type, dims, &ndim);
  if (!rc) rc = ort_failed(ort, ort->GetTensorMutableData(h->value, &data), "GetTensorMutableData");
  if (rc) return rc;
  int es = elem_size(type);
  if (!es || ndim < 1 || (seq_axis >= 0 && (size_t)seq_axis >= ndim))
    return fail(LEAP_ERR_ONNXRUNTIME, "compaction: an output of an unexpected type or shape");
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
  if (!dst) return fail(LEAP_ERR_MEMORY, "compaction: out of memory");
  const char* src = data;
  char* d = dst;
  for (int64_t r = 0; r < n; r++)
    for (int64_t o = 0; o < outer; o++, d += chunk) memcpy(d, src + (size_t)keep[r] * row_in + (size_t)o * span, chunk);
  dims[0] = n;
  if (seq_axis > 0) dims[seq_axis] = width;
  OrtValue* v = wrap(rt, dst, bytes, dims, ndim, type, &rc);
  if (!v) {
    free(dst);
    return rc;
  }
  release_held(ort, h);
  h->value = v;
  h->own = dst;
  return LEAP_OK;
}

static int64_t token_at(const void* data, int type, int64_t i) {
  return type == ORT_INT32 ? (int64_t)((const int32_t*)data)[i] : ((const int64_t*)data)[i];
}

/* the policy as per-segment "may a row leave here", after checking it against the build */
static leap_status exit_rule(const leap_model* m, const leap_policy* p, uint8_t* can_exit) {
  if (m->graph_only || !p->exits) {
    memset(can_exit, 0, (size_t)m->n_seg);
    if (m->graph_only) return LEAP_OK;
  }
  if (!(p->theta > 0.0f && p->theta <= 1.0f)) /* NaN fails too */
    return fail(LEAP_ERR_POLICY, "theta must be a number in (0, 1], got %g", (double)p->theta);
  if (p->min_layer < 1 || p->min_layer > m->num_layers)
    return fail(LEAP_ERR_POLICY, "min_layer %d: pass a value from 1 to %d", p->min_layer, m->num_layers);
  if (p->patience != m->default_policy.patience)
    return fail(LEAP_ERR_POLICY,
                "these artifacts compute convergence scores with patience k=%d inside the graphs; k=%d needs a "
                "rebuild (`leap-export build ... --patience %d`)",
                m->default_policy.patience, p->patience, p->patience);
  for (int k = 0; k < m->n_seg; k++) {
    int32_t end = m->seg[k].end;
    can_exit[k] = p->exits && end >= p->min_layer && end > p->patience && end < m->num_layers;
    if (can_exit[k] && m->seg[k].ref_layer != end - p->patience)
      return fail(LEAP_ERR_POLICY,
                  "min_layer %d allows exits after layer %d, where these artifacts' graphs compare with another layer "
                  "than l - %d (the build planned no exit there); pass a higher min_layer or rebuild",
                  p->min_layer, end, p->patience);
  }
  return LEAP_OK;
}

leap_status leap_run(leap_model* m, const leap_tensor* input_ids, const leap_tensor* mask, const leap_policy* policy,
                     uint32_t flags, float* embeddings, size_t embeddings_len, int64_t* exit_layers,
                     size_t exit_layers_len) {
  if (!m || !input_ids || !mask || !embeddings)
    return fail(LEAP_ERR_ARGUMENT, "leap_run: model, input_ids, mask and embeddings must not be NULL");
  if (!input_ids->data || !mask->data) return fail(LEAP_ERR_ARGUMENT, "leap_run: input_ids->data and mask->data must not be NULL");
  if (flags & ~(uint32_t)LEAP_RUN_NORMALIZE) return fail(LEAP_ERR_ARGUMENT, "leap_run: unknown flags 0x%x", flags);
  const int64_t B = input_ids->rows, T = input_ids->cols, H = m->hidden;
  const int type = (int)input_ids->dtype;
  if (type != ORT_INT32 && type != ORT_INT64)
    return fail(LEAP_ERR_INPUT, "input_ids must be int32 or int64 (LEAP_INT32, LEAP_INT64), got element type %d", type);
  if ((int)mask->dtype != type) return fail(LEAP_ERR_INPUT, "the mask must have the dtype of input_ids");
  if (B < 1) return fail(LEAP_ERR_INPUT, "a batch of %lld rows: it must hold at least one", (long long)B);
  if (T < 1 || T > m->max_seq)
    return fail(LEAP_ERR_INPUT, "a sequence of %lld tokens: this model takes 1 to %d (special tokens included)",
                (long long)T, m->max_seq);
  if (B > (int64_t)(SIZE_MAX / 64) / T || B > (int64_t)(SIZE_MAX / 64) / H)
    return fail(LEAP_ERR_INPUT, "a batch of %lld x %lld: too large", (long long)B, (long long)T);
  if (mask->rows != B || mask->cols != T)
    return fail(LEAP_ERR_INPUT, "the mask is [%lld, %lld]; input_ids are [%lld, %lld]: they must match",
                (long long)mask->rows, (long long)mask->cols, (long long)B, (long long)T);
  if (embeddings_len < (size_t)(B * H))
    return fail(LEAP_ERR_ARGUMENT, "embeddings holds %zu floats; %lld rows need %lld", embeddings_len, (long long)B,
                (long long)(B * H));
  if (exit_layers && exit_layers_len < (size_t)B)
    return fail(LEAP_ERR_ARGUMENT, "exit_layers holds %zu entries; the batch has %lld rows", exit_layers_len, (long long)B);
  const int n_seg = m->n_seg;
  const leap_runtime* rt = m->rt;
  const leap_ort* ort = &rt->ort;
  const int graph_type = m->id_type ? m->id_type : type; /* what the graphs take */
  const int ges = elem_size(graph_type);

  /* one workspace: rows (active, keep, lengths), the held values, a segment's inputs and outputs, the
   * statistics, the exit rule, and the ids and mask converted to the graphs' type where they differ */
  size_t n_held = (size_t)m->total_out, conv = graph_type != type ? 2 * (size_t)(B * T) * (size_t)ges : 0;
  size_t bytes = 3 * (size_t)B * sizeof(int64_t) + n_held * sizeof(held_t) + (size_t)m->max_in * sizeof(void*) +
                 (size_t)m->max_out * sizeof(void*) + 3 * (size_t)n_seg * sizeof(double) + conv + (size_t)n_seg;
  char* ws = calloc(1, bytes);
  if (!ws) return fail(LEAP_ERR_MEMORY, "leap_run: out of memory");
  int64_t* active = (int64_t*)ws; /* rows still running, in input order */
  int64_t *keep = active + B, *lens = active + 2 * B;
  held_t* held = (held_t*)(lens + B);
  const OrtValue** in = (const OrtValue**)(held + n_held);
  OrtValue** outv = (OrtValue**)(in + m->max_in);
  double* stats = (double*)(outv + m->max_out);
  char* converted = (char*)(stats + 3 * n_seg);
  uint8_t* can_exit = (uint8_t*)(converted + conv);
  OrtValue *tok = NULL, *msk = NULL;
  const leap_policy* rule = policy ? policy : &m->default_policy;
  const float theta = rule->theta;
  int finished = 0;
  leap_status rc = exit_rule(m, rule, can_exit);
  if (rc) goto done;

  /* the mask: 0 or 1, ones then zeros (right padding), at least one 1 per row; the ids in the vocabulary */
  const void *ids = input_ids->data, *mk = mask->data;
  for (int64_t r = 0; r < B; r++) {
    int64_t len = 0, p = 0;
    for (; p < T && token_at(mk, type, r * T + p) == 1; p++) len++;
    for (; p < T && token_at(mk, type, r * T + p) == 0; p++) {
    }
    if (p < T) {
      rc = fail(LEAP_ERR_INPUT, "mask row %lld, position %lld: a mask row is ones then zeros (right padding), got %lld",
                (long long)r, (long long)p, (long long)token_at(mk, type, r * T + p));
      goto done;
    }
    if (!len) {
      rc = fail(LEAP_ERR_INPUT, "mask row %lld is all zeros: every row needs at least one token", (long long)r);
      goto done;
    }
    active[r] = r;
    lens[r] = len;
  }
  if (m->vocab)
    for (int64_t i = 0; i < B * T; i++) {
      int64_t id = token_at(ids, type, i);
      if (id < 0 || id >= m->vocab) {
        rc = fail(LEAP_ERR_INPUT, "input_ids row %lld, position %lld: id %lld is outside the vocabulary [0, %d)",
                  (long long)(i / T), (long long)(i % T), (long long)id, m->vocab);
        goto done;
      }
    }
  void *ids_data = (void*)ids, *mask_data = (void*)mk;
  if (conv) { /* int64 given, int32 taken (or the reverse): the values are checked above, so they fit */
    ids_data = converted;
    mask_data = converted + conv / 2;
    for (int64_t i = 0; i < B * T; i++) {
      if (graph_type == ORT_INT32) {
        ((int32_t*)ids_data)[i] = (int32_t)token_at(ids, type, i);
        ((int32_t*)mask_data)[i] = (int32_t)token_at(mk, type, i);
      } else {
        ((int64_t*)ids_data)[i] = token_at(ids, type, i);
        ((int64_t*)mask_data)[i] = token_at(mk, type, i);
      }
    }
  }
  int64_t n = B, dims[2] = {B, T};
  tok = wrap(rt, ids_data, (size_t)(B * T) * (size_t)ges, dims, 2, graph_type, &rc);
  if (tok) msk = wrap(rt, mask_data, (size_t)(B * T) * (size_t)ges, dims, 2, graph_type, &rc);
  if (!msk) goto done;

  for (int k = 0; k < n_seg; k++) {
    seg_t* s = &m->seg[k];
    held_t* mine = held + s->held_base;
    for (int i = 0; i < s->n_in; i++)
      in[i] = s->src_seg[i] == SRC_IDS    ? tok
              : s->src_seg[i] == SRC_MASK ? msk
                                          : held[m->seg[s->src_seg[i]].held_base + s->src_out[i]].value;
    memset(outv, 0, sizeof(OrtValue*) * (size_t)s->n_out);
    OrtStatus* st = ort->Run(s->session, NULL, (const char* const*)s->in_names, in, (size_t)s->n_in,
                             (const char* const*)s->out_names, (size_t)s->n_out, outv);
    if (st) {
      if (m->graph_only) rc = ort_failed(ort, st, "the graph");
      else {
        char what[64];
        snprintf(what, sizeof what, "segment %d (ending at layer %d)", k, s->end);
        rc = ort_failed(ort, st, what);
      }
      for (int j = 0; j < s->n_out; j++)
        if (outv[j]) ort->ReleaseValue(outv[j]);
      goto done;
    }
    for (int j = 0; j < s->n_out; j++) mine[j].value = outv[j];
    /* the pooled output must be [n, H] float32, the score [n] */
    int et = 0;
    size_t ndim = 0;
    int64_t d[LEAP_MAX_DIMS];
    float *pooled = NULL, *score = NULL;
    if ((rc = shape_of(ort, outv[s->pooled], &et, d, &ndim))) goto done;
    if (et != ORT_FLOAT || ndim != 2 || d[0] != n || d[1] != H) {
      rc = fail(LEAP_ERR_ONNXRUNTIME, "a pooled output is not [rows, %lld] float32: %s", (long long)H,
                s->out_names[s->pooled]);
      goto done;
    }
    if ((rc = ort_failed(ort, ort->GetTensorMutableData(outv[s->pooled], (void**)&pooled), "GetTensorMutableData")))
      goto done;
    int last = k == n_seg - 1;
    int64_t n_exit = last ? n : 0;
    if (s->score >= 0) {
      if ((rc = shape_of(ort, outv[s->score], &et, d, &ndim))) goto done;
      if (et != ORT_FLOAT || ndim != 1 || d[0] != n) {
        rc = fail(LEAP_ERR_ONNXRUNTIME, "a score output is not [rows] float32: %s", s->out_names[s->score]);
        goto done;
      }
      if ((rc = ort_failed(ort, ort->GetTensorMutableData(outv[s->score], (void**)&score), "GetTensorMutableData")))
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
        memcpy(embeddings + active[r] * H, pooled + r * H, sizeof(float) * (size_t)H);
        if (exit_layers) exit_layers[active[r]] = s->end;
      }
      finished = 1;
      break;
    }
    if (n_exit) {
      int64_t kept = 0, width = 0;
      for (int64_t r = 0; r < n; r++) {
        if (score[r] >= theta) {
          memcpy(embeddings + active[r] * H, pooled + r * H, sizeof(float) * (size_t)H);
          if (exit_layers) exit_layers[active[r]] = s->end;
        } else {
          keep[kept] = r;
          active[kept++] = active[r]; /* kept <= r: in place */
          if (lens[active[kept - 1]] > width) width = lens[active[kept - 1]];
        }
      }
      /* every value a later segment still takes: survivors only, padding no survivor needs trimmed */
      for (int q = 0; q <= k; q++)
        for (int j = 0; j < m->seg[q].n_out; j++) {
          held_t* h = &held[m->seg[q].held_base + j];
          if (h->value && m->seg[q].last_use[j] > k &&
              (rc = compact(rt, h, keep, kept, m->seg[q].seq_axis[j], width)))
            goto done;
        }
      n = kept;
    }
    /* values no later segment takes go now */
    for (int j = 0; j < s->n_out; j++)
      if (s->last_use[j] <= k) release_held(ort, &mine[j]);
  }
  if (!finished) {
    rc = fail(LEAP_ERR_ONNXRUNTIME, "leap_run: the last segment did not end the batch");
    goto done;
  }
  if (flags & LEAP_RUN_NORMALIZE)
    for (int64_t r = 0; r < B; r++) {
      float* row = embeddings + r * H;
      double ss = 0;
      for (int64_t i = 0; i < H; i++) ss += (double)row[i] * row[i];
      float norm = (float)sqrt(ss);
      if (norm < 1e-12f) norm = 1e-12f;
      for (int64_t i = 0; i < H; i++) row[i] /= norm;
    }
done:
  if (rc == LEAP_OK) {
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < 3 * n_seg; i++) m->totals[i] += stats[i];
    pthread_mutex_unlock(&m->lock);
  }
  for (size_t i = 0; i < n_held; i++) release_held(ort, &held[i]);
  if (tok) ort->ReleaseValue(tok);
  if (msk) ort->ReleaseValue(msk);
  free(ws);
  return rc;
}
