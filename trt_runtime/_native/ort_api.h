/* ONNX Runtime's C API as libleap_runtime uses it, without ONNX Runtime's headers (none can be installed
 * from the registries this project builds from; the onnxruntime wheel ships only libonnxruntime.so).
 *
 * The API is a table of function pointers (OrtApi) that only ever grows at its end. LEAP_ORT_SLOTS lists
 * every slot used, once, as X(index in the table, return type, name, parameter list) with ONNX Runtime's own
 * names and signatures (onnxruntime_c_api.h, API version 22 = ONNX Runtime 1.22; every slot here dates from
 * version 1 or 2). From it come the typed table (leap_ort) and its loader (leap_ort_bind in
 * leap_runtime.c), which also checks the slots it can on objects of known content before anything runs.
 * Every ONNX Runtime object is opaque; enum parameters are passed as int, as the C ABI does. */
#ifndef LEAP_ORT_API_H
#define LEAP_ORT_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct OrtStatus OrtStatus; /* NULL: success */
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtThreadingOptions OrtThreadingOptions;
typedef struct OrtArenaCfg OrtArenaCfg;

typedef struct OrtApiBase {
  const void* (*GetApi)(uint32_t version); /* the OrtApi table, or NULL for a version it does not offer */
  const char* (*GetVersionString)(void);
} OrtApiBase;

enum { LEAP_ORT_API_VERSION = 22 };
enum { ORT_FLOAT = 1, ORT_INT32 = 6, ORT_INT64 = 7, ORT_DOUBLE = 11 }; /* ONNXTensorElementDataType */
enum { ORT_ARENA_ALLOCATOR = 1, ORT_MEM_TYPE_DEFAULT = 0 };           /* OrtAllocatorType, OrtMemType */
enum { ORT_LOGGING_LEVEL_ERROR = 3, ORT_ENABLE_ALL = 99, ORT_RUNTIME_EXCEPTION = 6 };

#define LEAP_ORT_SLOTS(X)                                                                                  \
  X(0, OrtStatus*, CreateStatus, (int code, const char* msg))                                              \
  X(1, int, GetErrorCode, (const OrtStatus* status))                                                       \
  X(2, const char*, GetErrorMessage, (const OrtStatus* status))                                            \
  X(7, OrtStatus*, CreateSession,                                                                          \
    (const OrtEnv* env, const char* model_path, const OrtSessionOptions* options, OrtSession** out))       \
  X(9, OrtStatus*, Run,                                                                                    \
    (OrtSession* session, const OrtRunOptions* run_options, const char* const* input_names,                \
     const OrtValue* const* inputs, size_t input_len, const char* const* output_names, size_t output_len,  \
     OrtValue** outputs))                                                                                  \
  X(10, OrtStatus*, CreateSessionOptions, (OrtSessionOptions** options))                                   \
  X(23, OrtStatus*, SetSessionGraphOptimizationLevel, (OrtSessionOptions* options, int level))             \
  X(49, OrtStatus*, CreateTensorWithDataAsOrtValue,                                                        \
    (const OrtMemoryInfo* info, void* p_data, size_t p_data_len, const int64_t* shape, size_t shape_len,   \
     int type, OrtValue** out))                                                                            \
  X(51, OrtStatus*, GetTensorMutableData, (OrtValue* value, void** out))                                   \
  X(60, OrtStatus*, GetTensorElementType, (const OrtTensorTypeAndShapeInfo* info, int* out))               \
  X(61, OrtStatus*, GetDimensionsCount, (const OrtTensorTypeAndShapeInfo* info, size_t* out))              \
  X(62, OrtStatus*, GetDimensions, (const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t dims_len)) \
  X(65, OrtStatus*, GetTensorTypeAndShape, (const OrtValue* value, OrtTensorTypeAndShapeInfo** out))      \
  X(69, OrtStatus*, CreateCpuMemoryInfo, (int allocator_type, int mem_type, OrtMemoryInfo** out))          \
  X(92, void, ReleaseEnv, (OrtEnv * env))                                                                  \
  X(93, void, ReleaseStatus, (OrtStatus * status))                                                         \
  X(94, void, ReleaseMemoryInfo, (OrtMemoryInfo * info))                                                   \
  X(95, void, ReleaseSession, (OrtSession * session))                                                      \
  X(96, void, ReleaseValue, (OrtValue * value))                                                            \
  X(99, void, ReleaseTensorTypeAndShapeInfo, (OrtTensorTypeAndShapeInfo * info))                           \
  X(100, void, ReleaseSessionOptions, (OrtSessionOptions * options))                                       \
  X(119, OrtStatus*, CreateEnvWithGlobalThreadPools,                                                       \
    (int log_level, const char* log_id, const OrtThreadingOptions* tp_options, OrtEnv** out))              \
  X(120, OrtStatus*, DisablePerSessionThreads, (OrtSessionOptions * options))                              \
  X(121, OrtStatus*, CreateThreadingOptions, (OrtThreadingOptions * *out))                                 \
  X(122, void, ReleaseThreadingOptions, (OrtThreadingOptions * options))                                   \
  X(130, OrtStatus*, AddSessionConfigEntry,                                                                \
    (OrtSessionOptions * options, const char* config_key, const char* config_value))                       \
  X(144, OrtStatus*, CreateAndRegisterAllocator,                                                           \
    (OrtEnv * env, const OrtMemoryInfo* mem_info, const OrtArenaCfg* arena_cfg))                           \
  X(147, OrtStatus*, SetGlobalIntraOpNumThreads, (OrtThreadingOptions * options, int threads))             \
  X(148, OrtStatus*, SetGlobalInterOpNumThreads, (OrtThreadingOptions * options, int threads))

/* The typed table: one member per slot, named and typed as ONNX Runtime names and types it. */
typedef struct leap_ort {
#define LEAP_ORT_MEMBER(slot, ret, name, params) ret(*name) params;
  LEAP_ORT_SLOTS(LEAP_ORT_MEMBER)
#undef LEAP_ORT_MEMBER
} leap_ort;

#endif
