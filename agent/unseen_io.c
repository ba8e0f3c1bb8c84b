/*
 * unseen_io.c - telling, from the VMM's calls, that guest RAM may be written
 * by transfers the agent does not see.
 *
 * A merge is safe against reads that write guest RAM by DMA (O_DIRECT) only
 * because the agent records each one while it is in flight (engine/
 * inflight.h). Reads submitted through io_uring, devices given guest RAM
 * for DMA through VFIO, iommufd, vhost-vdpa or vhost-scsi, and memory registered with
 * an RDMA adapter bypass the interposed read calls: once a VMM uses any of
 * them, no page of guest RAM may be replaced any more (md_agent_io_unseen).
 *
 * io_uring cannot be judged by its set-up: QEMU sets up a ring for every
 * event loop (polls and timeouts only) whatever its drives use. So the
 * entries are judged as they are submitted, through liburing's submit
 * calls (QEMU's path; the layout of struct io_uring is liburing's, the
 * version we build against being the one Debian ships to QEMU). An entry
 * whose opcode is not known to leave user memory unwritten counts as a read
 * into guest RAM: its target may be registered later, and buffers it
 * selects are not in the entry. A MADVISE entry that discards counts too
 * (the kernel's zap runs later, where no merge may come between), and its
 * range is first discarded as madvise() does (md__uring_discards): the
 * kernel's own zap of a merged page, in the pool's private file mapping,
 * would show the pool slot again, reused since by another page.
 * A VMM that drives io_uring through the C library's syscall(2) instead
 * (Rust's io-uring crate, used by Cloud Hypervisor's block devices, does)
 * is not judged: any entry it submits stops merging (preload.c), but a
 * MADVISE among them discards merged pages unseen, which then read their
 * pool slot again (a known limit, docs/ARCHITECTURE.md). Judging them
 * would mean reading a ring other threads fill, at layouts newer kernels
 * change (SQ_REWIND, mixed entry sizes), under seccomp filters that
 * forbid the reads. One that makes the system calls itself is not seen
 * (documented).
 */
#include <errno.h>
#include <linux/bsg.h>
#include <linux/vfio.h>
#include <linux/vhost.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <liburing.h>
#include <scsi/sg.h>

#include "agent_internal.h"

/* linux/iommufd.h (Linux 6.2) is newer than Debian 12's headers. */
#ifndef IOMMU_IOAS_MAP
#define IOMMU_IOAS_MAP _IO(';', 0x85)
#endif

/* Operations that never write user memory nor pin it: polls, timeouts,
 * syncs, cancels, sends (copied from the process's memory as they run,
 * unless zero-copy: MSG_ZEROCOPY on an SO_ZEROCOPY socket pins the pages
 * until sent, as a registered buffer is pinned).
 * Everything else may write it (reads, receives, statx, provided buffers),
 * discard it (madvise), or is newer than this list; and writes may pin it:
 * an O_DIRECT write pins the guest pages it sends, and one sending a page
 * read-time sharing mapped from an image pins the image's page, which a
 * lease break could then not wait for (writes.c sees only pwrite). */
static int op_leaves_memory(const struct io_uring_sqe *e)
{
	switch (e->opcode) {
	case IORING_OP_SEND:
	case IORING_OP_SENDMSG:
		return !(e->msg_flags & MSG_ZEROCOPY) && !(e->ioprio & IORING_RECVSEND_FIXED_BUF);
	case IORING_OP_NOP:
	case IORING_OP_FSYNC:
	case IORING_OP_SYNC_FILE_RANGE:
	case IORING_OP_FALLOCATE:
	case IORING_OP_FADVISE:
	case IORING_OP_POLL_ADD:
	case IORING_OP_POLL_REMOVE:
	case IORING_OP_TIMEOUT:
	case IORING_OP_TIMEOUT_REMOVE:
	case IORING_OP_LINK_TIMEOUT:
	case IORING_OP_ASYNC_CANCEL:
	case IORING_OP_CLOSE:
	case IORING_OP_SHUTDOWN:
		return 1;
	default:
		return 0;
	}
}

