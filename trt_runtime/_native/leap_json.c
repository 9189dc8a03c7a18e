/* JSON reader and SHA-256 for libleap_runtime (see leap_json.h). */
#define _POSIX_C_SOURCE 200809L
#include "leap_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char* p;
  const char* end;
  const char* start;
  char* err;
  size_t err_len;
} lj_parser;

static int lj_fail(lj_parser* ps, const char* what) {
  if (ps->err && ps->err_len) snprintf(ps->err, ps->err_len, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
  return -1;
}

static void lj_ws(lj_parser* ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int lj_hex4(lj_parser* ps, unsigned* out) {
  unsigned v = 0;
  if (ps->end - ps->p < 4) return lj_fail(ps, "a truncated \\u escape");
  for (int i = 0; i < 4; i++) {
    char c = *ps->p++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return lj_fail(ps, "a bad \\u escape");
  }
  *out = v;
  return 0;
}

/* a string starting after its opening quote; decoded into a new buffer */
static int lj_string(lj_parser* ps, char** out, size_t* out_len) {
  const char* q = ps->p;
  size_t cap = 0;
  while (q < ps->end && *q != '"') { /* the decoded text is never longer than the raw text */
    if (*q == '\\') q++;
    q++;
    cap++;
  }
  char* buf = malloc(2 * cap + 1);
  if (!buf) return lj_fail(ps, "out of memory");
  size_t n = 0;
  for (;;) {
    if (ps->p >= ps->end) {
      free(buf);
      return lj_fail(ps, "an unterminated string");
    }
    unsigned char c = (unsigned char)*ps->p++;
    if (c == '"') break;
    if (c < 0x20) {
      free(buf);
      return lj_fail(ps, "a control character in a string");
    }
    if (c != '\\') {
      buf[n++] = (char)c;
      continue;
    }
    if (ps->p >= ps->end) {
      free(buf);
      return lj_fail(ps, "an unterminated string");
    }
    char e = *ps->p++;
    unsigned cp;
    switch (e) {
      case '"': buf[n++] = '"'; break;
      case '\\': buf[n++] = '\\'; break;
      case '/': buf[n++] = '/'; break;
      case 'b': buf[n++] = '\b'; break;
      case 'f': buf[n++] = '\f'; break;
      case 'n': buf[n++] = '\n'; break;
      case 'r': buf[n++] = '\r'; break;
      case 't': buf[n++] = '\t'; break;
      case 'u':
        if (lj_hex4(ps, &cp)) {
          free(buf);
          return -1;
        }
        if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
          unsigned lo;
          const char* save = ps->p;
          ps->p += 2;
          if (lj_hex4(ps, &lo)) {
            free(buf);
            return -1;
          }
          if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          else ps->p = save; /* a lone surrogate: kept as its own (invalid) code point, as Python does */
        }
        if (cp < 0x80) buf[n++] = (char)cp;
        else if (cp < 0x800) {
          buf[n++] = (char)(0xC0 | (cp >> 6));
          buf[n++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
          buf[n++] = (char)(0xE0 | (cp >> 12));
          buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
          buf[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
          buf[n++] = (char)(0xF0 | (cp >> 18));
          buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
          buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
          buf[n++] = (char)(0x80 | (cp & 0x3F));
        }
        break;
      default:
        free(buf);
        return lj_fail(ps, "a bad escape in a string");
    }
  }
  buf[n] = '\0';
  *out = buf;
  *out_len = n;
  return 0;
}

static int lj_value_at(lj_parser* ps, lj_value* v, int depth);

/* grows (items, keys) to hold one more member */
static int lj_push(lj_parser* ps, lj_value* v, size_t* cap, int keyed) {
  if (v->length < *cap) return 0;
  size_t n = *cap ? *cap * 2 : 8;
  lj_value* items = realloc(v->items, n * sizeof *items);
  if (!items) return lj_fail(ps, "out of memory");
  v->items = items;
  if (keyed) {
    char** keys = realloc(v->keys, n * sizeof *keys);
    if (!keys) return lj_fail(ps, "out of memory");
    v->keys = keys;
  }
  *cap = n;
  return 0;
}

static int lj_value_at(lj_parser* ps, lj_value* v, int depth) {
  memset(v, 0, sizeof *v);
  lj_ws(ps);
  if (ps->p >= ps->end) return lj_fail(ps, "unexpected end of text");
  if (depth > LEAP_JSON_MAX_DEPTH) return lj_fail(ps, "nesting deeper than 64 levels");
  char c = *ps->p;
  if (c == '{' || c == '[') {
    int keyed = c == '{';
    char close = keyed ? '}' : ']';
    size_t cap = 0;
    v->type = keyed ? LJ_OBJECT : LJ_ARRAY;
    ps->p++;
    lj_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return 0;
    }
    for (;;) {
      if (lj_push(ps, v, &cap, keyed)) return -1;
      char* key = NULL;
      if (keyed) {
        size_t klen;
        lj_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') return lj_fail(ps, "an object key that is not a string");
        ps->p++;
        if (lj_string(ps, &key, &klen)) return -1;
        lj_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
          free(key);
          return lj_fail(ps, "a missing ':'");
        }
        ps->p++;
      }
      if (lj_value_at(ps, &v->items[v->length], depth + 1)) {
        free(key);
        lj_free(&v->items[v->length]);
        return -1;
      }
      if (keyed) v->keys[v->length] = key;
      v->length++;
      lj_ws(ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        continue;
      }
      if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
      }
      return lj_fail(ps, keyed ? "a missing ',' or '}'" : "a missing ',' or ']'");
    }
  }
  if (c == '"') {
    ps->p++;
    v->type = LJ_STRING;
    return lj_string(ps, &v->string, &v->length);
  }
  static const struct {
    const char* word;
    lj_type type;
  } words[] = {{"null", LJ_NULL}, {"true", LJ_TRUE}, {"false", LJ_FALSE}};
  for (size_t i = 0; i < 3; i++) {
    size_t n = strlen(words[i].word);
    if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, words[i].word, n)) {
      ps->p += n;
      v->type = words[i].type;
      return 0;
    }
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    char* after = NULL;
    errno = 0;
    double d = strtod(ps->p, &after); /* the buffer is NUL-terminated: strtod cannot run past it */
    if (after == ps->p || after > ps->end || !isfinite(d)) return lj_fail(ps, "a bad number");
    ps->p = after;
    v->type = LJ_NUMBER;
    v->number = d;
    return 0;
  }
  return lj_fail(ps, "an unexpected character");
}

