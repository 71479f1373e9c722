/* Compiles an op's type-generic body twice: fp32 with plain names, and double with the _f64
 * suffix (the twin the tests differentiate by finite differences). Use, in <op>.c:
 *   #define XD_TWIN_BODY "ops/cpu/<op>_impl.inc"
 *   #include "ops/cpu/twin.h"
 * Inside the body: R is the real type, SFX(name) the suffixed name, GEMM the matching
 * cblas_?gemm (include <cblas.h> first if the body uses it); <tgmath.h> picks expf/exp etc.
 * from the argument type. No include guard: once per translation unit, by design. */
#ifndef XD_TWIN_BODY
#error "define XD_TWIN_BODY before including ops/cpu/twin.h"
#endif

#define R float
#define SFX(name) name
#define GEMM cblas_sgemm
#include XD_TWIN_BODY
#undef R
#undef SFX
#undef GEMM

#define R double
#define SFX(name) name##_f64
#define GEMM cblas_dgemm
#include XD_TWIN_BODY
#undef R
#undef SFX
#undef GEMM