int md__uring_submits_writes(const void *ring_arg)
{
	const struct io_uring *ring = ring_arg;
	if (!ring || !ring->sq.sqes)
		return 0;
	const struct io_uring_sq *sq = &ring->sq;
	/* A liburing of another layout (2.1 and 2.2 have padding, zeroed,
	 * where ring_mask and ring_entries are): its entries cannot be found,
	 * so they count as reads. */
	if (!sq->ring_entries || sq->ring_mask != sq->ring_entries - 1 || !sq->kring_mask ||
	    *sq->kring_mask != sq->ring_mask)
		return 1;
	/* Entries queued since the last submit, as liburing's flush takes them;
	 * never more than the ring holds, whatever the counters say. */
	unsigned n = sq->sqe_tail - sq->sqe_head;
	if (n > sq->ring_entries)
		n = sq->ring_entries;
	unsigned shift = (ring->flags & IORING_SETUP_SQE128) ? 1 : 0;
	for (unsigned i = 0; i < n; i++) {
		unsigned idx = ((sq->sqe_head + i) & sq->ring_mask) << shift;
		if (!op_leaves_memory(&sq->sqes[idx]))
			return 1;
	}
	return 0;
}

void md__uring_discards(const void *ring_arg, void (*fn)(void *arg, void *addr, size_t len, int advice),
			void *arg)
{
	const struct io_uring *ring = ring_arg;
	if (!ring || !ring->sq.sqes)
		return;
	const struct io_uring_sq *sq = &ring->sq;
	/* Entries of a layout not ours cannot be found (as above). */
	if (!sq->ring_entries || sq->ring_mask != sq->ring_entries - 1 || !sq->kring_mask ||
	    *sq->kring_mask != sq->ring_mask)
		return;
	unsigned n = sq->sqe_tail - sq->sqe_head;
	if (n > sq->ring_entries)
		n = sq->ring_entries;
	unsigned shift = (ring->flags & IORING_SETUP_SQE128) ? 1 : 0;
	for (unsigned i = 0; i < n; i++) {
		const struct io_uring_sqe *e = &sq->sqes[((sq->sqe_head + i) & sq->ring_mask) << shift];
		if (e->opcode != IORING_OP_MADVISE)
			continue;
		/* As the kernel reads it (io_madvise_prep): a 64-bit length
		 * in off (Linux 6.5), else the 32-bit one; an entry it refuses
		 * (a buffer index, a descriptor) discards nothing. */
		uintptr_t addr = (uintptr_t)e->addr;
		uint64_t len = e->off ? e->off : e->len;
		int advice = (int)e->fadvise_advice;
		if (e->buf_index || e->splice_fd_in || addr % MD_PAGE || !len ||
		    len > UINTPTR_MAX - MD_PAGE - addr)
			continue;
		if (advice == MADV_DONTNEED || advice == MADV_DONTNEED_LOCKED || advice == MADV_FREE ||
		    advice == MADV_GUARD_INSTALL)
			fn(arg, (void *)addr, (size_t)((len + MD_PAGE - 1) & ~(uint64_t)(MD_PAGE - 1)), advice);
	}
}

int md__uring_register_pins(unsigned opcode)
{
	/* Linux 6.3's IORING_REGISTER_USE_REGISTERED_RING flag: the top bit. */
	switch (opcode & ~(1u << 31)) {
	case IORING_UNREGISTER_BUFFERS:
	case IORING_REGISTER_FILES:
	case IORING_UNREGISTER_FILES:
	case IORING_REGISTER_EVENTFD:
	case IORING_UNREGISTER_EVENTFD:
	case IORING_REGISTER_FILES_UPDATE:
	case IORING_REGISTER_EVENTFD_ASYNC:
	case IORING_REGISTER_PROBE:
	case IORING_REGISTER_PERSONALITY:
	case IORING_UNREGISTER_PERSONALITY:
	case IORING_REGISTER_RESTRICTIONS:
	case IORING_REGISTER_ENABLE_RINGS:
	case IORING_REGISTER_FILES2:
	case IORING_REGISTER_FILES_UPDATE2:
	case IORING_REGISTER_IOWQ_AFF:
	case IORING_UNREGISTER_IOWQ_AFF:
	case IORING_REGISTER_IOWQ_MAX_WORKERS:
	case IORING_REGISTER_RING_FDS:
	case IORING_UNREGISTER_RING_FDS:
	case IORING_REGISTER_PBUF_RING:	/* reads choose from them: judged as reads */
	case IORING_UNREGISTER_PBUF_RING:
	case IORING_REGISTER_SYNC_CANCEL:
	case IORING_REGISTER_FILE_ALLOC_RANGE:
		return 0;
	default:	/* buffers (pinned), cloned buffers, zero-copy receive, newer */
		return 1;
	}
}

