#include "ops/cpu/embedding.h"
#include <stddef.h>
#include <string.h>

#define XD_TWIN_BODY "ops/cpu/embedding_impl.inc"
#include "ops/cpu/twin.h"
