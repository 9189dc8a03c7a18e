/* Bad input through the C API: every case must come back as its error code and a message, never a crash.
 * tests/test_capi.py builds this and libleap_runtime from source with -fsanitize=address,undefined and runs it,
 * so an out-of-bounds read, a leak or undefined behaviour on any of these paths fails the test too.
 *
 *   bad_inputs ARTIFACTS ORT_LIBRARY [EXPECTED_STATUS:FOLDER ...]
 *
 * ARTIFACTS: an intact build (the packaged MiniLM); each FOLDER: a damaged copy that leap_model_open must
 * refuse with EXPECTED_STATUS (a number; -1: any status, opened or refused, for randomly mutated manifests). Prints one line per case ("ok NAME: STATUS: message") and exits 1
 * if any case gave another status, an empty message, or touched the outputs it must not. The last part runs
 * one model from several threads at once, and two runtimes side by side, and checks the results and the
 * statistics against a serial run. */
#define _POSIX_C_SOURCE 200809L
#include <leap_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void expect(const char* name, leap_status got, leap_status want) {
  const char* msg = leap_last_error();
  int ok = got == want && (want == LEAP_OK || (msg && *msg));
  printf("%s %s: %s: %s\n", ok ? "ok" : "FAIL", name, leap_status_name(got), got == LEAP_OK ? "" : msg);
  if (!ok) {
    printf("    expected %s\n", leap_status_name(want));
    failures++;
  }
}

#define B 3
#define T 8
static int32_t ids[B * T], mask[B * T];
static int64_t ids64[B * T], mask64[B * T];

/* three rows of lengths 8, 5, 2 ([CLS] ... [SEP]), right-padded */
static void fill(void) {
  static const int lens[B] = {8, 5, 2};
  for (int r = 0; r < B; r++)
    for (int p = 0; p < T; p++) {
      int in = p < lens[r];
      ids[r * T + p] = !in ? 0 : p == 0 ? 101 : p == lens[r] - 1 ? 102 : 2000 + 37 * r + p;
      mask[r * T + p] = in;
      ids64[r * T + p] = ids[r * T + p];
      mask64[r * T + p] = mask[r * T + p];
    }
}

typedef struct {
  leap_model* model;
  const leap_policy* policy;
  int rounds;
  float* out;
  int64_t* layers;
  leap_status rc;
} job_t;