int md__ioctl_maps_dma(unsigned long request)
{
	/* The kernel looks at the low 32 bits only. */
	unsigned int r = (unsigned int)request;
	if (r == (unsigned int)VFIO_IOMMU_MAP_DMA || r == (unsigned int)IOMMU_IOAS_MAP)
		return 1;
	/* vhost-scsi pins the guest's data buffers and the target writes
	 * read data into those frames (not through the page tables): a page
	 * merged under it would lose the read. */
	if (r == (unsigned int)VHOST_SCSI_SET_ENDPOINT)
		return 1;
	/* vhost-vdpa: a device behind it maps guest RAM through IOTLB
	 * updates, written to its descriptor; the set-up before them asks
	 * the vdpa-only ioctls (number 0x70 and up; the kernel's vhost-net
	 * and -vsock, which copy through the page tables, stay below). */
	return _IOC_TYPE(r) == VHOST_VIRTIO && _IOC_NR(r) >= 0x70;
}

/* Adds the n (at most max - *k) buffers of an iovec array at iov (user
 * memory: struct sg_iovec and struct iovec are alike) to addr/len: 0, or
 * -1 if it cannot be read or holds too many. */
static int sg_iovecs(uint64_t iov, unsigned n, uintptr_t *addr, size_t *len, size_t max, size_t *k)
{
	struct sg_iovec v[16];
	if (n > max - *k)
		return -1;
	for (unsigned done = 0; done < n;) {
		unsigned m = n - done < 16 ? n - done : 16;
		if (md__copy_in(v, (const void *)(uintptr_t)(iov + done * sizeof(v[0])), m * sizeof(v[0])))
			return -1;
		for (unsigned i = 0; i < m; i++, (*k)++) {
			addr[*k] = (uintptr_t)v[i].iov_base;
			len[*k] = v[i].iov_len;
		}
		done += m;
	}
	return 0;
}

int md__sg_io_buffers(const void *arg, uintptr_t *addr, size_t *len, size_t max)
{
	int id, err;
	size_t k = 0;
	if (!arg || (err = md__copy_in(&id, arg, sizeof(id))) == -EFAULT)
		return 0;	/* the kernel's EFAULT: no transfer */
	if (err)
		return -1;
	if (id == 'S') {
		struct sg_io_hdr h;
		if (md__copy_in(&h, arg, sizeof(h)))
			return 0;
		if (!h.dxfer_len || h.dxfer_direction == SG_DXFER_NONE)
			return 0;
		if (!h.iovec_count) {
			if (max < 1)
				return -1;
			addr[0] = (uintptr_t)h.dxferp;
			len[0] = h.dxfer_len;
			return 1;
		}
		return sg_iovecs((uintptr_t)h.dxferp, h.iovec_count, addr, len, max, &k) ? -1 : (int)k;
	}
	if (id == 'Q') {
		struct sg_io_v4 h;
		if (md__copy_in(&h, arg, sizeof(h)))
			return 0;
		const struct { uint64_t p; uint32_t n, iovs; } dir[2] = {
			{ h.dout_xferp, h.dout_xfer_len, h.dout_iovec_count },
			{ h.din_xferp, h.din_xfer_len, h.din_iovec_count },
		};
		/* The kernel's bsg maps the flat buffer whatever the iovec
		 * counts say (scsi_bsg_sg_io_fn); the iovecs are looked at too,
		 * for a kernel that would not. */
		for (int d = 0; d < 2; d++) {
			if (!dir[d].n)
				continue;
			if (k == max)
				return -1;
			addr[k] = (uintptr_t)dir[d].p;
			len[k++] = dir[d].n;
			if (dir[d].iovs && sg_iovecs(dir[d].p, dir[d].iovs, addr, len, max, &k))
				return -1;
		}
		return (int)k;
	}
	return 0;	/* an interface the kernel refuses */
}
