/* The C ABI, exercised from C: every function, every reachable result code, NULL arguments,
 * invalid UTF-8, a corrupt lock file, one store handle shared by several threads, and the same
 * record on a real etcd server (started by run.sh).
 * Built with -Wall -Wextra -Werror against include/pra.h, linked to libpra.so and libpra.a,
 * and run under valgrind by `make test-c`. Usage: test_pra SCRATCH_DIR ETCD_HOST:PORT */
#define _POSIX_C_SOURCE 200809L
#include "pra.h"
#include "check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Not in pra.h: exported only by a libpra built with the test-only cargo feature test-panic, as
 * run.sh builds the library this test links. */
pra_result pra_test_panic(void);



static char url[4200], lock_url[4200], lock_path[4096], db[4096], backups[4096], etcd_url[4200];

static void test_version_and_names(void) {
  CHECK(strcmp(pra_version(), PRA_VERSION_STRING) == 0);
  const uint32_t codes[] = {PRA_RESULT_OK, PRA_RESULT_STANDBY, PRA_RESULT_INVALID_ARGUMENT,
                            PRA_RESULT_NOT_FOUND, PRA_RESULT_CONFLICT, PRA_RESULT_STALE_TOKEN,
                            PRA_RESULT_INVALID_TRANSITION, PRA_RESULT_BUSY,
                            PRA_RESULT_STORE_UNAVAILABLE, PRA_RESULT_CORRUPT,
                            PRA_RESULT_UNSUPPORTED, PRA_RESULT_IO, PRA_RESULT_INTERNAL,
                            PRA_RESULT_PANIC, PRA_RESULT_REFUSED};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    CHECK(strncmp(pra_result_name(codes[i]), "PRA_RESULT_", 11) == 0);
    CHECK(strcmp(pra_result_name(codes[i]), "PRA_RESULT_UNKNOWN") != 0);
  }
  CHECK(strcmp(pra_result_name(4242), "PRA_RESULT_UNKNOWN") == 0);
}

