/* A small JSON reader for manifest.json and tokenizer.json (no JSON library is assumed on the systems the
 * runtime is built on). Reads RFC 8259 JSON into a tree; strings are decoded to UTF-8 (\u escapes with
 * surrogate pairs); nesting is limited (LEAP_JSON_MAX_DEPTH) so a hostile file cannot exhaust the stack. */
#ifndef LEAP_JSON_H
#define LEAP_JSON_H

#include <stddef.h>
#include <stdint.h>

#define LEAP_JSON_MAX_DEPTH 64

typedef enum { LJ_NULL, LJ_FALSE, LJ_TRUE, LJ_NUMBER, LJ_STRING, LJ_ARRAY, LJ_OBJECT } lj_type;

typedef struct lj_value {
  lj_type type;
  double number;
  char* string;            /* LJ_STRING: NUL-terminated UTF-8 (may hold NULs: see length) */
  size_t length;           /* LJ_STRING: bytes; LJ_ARRAY / LJ_OBJECT: members */
  struct lj_value* items;  /* LJ_ARRAY / LJ_OBJECT: the values */
  char** keys;             /* LJ_OBJECT: the keys */
} lj_value;

/* Parses text[0 .. len) (the buffer must be NUL-terminated at len). 0: ok; else -1 and a message in err. */
int lj_parse(const char* text, size_t len, lj_value* out, char* err, size_t err_len);
void lj_free(lj_value* v);
/* The member `key` of an object (the last one, as Python's json does), or NULL. */
const lj_value* lj_get(const lj_value* object, const char* key);
/* 1 when v is a number holding an integer in [lo, hi], stored into *out. */
int lj_int(const lj_value* v, int64_t lo, int64_t hi, int64_t* out);

/* SHA-256 of a file as 64 lowercase hex digits (+ NUL). 0: ok; -1: unreadable (errno set). */
int leap_sha256_file(const char* path, char hex[65]);

#endif
