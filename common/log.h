/* log.h - the agent's log: one line per event kind that must be said once. */
#ifndef MD_LOG_H
#define MD_LOG_H

/* Where log lines go: a path, "-" or NULL for stderr. 0, or -errno when
 * the file cannot be opened (lines keep going to stderr). */
int md__log_open(const char *path);
void md__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Logs only the first time for this key (0..255). */
void md__log_once(unsigned key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#endif