static void test_open_errors(void) {
  pra_store *s = (pra_store *)0x1; /* must stay untouched on failure */
  EXPECT(pra_store_open(NULL, &s), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(strstr(pra_last_error_message(), "url is NULL") != NULL);
  CHECK(s == (pra_store *)0x1);
  EXPECT(pra_store_open(url, NULL), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_store_open("sqlite:///tmp/\xff\xfe.db", &s), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(strstr(pra_last_error_message(), "UTF-8") != NULL);
  EXPECT(pra_store_open("redis://localhost", &s), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_store_open("", &s), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_store_open("sqlite:///nonexistent-dir/state.db", &s), PRA_RESULT_STORE_UNAVAILABLE);
  EXPECT(pra_store_open("file:///tmp", &s), PRA_RESULT_STORE_UNAVAILABLE); /* a directory */
  CHECK(s == (pra_store *)0x1);
  pra_store_free(NULL); /* a no-op */
  CHECK(1);
}

/* The caller-owned error: filled on failure with that call's result and message, left as it
 * was on success, NULL accepted everywhere. */
static void test_error_object(void) {
  pra_error *err = pra_error_new();
  CHECK(err != NULL);
  CHECK(pra_error_result(err) == PRA_RESULT_OK && strcmp(pra_error_message(err), "") == 0);
  pra_store *s = (pra_store *)0x1;
  EXPECT(pra_store_open_e("redis://first", &s, err), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(pra_error_result(err) == PRA_RESULT_INVALID_ARGUMENT);
  CHECK(strstr(pra_error_message(err), "redis://first") != NULL);
  CHECK(s == (pra_store *)0x1);
  EXPECT(pra_store_open_e(url, &s, err), PRA_RESULT_OK);
  CHECK(strstr(pra_error_message(err), "redis://first") != NULL); /* untouched on success */
  pra_verdict v;
  EXPECT(pra_guard_check_e(s, NULL, &v, err), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(strstr(pra_error_message(err), "site is NULL") != NULL);
  EXPECT(pra_guard_check_e(s, "rbx", &v, NULL), PRA_RESULT_STANDBY); /* NULL err: as without */
  /* A misspelt site is an error naming the sites (PRA_SITES, else rbx,sbg), never "standby". */
  EXPECT(pra_guard_check_e(s, "rxb", &v, err), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(strstr(pra_error_message(err), "unknown site \"rxb\"") != NULL);
  pra_store_free(s);
  CHECK(pra_error_result(NULL) == PRA_RESULT_OK && strcmp(pra_error_message(NULL), "") == 0);
  pra_error_free(err);
  pra_error_free(NULL);
}

static void test_guard_and_changes(const char *store_url) {
  pra_store *s = NULL;
  EXPECT(pra_store_open(store_url, &s), PRA_RESULT_OK);
  CHECK(s != NULL);
  CHECK(strcmp(pra_last_error_message(), "") == 0);
  pra_verdict v;
  memset(&v, 0x7f, sizeof v);
  /* Deny by default. */
  EXPECT(pra_guard_check(s, "rbx", &v), PRA_RESULT_STANDBY);
  CHECK(!v.may_run && v.token == 0 && v.active_site[0] == '\0');
  /* NULLs and bad names. */
  EXPECT(pra_guard_check(NULL, "rbx", &v), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_guard_check(s, NULL, &v), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_guard_check(s, "rbx", NULL), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_guard_check(s, "r b x", &v), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_guard_check(s, "", &v), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_guard_check(s, "\xc3\x28", &v), PRA_RESULT_INVALID_ARGUMENT);
  /* Activate rbx. */
  pra_record r;
  EXPECT(pra_activate(s, "rbx", 0, NULL, "x", &r), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_activate(s, "rbx", 0, "ci", "line\nbreak", &r), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_activate(s, "rbx", 0, "ci", "go live", &r), PRA_RESULT_OK);
  CHECK(strcmp(r.site, "rbx") == 0 && r.token == 1 && strcmp(r.changed_by, "ci") == 0);
  CHECK(strcmp(r.reason, "go live") == 0 && r.changed_at_us > 0);
  EXPECT(pra_guard_check(s, "rbx", &v), PRA_RESULT_OK);
  CHECK(v.may_run && v.token == 1 && strcmp(v.active_site, "rbx") == 0);
  EXPECT(pra_guard_check(s, "SBG", &v), PRA_RESULT_STANDBY);
  CHECK(!v.may_run && strcmp(v.active_site, "rbx") == 0);
  /* Break before make, and stale tokens. */
  EXPECT(pra_activate(s, "sbg", 1, "ci", NULL, NULL), PRA_RESULT_REFUSED);
  CHECK(strstr(pra_last_error_message(), "break before make") != NULL);
  EXPECT(pra_deactivate(s, 0, "ci", NULL, NULL), PRA_RESULT_CONFLICT);
  CHECK(strstr(pra_last_error_message(), "expected token 0") != NULL);
  EXPECT(pra_deactivate(NULL, 1, "ci", NULL, NULL), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_deactivate(s, 1, "ci", NULL, NULL), PRA_RESULT_OK); /* out may be NULL */
  EXPECT(pra_active_site(s, &r), PRA_RESULT_OK);
  CHECK(r.site[0] == '\0' && r.token == 2);
  EXPECT(pra_active_site(s, NULL), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_active_site(NULL, &r), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_activate(s, "sbg", 2, "ci", NULL, &r), PRA_RESULT_OK);
  CHECK(r.token == 3);
  pra_store_free(s);
}

static void test_corrupt_lock_file(void) {
  FILE *f = fopen(lock_path, "w");
  CHECK(f != NULL);
  if (!f) return;
  fputs("# managed by hand\nACTIVE_SITE SBG\n", f);
  fclose(f);
  pra_store *s = NULL;
  EXPECT(pra_store_open(lock_url, &s), PRA_RESULT_OK);
  pra_verdict v;
  EXPECT(pra_guard_check(s, "sbg", &v), PRA_RESULT_CORRUPT);
  CHECK(strstr(pra_last_error_message(), "line 2") != NULL);
  /* The seed's own format. */
  f = fopen(lock_path, "w");
  fputs("ACTIVE_SITE=SBG\n", f);
  fclose(f);
  EXPECT(pra_guard_check(s, "sbg", &v), PRA_RESULT_OK);
  EXPECT(pra_guard_check(s, "rbx", &v), PRA_RESULT_STANDBY);
  pra_store_free(s);
}

static void test_status_and_backup(void) {
  char *json = (char *)0x1;
  EXPECT(pra_status_json(db, backups, NULL, &json), PRA_RESULT_OK);
  CHECK(json != NULL && json != (char *)0x1);
  if (json && json != (char *)0x1) {
    CHECK(strstr(json, "\"count\":null") != NULL);
    CHECK(strstr(json, "\"last_backup_file\":null") != NULL);
    CHECK(strstr(json, "\"backup_age_seconds\":null") != NULL);
    pra_string_free(json);
  }
  json = NULL;
  EXPECT(pra_status_json(db, backups, "events; DROP TABLE x", &json), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(json == NULL);
  EXPECT(pra_status_json(NULL, backups, NULL, &json), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_status_json(db, backups, NULL, NULL), PRA_RESULT_INVALID_ARGUMENT);
  pra_string_free(NULL);
  EXPECT(pra_backup(db, backups, &json), PRA_RESULT_NOT_FOUND);
  EXPECT(pra_backup(db, NULL, &json), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_test_panic(), PRA_RESULT_PANIC);
  CHECK(strstr(pra_last_error_message(), "panic") != NULL);
}

/* Nothing listens on port 1: opening is lazy, the first call fails closed. */
static void test_unreachable_etcd(void) {
  pra_store *s = NULL;
  EXPECT(pra_store_open_with("etcd://127.0.0.1:1/pra", 0, 60, &s), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_store_open_with("etcd://127.0.0.1:1/pra", 300, 0, &s), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_store_open_with(NULL, 300, 60, &s), PRA_RESULT_INVALID_ARGUMENT);
  EXPECT(pra_store_open_with("etcd://127.0.0.1:1/pra", 300, 60, NULL), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(s == NULL);
  /* A 300 ms deadline instead of the default 5 s. */
  EXPECT(pra_store_open_with("etcd://127.0.0.1:1/pra", 300, 60, &s), PRA_RESULT_OK);
  pra_verdict v;
  memset(&v, 0x7f, sizeof v);
  EXPECT(pra_guard_check(s, "rbx", &v), PRA_RESULT_STORE_UNAVAILABLE);
  CHECK(strstr(pra_last_error_message(), "etcd://127.0.0.1:1/pra") != NULL);
  CHECK(v.token == 0x7f7f7f7f7f7f7f7fULL); /* untouched on failure */
  pra_store_free(s);
}

/* Runs from C: admission atomic with registration, a heartbeat thread, the role lost while
   the run goes on, the end recorded; and the fence's rule for the program's own SQLite. */
static void test_runs(const char *store_url) {
  pra_store *s = NULL, *ops = NULL;
  EXPECT(pra_store_open_with(store_url, 1000, 3, &s), PRA_RESULT_OK);
  EXPECT(pra_store_open(store_url, &ops), PRA_RESULT_OK);
  pra_run *run = (pra_run *)0x1;
  EXPECT(pra_run_start(s, "rbx", "invoices", &run), PRA_RESULT_STANDBY);
  CHECK(run == (pra_run *)0x1); /* untouched */
  pra_record r;
  EXPECT(pra_active_site(ops, &r), PRA_RESULT_OK);
  EXPECT(pra_activate(ops, "rbx", r.token, "ci", "runs", &r), PRA_RESULT_OK);
  run = NULL;
  EXPECT(pra_run_start(s, "rbx", "invoices", &run), PRA_RESULT_OK);
  CHECK(run != NULL && pra_run_token(run) == r.token);
  EXPECT(pra_run_check(run), PRA_RESULT_OK);
  EXPECT(pra_deactivate(ops, r.token, "ci", "failover", &r), PRA_RESULT_OK);
  /* The heartbeat thread (every 0.5 s) notices within a few seconds. */
  pra_result c = PRA_RESULT_OK;
  for (int i = 0; i < 100 && c == PRA_RESULT_OK; i++) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    c = pra_run_check(run);
  }
  EXPECT(c, PRA_RESULT_STANDBY);
  CHECK(strstr(pra_last_error_message(), "lost the active role") != NULL);
  EXPECT(pra_run_finish(run, 1, "revoked"), PRA_RESULT_OK);
  EXPECT(pra_run_finish(NULL, 0, NULL), PRA_RESULT_INVALID_ARGUMENT);
  pra_run_free(NULL);
  EXPECT(pra_run_check(NULL), PRA_RESULT_INVALID_ARGUMENT);
  CHECK(pra_run_token(NULL) == 0);
  pra_store_free(s);
  pra_store_free(ops);
  /* The fence: a newer token was admitted, an older one is refused. */
  CHECK(strstr(pra_fence_sql(2), "max(token") != NULL && pra_fence_sql(3) == NULL);
  EXPECT(pra_fence_decide(5, 4), PRA_RESULT_OK);
  EXPECT(pra_fence_decide(5, 5), PRA_RESULT_OK);
  EXPECT(pra_fence_decide(4, 5), PRA_RESULT_STALE_TOKEN);
}

static pra_store *shared;

static void *checker(void *arg) {
  long bad = 0;
  (void)arg;
  for (int i = 0; i < 500; i++) {
    pra_verdict v;
    pra_result r = pra_guard_check(shared, (i % 2) ? "rbx" : "sbg", &v);
    if (r != PRA_RESULT_OK && r != PRA_RESULT_STANDBY) bad++;
    if (r == PRA_RESULT_OK && !v.may_run) bad++;
    /* The error message is per thread: a failure here does not leak into other threads. */
    if (pra_guard_check(shared, "bad name", &v) != PRA_RESULT_INVALID_ARGUMENT) bad++;
    if (strstr(pra_last_error_message(), "invalid site") == NULL) bad++;
  }
  return (void *)bad;
}

static void test_threads(void) {
  EXPECT(pra_store_open(url, &shared), PRA_RESULT_OK);
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, checker, NULL);
  long bad = 0;
  for (int i = 0; i < 4; i++) {
    void *r;
    pthread_join(t[i], &r);
    bad += (long)r;
  }
  CHECK(bad == 0);
  CHECK(strcmp(pra_last_error_message(), "") == 0); /* this thread's last call succeeded */
  pra_store_free(shared);
}

int main(int argc, char **argv) {
  if (argc != 3 || strlen(argv[1]) > 4000 || strlen(argv[2]) > 4000) {
    fprintf(stderr, "usage: %s SCRATCH_DIR ETCD_HOST:PORT (at most 4000 bytes each)\n", argv[0]);
    return 2;
  }
  snprintf(url, sizeof url, "sqlite://%s/state.db", argv[1]);
  snprintf(lock_path, sizeof lock_path, "%s/pra-status.lock", argv[1]);
  snprintf(lock_url, sizeof lock_url, "file://%s", lock_path);
  snprintf(db, sizeof db, "%s/app.db", argv[1]);
  snprintf(backups, sizeof backups, "%s/backup", argv[1]);
  /* A prefix of its own per scratch directory: each run starts from an empty record. */
  snprintf(etcd_url, sizeof etcd_url, "etcd://%s/c-test%s", argv[2], argv[1]);
  test_version_and_names();
  test_open_errors();
  test_error_object();
  test_guard_and_changes(url);
  test_guard_and_changes(etcd_url);
  test_unreachable_etcd();
  {
    char u[4300];
    snprintf(u, sizeof u, "sqlite://%s/runs.db", argv[1]);
    test_runs(u);
    snprintf(u, sizeof u, "%s-runs", etcd_url);
    test_runs(u);
  }
  test_corrupt_lock_file();
  test_status_and_backup();
  test_threads();
  printf("c: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
