#include "ops/cpu/swiglu.h"
#include <tgmath.h>

#define XD_TWIN_BODY "ops/cpu/swiglu_impl.inc"
#include "ops/cpu/twin.h"
