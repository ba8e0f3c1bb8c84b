#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int log_fd = STDERR_FILENO;
static uint64_t said[4];     /* keys said once: 0..255 */

int md__log_open(const char *path)
{
	if (path && *path && strcmp(path, "-") != 0) {
		/* Not blocking: a FIFO with no reader would hold the VMM's
		 * first MADV_MERGEABLE (ENXIO now: stderr then), a full one
		 * every thread that logs (a line lost instead). */
		int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
		if (fd < 0)
			return -errno;
		log_fd = fd;
	}
	return 0;
}

static void vlog(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vlog(const char *fmt, va_list ap)
{
	/* Called inside the VMM's calls: a write that fails (a full FIFO, a
	 * full disk) must not change the errno they return with. */
	int saved = errno;
	char line[512];
	int n = snprintf(line, sizeof(line), "memdedup[%d]: ", (int)getpid());
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* One write(2) keeps lines whole when threads log at once. */
	ssize_t r = write(log_fd, line, (size_t)n);
	(void)r;
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