int lj_parse(const char* text, size_t len, lj_value* out, char* err, size_t err_len) {
  lj_parser ps = {text, text + len, text, err, err_len};
  if (lj_value_at(&ps, out, 0)) {
    lj_free(out);
    return -1;
  }
  lj_ws(&ps);
  if (ps.p != ps.end) {
    lj_free(out);
    return lj_fail(&ps, "text after the JSON value");
  }
  return 0;
}

void lj_free(lj_value* v) {
  if (!v) return;
  if (v->type == LJ_ARRAY || v->type == LJ_OBJECT) {
    for (size_t i = 0; i < v->length; i++) {
      lj_free(&v->items[i]);
      if (v->keys) free(v->keys[i]);
    }
  }
  free(v->items);
  free(v->keys);
  free(v->string);
  memset(v, 0, sizeof *v);
}

const lj_value* lj_get(const lj_value* object, const char* key) {
  if (!object || object->type != LJ_OBJECT) return NULL;
  for (size_t i = object->length; i-- > 0;)
    if (!strcmp(object->keys[i], key)) return &object->items[i];
  return NULL;
}

int lj_int(const lj_value* v, int64_t lo, int64_t hi, int64_t* out) {
  if (!v || v->type != LJ_NUMBER || v->number != floor(v->number) || v->number < (double)lo ||
      v->number > (double)hi)
    return 0;
  *out = (int64_t)v->number;
  return 1;
}

/* -- SHA-256 (FIPS 180-4) ---------------------------------------------------------------------------- */

typedef struct {
  uint32_t h[8];
  uint64_t bytes;
  unsigned char block[64];
  size_t used;
} sha256_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx* c, const unsigned char* p) {
  uint32_t w[64], a, b, d, e, f, g, h, cc;
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
    h = g, g = f, f = e, e = d + t1, d = cc, cc = b, b = a, a = t1 + t2;
  }
  c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d, c->h[4] += e, c->h[5] += f, c->h[6] += g, c->h[7] += h;
}

static void sha256_update(sha256_ctx* c, const unsigned char* p, size_t n) {
  c->bytes += n;
  if (c->used) {
    size_t take = 64 - c->used < n ? 64 - c->used : n;
    memcpy(c->block + c->used, p, take);
    c->used += take, p += take, n -= take;
    if (c->used < 64) return;
    sha256_block(c, c->block);
    c->used = 0;
  }
  for (; n >= 64; p += 64, n -= 64) sha256_block(c, p);
  memcpy(c->block, p, n);
  c->used = n;
}

int leap_sha256_file(const char* path, char hex[65]) {
  sha256_ctx c = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19},
                  0,
                  {0},
                  0};
  FILE* f = fopen(path, "rb");
  if (!f) return -1;
  size_t cap = 1 << 20, n;
  unsigned char* buf = malloc(cap);
  if (!buf) {
    fclose(f);
    errno = ENOMEM;
    return -1;
  }
  while ((n = fread(buf, 1, cap, f)) > 0) sha256_update(&c, buf, n);
  int bad = ferror(f);
  fclose(f);
  free(buf);
  if (bad) {
    errno = EIO;
    return -1;
  }
  uint64_t bits = c.bytes * 8;
  unsigned char pad[72] = {0x80};
  size_t padlen = (c.used < 56 ? 56 : 120) - c.used;
  for (int i = 0; i < 8; i++) pad[padlen + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
  sha256_update(&c, pad, padlen + 8);
  for (int i = 0; i < 8; i++) snprintf(hex + 8 * i, 9, "%08x", c.h[i]);
  return 0;
}
