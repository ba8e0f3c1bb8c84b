/* list_engine.h - the engine's tests (content-based merging). */
#define TEST_LIST_ENGINE(X) \
	X(engine_hints_stack) X(engine_index_collision) X(engine_index_filter) X(engine_pool_write_once) X(engine_pool_frees_in_batches) \
	X(engine_merge_shares) X(engine_merge_slots_run) X(engine_zero_pages) X(engine_fill_strips) X(engine_failed_map_remakes) X(engine_vma_budget_when_uncounted) X(engine_fork_after_merge) \
	X(engine_writer_waits_for_merge) X(engine_fault_after_handover) X(engine_merge_cost) X(engine_pm_private_anon) X(engine_unregister_keeps_content) X(engine_unregister_short_of_memory) X(engine_discard_spans_regions) X(engine_leaves_vmm_holes) X(engine_register_again) \
	X(engine_scanner_merges) X(engine_scanner_runs_split_at_regions) X(engine_scanner_zero_runs) X(engine_scanner_leaves_vmm_holes) X(engine_scanner_fill_runs) X(engine_scanner_slows_when_quiet) X(engine_scanner_keeps_rate_in_band) X(engine_scanner_skips_volatile) X(engine_scanner_file_matches_all) X(engine_scanner_queues_page_once) X(engine_scanner_reads_only_present) X(engine_scanner_sweeps_near_hints) X(engine_scanner_adapts_ratio) X(engine_stress_no_lost_write)
