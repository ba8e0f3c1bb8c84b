/* list.h - every test, in the order the runner runs them. */
#include "list_daemon.h"
#include "list_engine.h"

#define TEST_LIST_AGENT(X) \
	X(plan_aligned) X(plan_unaligned) X(plan_eof) X(plan_partial) \
	X(regions_add_overlap) X(regions_remove_split) X(privatize_keeps_failed_owners) X(rangeset_covers) X(rangeset_remove) X(ours_set_covers) \
	X(inflight_ranges) X(stats_parse_valid) X(stats_parse_rejects) X(proc_start_time) X(range_no_file_vmas) X(range_shared_finds_shared_maps) X(policies_follow_ranges) X(copy_own_pages_all_or_nothing) X(cow_break_changes_resident_pages) X(quiet_walks_wait_for_moved_pages) X(uring_entries_judged) X(uring_register_judged) X(range_runs_mapped_and_gone) \
	X(parse_bool_strict) X(index_resists_chosen_tags) X(scan_off_hint_says_what_to_do) \
	X(cli_usage) X(cli_run_numbers_strict) X(cli_run_checks_preload) X(cli_help_unknown) X(cli_set_checks_all_first) X(cli_set_sends_every_pair) X(cli_set_bad_value_says_why) \
	X(cli_run_missing_command_no_daemon) X(cli_run_setuid_refused) X(cli_run_file_caps_refused) X(cli_run_daemon_leaves_cgroup) X(cli_write_error_fails) X(cli_run_finds_daemon_in_path) X(cli_run_without_daemon_says_what_happens) X(cli_install_layout_runs) X(cli_run_scan_options_need_scan) \
	X(cli_status_ksm_counter_missing) X(cli_status_dead_agent_gone) X(cli_status_files_private) X(cli_status_pid_names) X(cli_status_fifo_no_hang) X(cli_status_sanitized) X(cli_status_long_run_dir) X(cli_status_io_unseen) X(cli_status_totals_keep_settings) \
	X(cli_status_reused_pid_gone) X(cli_status_locked_file_kept) X(cli_status_other_pid_ns) X(cli_status_same_pid_two_ns) X(cli_status_forked_child_not_agent) \
	X(cli_status_daemon_error) X(cli_pause_not_scanning) \
	X(agent_api_rejects) X(agent_stats_file_owned) X(agent_unregister_splits_without_memory) \
	X(share_two_processes) X(write_is_private) X(fallback_unaligned) X(read_across_region_records) X(read_direct_to_end_of_file) X(fallback_filesystem_without_leases) \
	X(fallback_partial) X(small_reads_copied) X(fallback_pipe) X(fallback_path_descriptor) X(mergeable_hole_not_registered) X(userfault_first_not_registered) X(hugetlb_not_registered) X(fallback_writable_file) \
	X(lease_break_keeps_content) X(lease_break_waits_for_direct_write) X(lease_break_short_of_memory) X(unmergeable_short_of_memory_fails) X(failed_map_short_of_memory_keeps_tracking) X(lease_break_then_discard_yields_zeroes) X(lease_break_read_only_pages) X(lease_break_without_signal) X(lease_given_back_before_uid_change) X(lease_gone_with_agent_fd) X(lease_fd_replaced_read_copied) X(lease_fd_reused_for_other_image) X(device_dma_stops_read_sharing) X(map_limit_falls_back) X(vma_budget_falls_back) X(vma_budget_counts_vmm_at_start) \
	X(discard_yields_zeroes) X(discard_after_remap_keeps_vmm_file) X(discard_beside_many_forgotten_keeps_vmm_file) X(discard_after_chroot_yields_zeroes) X(failed_move_keeps_registration) X(move_dontunmap_leaves_zeroes) X(unmerge_makes_private) X(unmerge_unregisters_beside_images) X(preadv_mixed) X(preadv_error_after_shared_part) X(preadv_scattered_one_call) \
	X(fork_child_runs_plain) X(fork_child_policy_lock) X(fork_before_agent_shares) X(stats_dir_full) X(status_lists_agent) X(advice_reaches_new_mappings) \
	X(env_flags_strict) X(env_numbers_strict) X(env_bad_order_and_log_said) X(stats_dir_too_long) \
	X(scan_merges_duplicates) X(scan_rates) X(scan_profit_counts_metadata) X(scan_not_given_to_kernel_ksm) X(scan_turns_off_kernel_merge_any) X(scan_allocator_madvise_no_deadlock) X(scan_allocator_lock_no_deadlock) X(scan_stops_for_unseen_io) X(scan_stops_for_uring_reads) X(scan_stops_for_raw_uring_reads) X(scan_stops_for_sqpoll) X(scan_stops_for_rdma) X(scan_stops_for_device_dma) X(scan_stops_for_uring_buffers) X(scan_stops_for_vdpa) X(scan_gives_ram_to_vmm_userfault) X(scan_takes_ram_back_from_vmm_userfault) X(scan_takes_ram_back_beside_image) X(scan_forgets_vmm_hold_on_moved_ram) X(scan_unmergeable_fills_dropped) X(scan_dropped_then_poisoned) X(scan_merges_beside_event_rings) X(scan_failed_unmap_keeps_pages) X(scan_fill_pages) X(scan_merges_onto_image) X(scan_image_index_bounded) X(scan_image_index_remapped) X(scan_image_index_prunes_written) X(scan_image_copied_read_merges) X(scan_hints_guide_scanner) X(scan_unmerge_after_chroot) X(scan_unmerge_before_registration) X(scan_unmerges_at_once) X(scan_pages_made_inaccessible) X(scan_stop_ends_sleep) X(scan_unmap_split_without_memory) X(scan_take_back_leaves_vmm_registration) X(scan_unregister_short_of_memory_fails) X(scan_unmap_not_held_by_daemon) X(scan_unmap_merged_not_held_by_daemon) X(scan_default_domain_waits_for_slow_daemon) X(scan_vmm_settings_outlive_welcome) X(scan_set_for_one_agent_is_its_own) X(scan_free_gives_back_references) X(scan_locked_memory_not_merged) X(scan_keeps_numa_policy) X(scan_protected_memory_given_up) X(scan_unmerge_and_tunables) X(scan_leaves_pages_being_read) \
	X(scan_off_says_why) \
	X(scan_stress_no_lost_write) X(scan_stress_catches_lost_write) \
	X(cross_process_sharing) X(cross_in_process_duplicates) X(cross_domains_never_share) X(cross_daemon_killed) X(cross_agent_killed_mid_merge) X(cross_daemon_killed_mid_scan) X(cross_daemon_stopped) X(cross_unmap_elsewhere_not_held) X(cross_leaves_vmm_holes) \
	X(cross_stress_no_lost_write) X(cross_unrefs_batched) X(cross_exec_gives_back) X(cross_pid_namespace_shares) X(cross_user_change_moves_domain) X(cross_reads_pair) X(cross_unmerge_short_of_memory) X(cross_unmerge_image_pages) X(cross_daemon_stalled_unrefs_kept)

#define TEST_LIST(X) TEST_LIST_AGENT(X) TEST_LIST_ENGINE(X) TEST_LIST_DAEMON(X)
