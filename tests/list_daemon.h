/* list_daemon.h - the daemon's and protocol's tests. */
#define TEST_LIST_DAEMON(X)
