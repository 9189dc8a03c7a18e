/* The segment chain driven from C through ONNX Runtime's C API: how much of the batch-1 hand-off cost
 * is the Python host? Built and run by scripts/c_host_loop.py (see there); a measurement, not a runtime.
 *
 *   c_host_loop LIBONNXRUNTIME PLAN TOKENS THREADS BLOCKS time|scores
 *
 * PLAN (written by the driver from manifest.json):
 *   full PATH
 *   seg PATH N_IN N_OUT SCORE_INDEX      then N_IN lines "in NAME SOURCE", N_OUT lines "out NAME"
 *   SOURCE: ids | mask | K:J (output J of segment K)
 * TOKENS: one sentence per line, token ids separated by spaces (batch 1, no padding).
 *
 * Settings as trt_runtime.runners sets them: one process-wide intra-op pool of THREADS threads with
 * spinning, one shared CPU arena (session.use_env_allocators), ORT_ENABLE_ALL, sessions without pools of
 * their own. Tensors pass from one segment to the next as OrtValues, without copies.
 *
 * "time": BLOCKS blocks; each runs 50 sentences untimed, then every sentence through the monolithic graph
 * and through the chain (exits off), alternating which goes first, and prints one JSON line with each
 * block's mean latencies, as scripts/overhead_spread.py's worker does.
 * "scores": one line per sentence, the score output of every segment (the driver checks them against
 * the Python runtime before it times anything).
 *
 * ONNX Runtime's C API is a table of function pointers (OrtApi) that only ever grows at the end; the
 * slots used here are named by their index in that table in trt_runtime/_native/ort_api.h (API version 22,
 * ONNX Runtime >= 1.22). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ort_api.h" /* trt_runtime/_native/: the C API's slots, shared with the runtime's C loop */


static const void* const* api;

static void check(Status s, const char* what) {
  if (s) {
    fprintf(stderr, "c_host_loop: %s: %s\n", what, FN(GET_ERROR_MESSAGE, const char* (*)(Status))(s));
    exit(1);
  }
}

static void die(const char* msg, const char* arg) {
  fprintf(stderr, "c_host_loop: %s%s\n", msg, arg ? arg : "");
  exit(2);
}

#define MAX_SEG 32
#define MAX_IO 16
#define MAX_TOK 512
#define MAX_ROWS 100000

typedef struct {
  Obj* session;
  int n_in, n_out, score;
  char* in_names[MAX_IO];
  const char* in_c[MAX_IO];
  int src_seg[MAX_IO], src_out[MAX_IO]; /* src_seg -1: ids, -2: mask */
  char* out_names[MAX_IO];
  const char* out_c[MAX_IO];
} Seg;

static Seg segs[MAX_SEG];
static int n_seg;
static Obj* full;
static Obj* mem_info;
static Obj* outputs[MAX_SEG][MAX_IO];
static int32_t* ids[MAX_ROWS];
static int lens[MAX_ROWS];
static int32_t ones[MAX_TOK];

static Obj* tensor(int32_t* data, int len) {
  int64_t shape[2] = {1, len};
  Obj* v = NULL;
  check(FN(CREATE_TENSOR_WITH_DATA, Status (*)(Obj*, void*, size_t, const int64_t*, size_t, int, Obj**))(
            mem_info, data, sizeof(int32_t) * (size_t)len, shape, 2, T_INT32, &v),
        "CreateTensorWithDataAsOrtValue");
  return v;
}

static void release(Obj* v) { FN(RELEASE_VALUE, void (*)(Obj*))(v); }


static void run_full(int row) {
  static const char* in_names[2] = {"input_ids", "attention_mask"};
  static const char* out_names[1] = {"pooled"};
  Obj* in[2] = {tensor(ids[row], lens[row]), tensor(ones, lens[row])};
  Obj* out[1] = {NULL};
  check(FN(RUN, RunFn)(full, NULL, in_names, (const Obj* const*)in, 2, out_names, 1, out), "Run (monolithic)");
  release(out[0]);
  release(in[0]);
  release(in[1]);
}