static void* work(void* arg) {
  job_t* j = arg;
  leap_tensor ti = {ids, LEAP_INT32, B, T}, tm = {mask, LEAP_INT32, B, T};
  for (int i = 0; i < j->rounds && j->rc == LEAP_OK; i++)
    j->rc = leap_run(j->model, &ti, &tm, j->policy, 0, j->out, (size_t)B * 384, j->layers, B);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s ARTIFACTS ORT_LIBRARY [STATUS:FOLDER ...]\n", argv[0]);
    return 2;
  }
  const char *art = argv[1], *ort = argv[2];
  fill();
  printf("leap_runtime %s (header %d, library %d)\n", leap_version_string(), LEAP_RUNTIME_VERSION, leap_version());
  if (leap_version() != LEAP_RUNTIME_VERSION) failures++;

  /* -- runtime ---------------------------------------------------------------------------------------- */
  leap_runtime* rt = NULL;
  leap_runtime_options ro = {sizeof ro, ort, 2};
  expect("runtime: out NULL", leap_runtime_create(&ro, NULL), LEAP_ERR_ARGUMENT);
  leap_runtime_options bad = {0, ort, 2};
  expect("runtime: struct_size 0", leap_runtime_create(&bad, &rt), LEAP_ERR_ARGUMENT);
  bad = (leap_runtime_options){sizeof bad, ort, -1};
  expect("runtime: threads -1", leap_runtime_create(&bad, &rt), LEAP_ERR_ARGUMENT);
  bad = (leap_runtime_options){sizeof bad, "/nonexistent/libonnxruntime.so", 2};
  expect("runtime: missing ONNX Runtime", leap_runtime_create(&bad, &rt), LEAP_ERR_ONNXRUNTIME);
  bad = (leap_runtime_options){sizeof bad, "libm.so.6", 2};
  expect("runtime: a library that is not ONNX Runtime", leap_runtime_create(&bad, &rt), LEAP_ERR_ONNXRUNTIME);
  if (rt) failures++, printf("FAIL: a failed create set *out\n");
  expect("runtime: create", leap_runtime_create(&ro, &rt), LEAP_OK);
  if (!rt) return 1;
  printf("ONNX Runtime %s, %d threads\n", leap_runtime_ort_version(rt), leap_runtime_threads(rt));
  leap_runtime_destroy(NULL);
  leap_model_close(NULL);

  /* -- opening ---------------------------------------------------------------------------------------- */
  leap_model* m = NULL;
  expect("open: runtime NULL", leap_model_open(NULL, art, NULL, &m), LEAP_ERR_ARGUMENT);
  expect("open: folder NULL", leap_model_open(rt, NULL, NULL, &m), LEAP_ERR_ARGUMENT);
  expect("open: out NULL", leap_model_open(rt, art, NULL, NULL), LEAP_ERR_ARGUMENT);
  expect("open: missing folder", leap_model_open(rt, "/nonexistent/leap-build", NULL, &m), LEAP_ERR_ARTIFACT);
  expect("open: a file, not a folder", leap_model_open(rt, ort, NULL, &m), LEAP_ERR_ARTIFACT);
  leap_open_options oo = {sizeof oo, "no-such-variant", 0};
  expect("open: unknown variant", leap_model_open(rt, art, &oo, &m), LEAP_ERR_ARTIFACT);
  oo = (leap_open_options){1, NULL, 0};
  expect("open: options struct_size 1", leap_model_open(rt, art, &oo, &m), LEAP_ERR_ARGUMENT);
  for (int i = 3; i < argc; i++) {
    char* colon = strchr(argv[i], ':');
    if (!colon) return 2;
    char name[512];
    snprintf(name, sizeof name, "open: damaged %s", colon + 1);
    if (atoi(argv[i]) < 0) { /* a mutated manifest: any status will do, as long as nothing breaks */
      leap_open_options trusted = {sizeof trusted, NULL, LEAP_OPEN_NO_HASH_CHECK}; /* parsing is the point */
      leap_status got = leap_model_open(rt, colon + 1, &trusted, &m);
      printf("ok %s: %s: %s\n", name, leap_status_name(got), got == LEAP_OK ? "" : leap_last_error());
      if (got != LEAP_OK && m) failures++, printf("FAIL: a failed open set *out\n");
      leap_model_close(m);
      m = NULL;
      continue;
    }
    expect(name, leap_model_open(rt, colon + 1, NULL, &m), (leap_status)atoi(argv[i]));
  }
  if (m) failures++, printf("FAIL: a failed open set *out\n");
  const char* outs[1] = {"pooled"};
  expect("open_graph: NULL names", leap_model_open_graph(rt, ort, NULL, 1, 0, 384, &m), LEAP_ERR_ARGUMENT);
  expect("open_graph: pooled out of range", leap_model_open_graph(rt, ort, outs, 1, 1, 384, &m), LEAP_ERR_ARGUMENT);
  expect("open_graph: not a graph", leap_model_open_graph(rt, ort, outs, 1, 0, 384, &m), LEAP_ERR_ONNXRUNTIME);

  expect("open: intact build, hashes checked", leap_model_open(rt, art, NULL, &m), LEAP_OK);
  if (!m) return 1;
  leap_model_info info;
  expect("info: NULL out", leap_model_info_get(m, NULL), LEAP_ERR_ARGUMENT);
  expect("info", leap_model_info_get(m, &info), LEAP_OK);
  printf("model: %d layers, hidden %d, max %d tokens, vocabulary %d, %d segments\n", info.num_layers,
         info.hidden_size, info.max_seq_length, info.vocab_size, info.num_segments);
  if (info.hidden_size != 384) return 1;

  /* -- running: every argument checked --------------------------------------------------------------- */
  float out[B * 384];
  int64_t layers[B];
  leap_tensor ti = {ids, LEAP_INT32, B, T}, tm = {mask, LEAP_INT32, B, T};
  leap_policy pol = info.default_policy;
  pol.exits = 1;
  pol.theta = 0.9f;
