#include "ops/cpu/rmsnorm.h"
#include <stddef.h>
#include <tgmath.h>

#define XD_TWIN_BODY "ops/cpu/rmsnorm_impl.inc"
#include "ops/cpu/twin.h"
