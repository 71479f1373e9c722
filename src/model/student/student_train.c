#include "model/student/student_train.h"

#include <stdlib.h>
#include <string.h>

#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

#define F(n) ((R *)xd_malloc((size_t)(n) * sizeof(R)))
#define XD_TWIN_BODY "model/student/student_train_impl.inc"
#include "ops/cpu/twin.h"
#undef F
