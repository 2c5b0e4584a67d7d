/* The C tests' assertions: CHECK counts a pass or prints the failure with pra's last error. */
#ifndef PRA_TEST_CHECK_H
#define PRA_TEST_CHECK_H

#include <stdio.h>

#include "pra.h"

static int passed = 0, failed = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (cond) {                                                                      \
      passed++;                                                                      \
    } else {                                                                         \
      failed++;                                                                      \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, \
              #cond, pra_last_error_message());                                      \
    }                                                                                \
  } while (0)

#define EXPECT(call, code) CHECK((call) == (code))

#endif
