/* list_daemon.h - the daemon's and protocol's tests. */
#define TEST_LIST_DAEMON(X) \
	X(daemon_proto_round_trip) X(daemon_proto_rejects) X(daemon_tunables) X(daemon_proto_rxbuf) \
	X(daemon_publish_lookup) X(daemon_publish_copies_past_index_bound) X(daemon_random_session) X(daemon_domains_per_uid) X(daemon_pool_pages_per_uid) X(daemon_candidates_and_share) X(daemon_share_told_to_newcomer) X(daemon_agent_connection_not_admin) X(daemon_share_coalesced) X(daemon_agent_only_refused_at_header) X(daemon_sightings_table) X(daemon_agent_numbers) X(daemon_candidates_batched) X(daemon_reads_pair) X(daemon_reads_pair_publisher) X(daemon_hello_wrong_pid) X(daemon_agent_in_pid_namespace) X(daemon_hello_again_takes_record) X(daemon_hello_again_after_exec) X(daemon_hello_once) \
	X(daemon_malformed_closes) X(daemon_log_flood_bounded) X(daemon_drops_stalled_peers) X(daemon_stream_framing) X(daemon_client_framing) X(daemon_client_checks_pool) X(daemon_client_hello_to_older_daemon) X(daemon_survives_corpus) X(daemon_agent_killed) X(daemon_refs_bounded) X(daemon_reconnect_keeps_refs) X(daemon_reconnect_needs_pidfd) X(daemon_fallback_pidfd_checks_uid) X(daemon_reconnect_without_pool_maps) X(daemon_reads_stream_fair) X(daemon_pool_trimmed_when_quiet) \
	X(daemon_dies_client_enotconn) X(daemon_late_replies_given_back) X(daemon_client_late_replies) X(daemon_control) X(daemon_control_deadline) X(daemon_late_unmerge_refusal) X(daemon_controls_per_uid) X(daemon_cli_control) X(daemon_status_pages) \
	X(daemon_single_instance) X(daemon_ensure_starts) \
	X(daemon_socket_path_kept) X(daemon_failed_start_cleans) X(daemon_run_dir_too_long) X(daemon_concurrent_starts) X(daemon_relative_paths) X(daemon_closed_stdio) X(daemon_host_socket_found) \
	X(daemon_welcome_fd_kept) X(daemon_client_checks_daemon) X(daemon_tmp_run_dir_checked) X(daemon_connection_limits) X(daemon_connections_kept_for_root) X(daemon_agents_per_uid) X(daemon_share_split_per_user) X(daemon_unsent_bounded) \
	X(daemon_agent_without_pidfd_refused) X(daemon_agent_without_pidfd_refused_at_hello) X(daemon_accept_backs_off) \
	X(daemon_client_unsent_unrefs_kept) X(daemon_client_publish_each_gives_back)
