/* xdistill: distil a Transformer LLM into a hybrid xLSTM student, and run it.
 *
 * Public API. Everything returns 0 on success and -1 on error, with a one-line message that
 * names the file and the problem in an xd_err supplied by the caller. There is no global
 * mutable state: every object is created and freed explicitly. */
#ifndef XDISTILL_H
#define XDISTILL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XD_ERR_MAX 1024
typedef struct xd_err {
  char msg[XD_ERR_MAX];
} xd_err;

const char *xd_version(void);

#ifdef __cplusplus
}
#endif
#endif
