/*
 * inflight.h - reads in flight into guest RAM, so that a merge never
 * replaces a page the kernel may still be writing behind the page tables.
 *
 * A read with O_DIRECT pins its buffer's pages and the device writes them
 * by DMA: no write fault, so write-protection does not stop it, and a page
 * replaced meanwhile would lose the data (the read lands in the old frame).
 * The VMM's reads go through the agent (md_agent_pread, md_agent_preadv):
 * each one into registered RAM is recorded here before the system call and
 * removed after it returns. A freeze checks, after write-protecting and
 * before comparing, that no recorded read covers the run, else gives up.
 *
 * Why this is enough: a read that pinned a page before the freeze was
 * recorded before it pinned, and the freeze's page-table lock and TLB flush
 * order that record before our check; a read that pins after the freeze
 * takes a write-protect fault first and waits for the merge to end; one
 * that returned before the check wrote before the compare, which sees it.
 * Reads the agent does not see cannot be recorded: once the VMM sets up
 * Linux AIO (libaio's io_setup), submits through liburing an io_uring entry
 * that may write memory or registers buffers, or gives a device memory for
 * DMA (VFIO, iommufd, vhost-vdpa), md__inflight_block makes every range busy (agent/unseen_io.c). A VMM
 * driving io_uring without liburing is not seen: docs/ARCHITECTURE.md.
 */
#ifndef MD_INFLIGHT_H
#define MD_INFLIGHT_H
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define MD_IO_SLOTS 64          /* reads in flight recorded one by one */
#define MD_IO_RANGES 16         /* buffers of one read kept apart */

struct md__io_slot {
	int used;               /* claimed by a reader (CAS) */
	int active;             /* ranges valid (release/acquire) */
	unsigned n;
	uintptr_t lo[MD_IO_RANGES], hi[MD_IO_RANGES];
};

struct md__inflight {
	struct md__io_slot slot[MD_IO_SLOTS];
	/* Reads that found no free slot: while any runs, every range is
	 * taken to be busy. */
	int overflow;
};

/* Records a read into iov[0..cnt) (any thread). Returns a token for
 * md__inflight_end. Never fails: without a slot the read covers all. */
int md__inflight_begin(struct md__inflight *f, const struct iovec *iov, int cnt);
void md__inflight_end(struct md__inflight *f, int token);
/* From now on every range is busy, for good: the VMM writes guest RAM in a
 * way we do not see (inflight.h), and no merge is safe any more. */
void md__inflight_block(struct md__inflight *f);
/* 1 if a recorded read covers part of [addr, addr+len). */
int md__inflight_busy(struct md__inflight *f, uintptr_t addr, size_t len);
#endif
