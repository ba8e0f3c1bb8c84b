#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int log_fd = STDERR_FILENO;
static uint64_t said[4];     /* keys said once: 0..255 */
/* The log file opened, to tell it from another at its number: a VMM that
 * closed it (close_range) may have opened a file of its own there, which
 * the next line would have been written into. */
static char *log_path;
static dev_t log_dev;
static ino_t log_ino;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static int open_log(const char *path)
{
	/* Not blocking: a FIFO with no reader would hold the VMM's first
	 * MADV_MERGEABLE (ENXIO now: stderr then), a full one every thread
	 * that logs (a line lost instead). */
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return -err;
	}
	log_dev = st.st_dev;
	log_ino = st.st_ino;
	log_fd = fd;
	return 0;
}

int md__log_open(const char *path)
{
	if (!path || !*path || strcmp(path, "-") == 0)
		return 0;
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	int err = open_log(path);
	if (err) {
		free(copy);
		return err;
	}
	log_path = copy;
	return 0;
}

/* The log file's descriptor, opened again if its number names another
 * file now; -1: none (the line is lost). */
static int current_log(void)
{
	if (!log_path)
		return log_fd;
	/* Not waited for without bound: a child forked while another thread
	 * held it would wait for ever (the line is lost instead). */
	int tries = 0;
	while (pthread_mutex_trylock(&log_lock) != 0)
		if (++tries > 1000)
			return -1;
		else
			sched_yield();
	struct stat st;
	if (log_fd >= 0 && (fstat(log_fd, &st) != 0 || st.st_dev != log_dev || st.st_ino != log_ino))
		log_fd = -1;	/* not ours any more: never closed by us */
	if (log_fd < 0)
		open_log(log_path);
	int fd = log_fd;
	pthread_mutex_unlock(&log_lock);
	return fd;
}

static void vlog(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vlog(const char *fmt, va_list ap)
{
	/* Called inside the VMM's calls: a write that fails (a full FIFO, a
	 * full disk) must not change the errno they return with. Nor is it a
	 * cancellation point, as those calls are none: a cancel acting in the
	 * open of the log again left log_lock held (the lines after it lost),
	 * and some callers hold locks of their own. */
	int saved = errno, cancel;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
	char line[512];
	int n = snprintf(line, sizeof(line), "memdedup[%d]: ", (int)getpid());
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* One write(2) keeps lines whole when threads log at once. */
	int fd = current_log();
	if (fd >= 0) {
		ssize_t r = write(fd, line, (size_t)n);
		(void)r;
	}
	pthread_setcancelstate(cancel, NULL);
	errno = saved;
}

void md__log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}

void md__log_once(unsigned key, const char *fmt, ...)
{
	uint64_t bit = 1ull << (key % 64);
	if (__atomic_fetch_or(&said[key / 64 % 4], bit, __ATOMIC_RELAXED) & bit)
		return;
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}
