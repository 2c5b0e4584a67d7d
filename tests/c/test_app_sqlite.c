/* A C program that owns its database through the system's SQLite (libsqlite3) and links
 * libpra.so, whose SQLite is its own: the rule "one SQLite per database file per process".
 * It counts and snapshots through its own connection (pra_status_json_counted,
 * pra_backup_adopt), and its locks hold: another process cannot take the database while this
 * one reads it. It also shows why the rule exists: pra_status_json, which opens the file with
 * libpra's SQLite, drops this process's lock. Run by tests/c/run.sh. */
#define _POSIX_C_SOURCE 200809L
#include "pra.h"
#include "check.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>


/* In another process: could it lock SQLite's shared-lock bytes for writing right now (that is,
   does this process hold no SQLite lock on the file any more)? 1 yes, 0 no. The child asks the
   kernel (F_GETLK), not SQLite: a forked SQLite would believe it still holds our locks. */
static int other_process_can_lock(const char *db) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(db, O_RDWR);
    if (fd < 0) _exit(2);
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0x40000002; /* SQLite's SHARED_FIRST */
    fl.l_len = 510;          /* SHARED_SIZE */
    if (fcntl(fd, F_GETLK, &fl) != 0) _exit(2);
    _exit(fl.l_type == F_UNLCK ? 1 : 0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 2;
}

int main(int argc, char **argv) {
  if (argc != 2 || strlen(argv[1]) > 3000) {
    fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  char db[3100], backups[3100], snap[3200];
  snprintf(db, sizeof db, "%s/app.db", argv[1]);
  snprintf(backups, sizeof backups, "%s/backup", argv[1]);
  snprintf(snap, sizeof snap, "%s/backup/snapshot.tmp", argv[1]);
  sqlite3 *app;
  CHECK(sqlite3_open(db, &app) == SQLITE_OK);
  CHECK(sqlite3_exec(app,
                     "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);"
                     "INSERT INTO events (body) VALUES ('a'), ('b'), ('c');",
                     NULL, NULL, NULL) == SQLITE_OK);
  /* The app reads in a transaction: it holds a SHARED lock on the file. */
  CHECK(sqlite3_exec(app, "BEGIN", NULL, NULL, NULL) == SQLITE_OK);
  sqlite3_stmt *st;
  CHECK(sqlite3_prepare_v2(app, "SELECT count(*) FROM events", -1, &st, NULL) == SQLITE_OK);
  CHECK(sqlite3_step(st) == SQLITE_ROW);
  long long count = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  CHECK(count == 3);
  CHECK(other_process_can_lock(db) == 0);

  char *json = NULL;
  CHECK(pra_status_json_counted(count, NULL, backups, "events", &json) == PRA_RESULT_OK);
  CHECK(json != NULL && strstr(json, "\"count\":3") != NULL);
  pra_string_free(json);
  CHECK(other_process_can_lock(db) == 0); /* the lock held */

  /* A backup through the app's own SQLite, filed by pra. */
  CHECK(pra_status_json_counted(-1, "disk gone", backups, NULL, &json) == PRA_RESULT_OK);
  CHECK(json != NULL && strstr(json, "disk gone") != NULL && strstr(json, "\"count\":null") != NULL);
  pra_string_free(json);
  sqlite3 *dst;
  char mkdir_cmd[3300];
  snprintf(mkdir_cmd, sizeof mkdir_cmd, "mkdir -p '%s'", backups);
  CHECK(system(mkdir_cmd) == 0);
  CHECK(sqlite3_open(snap, &dst) == SQLITE_OK);
  sqlite3_backup *b = sqlite3_backup_init(dst, "main", app, "main");
  CHECK(b != NULL);
  CHECK(sqlite3_backup_step(b, -1) == SQLITE_DONE);
  sqlite3_backup_finish(b);
  sqlite3_close(dst);
  char *entry = NULL;
  CHECK(pra_backup_adopt(snap, db, backups, &entry) == PRA_RESULT_OK);
  CHECK(entry != NULL && strstr(entry, "\"verified\"") != NULL);
  pra_string_free(entry);
  CHECK(access(snap, F_OK) != 0); /* moved into place */
  CHECK(other_process_can_lock(db) == 0);

  /* Why the rule: libpra's own SQLite opening and closing the file drops our lock. */
  CHECK(pra_status_json(db, backups, "events", &json) == PRA_RESULT_OK);
  pra_string_free(json);
  CHECK(other_process_can_lock(db) == 1);

  sqlite3_exec(app, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(app);
  printf("c (system SQLite beside libpra): %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