/* one pass through every segment (exits off); scores[k] gets segment k's score when not NULL */
static void run_chain(int row, float* scores) {
  Obj* tok = tensor(ids[row], lens[row]);
  Obj* mask = tensor(ones, lens[row]);
  for (int k = 0; k < n_seg; k++) {
    Seg* s = &segs[k];
    const Obj* in[MAX_IO];
    for (int i = 0; i < s->n_in; i++)
      in[i] = s->src_seg[i] == -1 ? tok : s->src_seg[i] == -2 ? mask : outputs[s->src_seg[i]][s->src_out[i]];
    for (int j = 0; j < s->n_out; j++) outputs[k][j] = NULL;
    check(FN(RUN, RunFn)(s->session, NULL, s->in_c, in, (size_t)s->n_in, s->out_c, (size_t)s->n_out, outputs[k]),
          "Run (segment)");
    float* score = NULL; /* read by the host between segments, as the runtime's exit test does */
    check(FN(GET_TENSOR_MUTABLE_DATA, Status (*)(Obj*, void**))(outputs[k][s->score], (void**)&score),
          "GetTensorMutableData");
    if (scores) scores[k] = score[0];
  }
  for (int k = 0; k < n_seg; k++)
    for (int j = 0; j < segs[k].n_out; j++) release(outputs[k][j]);
  release(tok);
  release(mask);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static Obj* open_session(Obj* env, Obj* options, const char* path) {
  Obj* s = NULL;
  check(FN(CREATE_SESSION, Status (*)(Obj*, const char*, Obj*, Obj**))(env, path, options, &s), path);
  return s;
}

static void read_plan(const char* path, Obj* env, Obj* options) {
  FILE* f = fopen(path, "r");
  if (!f) die("cannot read the plan ", path);
  char word[16], a[4096], b[4096];
  while (fscanf(f, "%15s", word) == 1) {
    if (!strcmp(word, "full")) {
      if (fscanf(f, " %4095[^\n]", a) != 1) die("bad plan line: full", NULL);
      full = open_session(env, options, a);
    } else if (!strcmp(word, "seg")) {
      if (n_seg == MAX_SEG) die("too many segments", NULL);
      Seg* s = &segs[n_seg];
      if (fscanf(f, "%4095s %d %d %d", a, &s->n_in, &s->n_out, &s->score) != 4 || s->n_in > MAX_IO ||
          s->n_out > MAX_IO || s->score >= s->n_out)
        die("bad plan line: seg", NULL);
      s->session = open_session(env, options, a);
      for (int i = 0; i < s->n_in; i++) {
        if (fscanf(f, " in %4095s %4095s", a, b) != 2) die("bad plan line: in", NULL);
        s->in_names[i] = strdup(a);
        s->in_c[i] = s->in_names[i];
        if (!strcmp(b, "ids")) s->src_seg[i] = -1;
        else if (!strcmp(b, "mask")) s->src_seg[i] = -2;
        else if (sscanf(b, "%d:%d", &s->src_seg[i], &s->src_out[i]) != 2 || s->src_seg[i] >= n_seg)
          die("bad input source ", b);
      }
      for (int j = 0; j < s->n_out; j++) {
        if (fscanf(f, " out %4095s", a) != 1) die("bad plan line: out", NULL);
        s->out_names[j] = strdup(a);
        s->out_c[j] = s->out_names[j];
      }
      n_seg++;
    } else {
      die("unknown plan line ", word);
    }
  }
  fclose(f);
  if (!full || !n_seg) die("the plan names no monolithic graph or no segment", NULL);
}

static int read_tokens(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) die("cannot read the tokens ", path);
  static char line[1 << 16];
  int n = 0;
  while (n < MAX_ROWS && fgets(line, sizeof line, f)) {
    int32_t buf[MAX_TOK];
    int len = 0;
    for (char* t = strtok(line, " \n"); t && len < MAX_TOK; t = strtok(NULL, " \n")) buf[len++] = (int32_t)atoi(t);
    if (!len) continue;
    ids[n] = malloc(sizeof(int32_t) * (size_t)len);
    memcpy(ids[n], buf, sizeof(int32_t) * (size_t)len);
    lens[n++] = len;
  }
  fclose(f);
  if (!n) die("no sentences in ", path);
  return n;
}

