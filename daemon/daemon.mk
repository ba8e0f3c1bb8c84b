# daemon.mk - memdedupd, the protocol and the client library.
DAEMON_SRC :=
COMMON_DAEMON_SRC :=
DAEMON_TEST_SRC :=
