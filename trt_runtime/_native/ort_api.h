/* ONNX Runtime's C API as trt_runtime/_native/chain.c uses it, without its headers.
 *
 * The API is a table of function pointers (OrtApi) that only ever grows at its end; the slots used are
 * named here by their index in that table (API version 22, ONNX Runtime >= 1.22). Every ONNX Runtime
 * object is opaque. An includer defines `static const void* const* api;` (the table) before using FN. */
#ifndef LEAP_ORT_API_H
#define LEAP_ORT_API_H

#include <stdint.h>

typedef void Obj;
typedef Obj* Status; /* NULL: OK */
typedef struct {
  const void* const* (*get_api)(uint32_t version);
  const char* (*get_version_string)(void);
} ApiBase;

enum {
  GET_ERROR_MESSAGE = 2, CREATE_SESSION = 7, RUN = 9, CREATE_SESSION_OPTIONS = 10,
  SET_GRAPH_OPTIMIZATION_LEVEL = 23, CREATE_TENSOR_WITH_DATA = 49, GET_TENSOR_MUTABLE_DATA = 51,
  GET_TENSOR_ELEMENT_TYPE = 60, GET_DIMENSIONS_COUNT = 61, GET_DIMENSIONS = 62, GET_TENSOR_TYPE_AND_SHAPE = 65,
  CREATE_CPU_MEMORY_INFO = 69, RELEASE_STATUS = 93, RELEASE_SESSION = 95, RELEASE_VALUE = 96,
  RELEASE_TENSOR_TYPE_AND_SHAPE_INFO = 99, CREATE_ENV_WITH_GLOBAL_THREAD_POOLS = 119,
  DISABLE_PER_SESSION_THREADS = 120, CREATE_THREADING_OPTIONS = 121, ADD_SESSION_CONFIG_ENTRY = 130,
  CREATE_AND_REGISTER_ALLOCATOR = 144, SET_GLOBAL_INTRA_OP_NUM_THREADS = 147,
  SET_GLOBAL_INTER_OP_NUM_THREADS = 148, API_VERSION = 22
};
enum { T_FLOAT = 1, T_INT32 = 6, T_INT64 = 7, T_DOUBLE = 11 }; /* ONNXTensorElementDataType */
enum { ARENA_ALLOCATOR = 1, MEM_DEFAULT = 0, LOG_ERROR = 3, ENABLE_ALL = 99 };

#define FN(slot, type) ((type)api[slot])

typedef Status (*RunFn)(Obj*, const Obj*, const char* const*, const Obj* const*, size_t, const char* const*,
                        size_t, Obj**);

#endif