#define RUN(i, k, p, f, o, ol, l, ll) leap_run(m, i, k, p, f, o, ol, l, ll)
  expect("run: model NULL", leap_run(NULL, &ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_ARGUMENT);
  expect("run: ids NULL", RUN(NULL, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_ARGUMENT);
  expect("run: mask NULL", RUN(&ti, NULL, &pol, 0, out, B * 384, layers, B), LEAP_ERR_ARGUMENT);
  expect("run: embeddings NULL", RUN(&ti, &tm, &pol, 0, NULL, B * 384, layers, B), LEAP_ERR_ARGUMENT);
  leap_tensor x = {NULL, LEAP_INT32, B, T};
  expect("run: ids data NULL", RUN(&x, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_ARGUMENT);
  x = (leap_tensor){ids, LEAP_INT32, 0, T};
  leap_tensor xm = {mask, LEAP_INT32, 0, T};
  expect("run: batch 0", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  x = (leap_tensor){ids, LEAP_INT32, -4, T}, xm = (leap_tensor){mask, LEAP_INT32, -4, T};
  expect("run: batch -4", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  x = (leap_tensor){ids, LEAP_INT32, B, 0}, xm = (leap_tensor){mask, LEAP_INT32, B, 0};
  expect("run: sequence 0", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  /* over the maximum: checked before any element is read (the buffers here are far smaller) */
  x = (leap_tensor){ids, LEAP_INT32, 1, info.max_seq_length + 1};
  xm = (leap_tensor){mask, LEAP_INT32, 1, info.max_seq_length + 1};
  expect("run: sequence over the maximum", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  x = (leap_tensor){ids, LEAP_INT32, INT64_MAX / 2, T}, xm = (leap_tensor){mask, LEAP_INT32, INT64_MAX / 2, T};
  expect("run: a batch whose size overflows", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  xm = (leap_tensor){mask, LEAP_INT32, B + 1, T};
  expect("run: mask with more rows", RUN(&ti, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  xm = (leap_tensor){mask, LEAP_INT32, B, T - 1};
  expect("run: mask with fewer columns", RUN(&ti, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  xm = (leap_tensor){mask64, LEAP_INT64, B, T};
  expect("run: mask of another dtype", RUN(&ti, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  x = (leap_tensor){ids, (leap_dtype)1, B, T}, xm = (leap_tensor){mask, (leap_dtype)1, B, T};
  expect("run: float dtype", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  expect("run: embeddings too small", RUN(&ti, &tm, &pol, 0, out, B * 384 - 1, layers, B), LEAP_ERR_ARGUMENT);
  expect("run: exit_layers too small", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B - 1), LEAP_ERR_ARGUMENT);
  expect("run: unknown flags", RUN(&ti, &tm, &pol, 0x80, out, B * 384, layers, B), LEAP_ERR_ARGUMENT);
  ids[T + 1] = info.vocab_size;
  expect("run: id = vocab_size", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  ids[T + 1] = -1;
  expect("run: negative id", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  ids[T + 7] = 1 << 30; /* in the padding: every position reaches the embedding lookup */
  ids[T + 1] = 2000;
  expect("run: id out of vocabulary in the padding", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  fill();
  ids64[2] = (int64_t)1 << 40;
  x = (leap_tensor){ids64, LEAP_INT64, B, T}, xm = (leap_tensor){mask64, LEAP_INT64, B, T};
  expect("run: int64 id beyond int32", RUN(&x, &xm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  fill();
  mask[2 * T + 4] = 1; /* a one after the zeros */
  expect("run: mask not right-padded", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  fill();
  mask[0] = 2;
  expect("run: mask value 2", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  fill();
  mask[2 * T] = mask[2 * T + 1] = 0;
  expect("run: an all-zero mask row", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_ERR_INPUT);
  fill();
  leap_policy p = pol;
  p.theta = 0.0f;
  expect("run: theta 0", RUN(&ti, &tm, &p, 0, out, B * 384, layers, B), LEAP_ERR_POLICY);
  p.theta = NAN;
  expect("run: theta NaN", RUN(&ti, &tm, &p, 0, out, B * 384, layers, B), LEAP_ERR_POLICY);
  p.theta = 1.5f;
  expect("run: theta 1.5", RUN(&ti, &tm, &p, 0, out, B * 384, layers, B), LEAP_ERR_POLICY);
  p = pol, p.min_layer = 0;
  expect("run: min_layer 0", RUN(&ti, &tm, &p, 0, out, B * 384, layers, B), LEAP_ERR_POLICY);
  p.min_layer = info.num_layers + 1;
  expect("run: min_layer over the layers", RUN(&ti, &tm, &p, 0, out, B * 384, layers, B), LEAP_ERR_POLICY);
  p = pol, p.patience = info.default_policy.patience + 1;
  expect("run: another patience", RUN(&ti, &tm, &p, 0, out, B * 384, layers, B), LEAP_ERR_POLICY);
  leap_segment_stats st[16];
  expect("stats: after failed runs only", leap_stats(m, st, 16, 0), LEAP_OK);
  if (st[0].rows != 0) failures++, printf("FAIL: a failed run counted in the statistics\n");
  expect("stats: NULL out", leap_stats(m, NULL, 16, 0), LEAP_ERR_ARGUMENT);
  expect("stats: out too short", leap_stats(m, st, (size_t)info.num_segments - 1, 0), LEAP_ERR_ARGUMENT);

  /* -- and valid runs still work: int32 and int64 agree, NULL exit_layers and the default policy are fine */
  float ref[B * 384], out64[B * 384];
  int64_t ref_layers[B];
  expect("run: valid", RUN(&ti, &tm, &pol, 0, ref, B * 384, ref_layers, B), LEAP_OK);
  x = (leap_tensor){ids64, LEAP_INT64, B, T}, xm = (leap_tensor){mask64, LEAP_INT64, B, T};
  expect("run: valid int64", RUN(&x, &xm, &pol, 0, out64, B * 384, layers, B), LEAP_OK);
  if (memcmp(ref, out64, sizeof ref) || memcmp(ref_layers, layers, sizeof layers))
    failures++, printf("FAIL: int64 ids gave other results than int32\n");
  expect("run: default policy, no exit layers", RUN(&ti, &tm, NULL, LEAP_RUN_NORMALIZE, out, B * 384, NULL, 0), LEAP_OK);
  double norm = 0;
  for (int h = 0; h < 384; h++) norm += (double)out[h] * out[h];
  if (fabs(norm - 1.0) > 1e-5) failures++, printf("FAIL: LEAP_RUN_NORMALIZE gave a norm^2 of %g\n", norm);
  expect("stats: reset", leap_stats(m, st, 16, 1), LEAP_OK);
  if (st[0].rows != 3 * B) failures++, printf("FAIL: %lld rows counted, expected %d\n", (long long)st[0].rows, 3 * B);

  /* -- threads: one model from 4 threads at once; a second runtime and model beside it ---------------- */
  leap_runtime* rt2 = NULL;
  leap_model* m2 = NULL;
  leap_open_options fast = {sizeof fast, NULL, LEAP_OPEN_NO_HASH_CHECK};
  expect("runtime: a second one", leap_runtime_create(&ro, &rt2), LEAP_OK);
  expect("open: a second model, hashes trusted", leap_model_open(rt2, art, &fast, &m2), LEAP_OK);
  enum { THREADS = 4, ROUNDS = 5 };
  pthread_t th[THREADS + 1];
  job_t jobs[THREADS + 1];
  static float outs_t[THREADS + 1][B * 384];
  static int64_t layers_t[THREADS + 1][B];
  for (int i = 0; i <= THREADS; i++) {
    jobs[i] = (job_t){i < THREADS ? m : m2, &pol, ROUNDS, outs_t[i], layers_t[i], LEAP_OK};
    pthread_create(&th[i], NULL, work, &jobs[i]);
  }
  for (int i = 0; i <= THREADS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i <= THREADS; i++) {
    double worst = 0;
    for (int k = 0; k < B * 384; k++) worst = fmax(worst, fabs((double)outs_t[i][k] - ref[k]));
    int same_layers = !memcmp(layers_t[i], ref_layers, sizeof ref_layers);
    printf("%s thread %d: %s, exit layers %s, largest difference %.3g\n",
           jobs[i].rc == LEAP_OK && same_layers && worst <= 1e-6 ? "ok" : "FAIL", i, leap_status_name(jobs[i].rc),
           same_layers ? "equal" : "differ", worst);
    if (jobs[i].rc != LEAP_OK || !same_layers || worst > 1e-6) failures++;
  }
  expect("stats: after the threads", leap_stats(m, st, 16, 0), LEAP_OK);
  if (st[0].rows != THREADS * ROUNDS * B) failures++, printf("FAIL: %lld rows counted\n", (long long)st[0].rows);
  leap_segment_stats st2[16];
  expect("stats: the second model's own", leap_stats(m2, st2, 16, 0), LEAP_OK);
  if (st2[0].rows != ROUNDS * B) failures++, printf("FAIL: the second model counted %lld rows\n", (long long)st2[0].rows);
  /* closing one runtime and its model leaves the other working; a model outlives its destroyed runtime */
  leap_model_close(m2);
  leap_runtime_destroy(rt2);
  leap_runtime_destroy(rt);
  expect("run: after both runtimes were destroyed", RUN(&ti, &tm, &pol, 0, out, B * 384, layers, B), LEAP_OK);
  if (memcmp(out, ref, sizeof ref)) failures++, printf("FAIL: other results after the destroys\n");
  leap_model_close(m);
  printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