int main(int argc, char** argv) {
  if (argc != 7) die("usage: c_host_loop LIBONNXRUNTIME PLAN TOKENS THREADS BLOCKS time|scores", NULL);
  int threads = atoi(argv[4]), blocks = atoi(argv[5]), scores_mode = !strcmp(argv[6], "scores");
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) die("cannot load ONNX Runtime: ", dlerror());
  const ApiBase* (*get_base)(void) = (const ApiBase* (*)(void))dlsym(lib, "OrtGetApiBase");
  if (!get_base) die("no OrtGetApiBase in ", argv[1]);
  api = get_base()->get_api(API_VERSION);
  if (!api) die("this ONNX Runtime does not offer C API version 22 (ONNX Runtime >= 1.22 needed)", NULL);

  Obj *pool = NULL, *env = NULL, *options = NULL;
  check(FN(CREATE_THREADING_OPTIONS, Status (*)(Obj**))(&pool), "CreateThreadingOptions");
  check(FN(SET_GLOBAL_INTRA_OP_NUM_THREADS, Status (*)(Obj*, int))(pool, threads), "SetGlobalIntraOpNumThreads");
  check(FN(SET_GLOBAL_INTER_OP_NUM_THREADS, Status (*)(Obj*, int))(pool, 1), "SetGlobalInterOpNumThreads");
  check(FN(CREATE_ENV_WITH_GLOBAL_THREAD_POOLS, Status (*)(int, const char*, Obj*, Obj**))(
            LOG_ERROR, "c_host_loop", pool, &env),
        "CreateEnvWithGlobalThreadPools");
  check(FN(CREATE_CPU_MEMORY_INFO, Status (*)(int, int, Obj**))(ARENA_ALLOCATOR, MEM_DEFAULT, &mem_info),
        "CreateCpuMemoryInfo");
  check(FN(CREATE_AND_REGISTER_ALLOCATOR, Status (*)(Obj*, Obj*, Obj*))(env, mem_info, NULL),
        "CreateAndRegisterAllocator");
  check(FN(CREATE_SESSION_OPTIONS, Status (*)(Obj**))(&options), "CreateSessionOptions");
  check(FN(SET_GRAPH_OPTIMIZATION_LEVEL, Status (*)(Obj*, int))(options, ENABLE_ALL), "graph optimization level");
  check(FN(DISABLE_PER_SESSION_THREADS, Status (*)(Obj*))(options), "DisablePerSessionThreads");
  check(FN(ADD_SESSION_CONFIG_ENTRY, Status (*)(Obj*, const char*, const char*))(
            options, "session.use_env_allocators", "1"),
        "AddSessionConfigEntry");

  read_plan(argv[2], env, options);
  int n = read_tokens(argv[3]);
  for (int i = 0; i < MAX_TOK; i++) ones[i] = 1;

  if (scores_mode) {
    float s[MAX_SEG];
    for (int r = 0; r < n; r++) {
      run_chain(r, s);
      for (int k = 0; k < n_seg; k++) printf(k ? " %.9g" : "%.9g", s[k]);
      printf("\n");
    }
    return 0;
  }
  printf("{\"ratios\": [");
  double mono_ms[256], seg_ms[256];
  if (blocks > 256) blocks = 256;
  for (int b = 0; b < blocks; b++) {
    for (int r = 0; r < n && r < 50; r++) { /* warm-up */
      run_full(r);
      run_chain(r, NULL);
    }
    double tm = 0, ts = 0;
    for (int r = 0; r < n; r++) {
      double t0 = now();
      if (r % 2 == 0) {
        run_full(r);
        double t1 = now();
        run_chain(r, NULL);
        double t2 = now();
        tm += t1 - t0;
        ts += t2 - t1;
      } else {
        run_chain(r, NULL);
        double t1 = now();
        run_full(r);
        double t2 = now();
        ts += t1 - t0;
        tm += t2 - t1;
      }
    }
    mono_ms[b] = tm / n * 1e3;
    seg_ms[b] = ts / n * 1e3;
    printf(b ? ", %.6f" : "%.6f", ts / tm);
  }
  printf("], \"monolithic_ms\": [");
  for (int b = 0; b < blocks; b++) printf(b ? ", %.6f" : "%.6f", mono_ms[b]);
  printf("], \"segmented_ms\": [");
  for (int b = 0; b < blocks; b++) printf(b ? ", %.6f" : "%.6f", seg_ms[b]);
  printf("]}\n");
  return 0;
}
