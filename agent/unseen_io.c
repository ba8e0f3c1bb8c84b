/*
 * unseen_io.c - telling, from the VMM's calls, that guest RAM may be written
 * by transfers the agent does not see.
 *
 * A merge is safe against reads that write guest RAM by DMA (O_DIRECT) only
 * because the agent records each one while it is in flight (engine/
 * inflight.h). Reads submitted through io_uring, devices given guest RAM
 * for DMA through VFIO, iommufd or vhost-vdpa, and memory registered with
 * an RDMA adapter bypass the interposed read calls: once a VMM uses any of
 * them, no page of guest RAM may be replaced any more (md_agent_io_unseen).
 *
 * io_uring cannot be judged by its set-up: QEMU sets up a ring for every
 * event loop (polls and timeouts only) whatever its drives use. So the
 * entries are judged as they are submitted, through liburing's submit
 * calls (QEMU's path; the layout of struct io_uring is liburing's, the
 * version we build against being the one Debian ships to QEMU). An entry
 * whose opcode is not known to leave user memory unwritten counts as a read
 * into guest RAM: its target may be registered later, buffers it selects are
 * not in the entry, and MADVISE could discard pool pages behind the agent.
 * A VMM that drives the ring through the C library's syscall(2) instead
 * (Rust's io-uring crate, used by Cloud Hypervisor's block devices, does)
 * is judged from the kernel's ring layout, below; one that makes the system
 * calls itself is not seen (documented).
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/vfio.h>
#include <linux/vhost.h>
#include <sys/ioctl.h>
#include <liburing.h>

#include "agent_internal.h"

/* linux/iommufd.h (Linux 6.2) is newer than Debian 12's headers. */
#ifndef IOMMU_IOAS_MAP
#define IOMMU_IOAS_MAP _IO(';', 0x85)
#endif

/* Operations that never write user memory: I/O from it, polls, timeouts,
 * syncs, cancels. Everything else may (reads, receives, statx, provided
 * buffers) or may discard it (madvise), or is newer than this list. */
static int op_leaves_memory(unsigned op)
{
	switch (op) {
	case IORING_OP_NOP:
	case IORING_OP_WRITEV:
	case IORING_OP_WRITE_FIXED:
	case IORING_OP_WRITE:
	case IORING_OP_SEND:
	case IORING_OP_SENDMSG:
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
	/* Entries queued since the last submit, as liburing's flush takes them;
	 * never more than the ring holds, whatever the counters say. */
	unsigned n = sq->sqe_tail - sq->sqe_head;
	if (n > sq->ring_entries)
		n = sq->ring_entries;
	unsigned shift = (ring->flags & IORING_SETUP_SQE128) ? 1 : 0;
	for (unsigned i = 0; i < n; i++) {
		unsigned idx = ((sq->sqe_head + i) & sq->ring_mask) << shift;
		if (!op_leaves_memory(sq->sqes[idx].opcode))
			return 1;
	}
	return 0;
}

/* Rings set up through syscall(2). Their entries are found as the kernel
 * finds them (its ABI, not liburing's): the submission queue's head, tail,
 * mask and index array in the ring the VMM mapped at IORING_OFF_SQ_RING,
 * the entries at IORING_OFF_SQES. The ring's memory is read through the
 * kernel (process_vm_readv), as its mappings may have gone: whatever cannot
 * be read, or was never mapped (IORING_SETUP_NO_MMAP), counts as a read. */
#define RAW_RINGS 64
#define RAW_CHUNK 256	/* entries judged per read of their opcodes */

struct raw_ring {
	int fd;
	unsigned flags;
	struct io_sqring_offsets off;
	uintptr_t ring, sqes;	/* where the VMM mapped them; 0: not yet */
	size_t ring_len, sqes_len;
};

static struct raw_ring raw[RAW_RINGS];
static unsigned raw_used;	/* slots taken, never freed (a new ring may take
				   the slot of one whose descriptor was closed);
				   none: no lock on the VMM's mmap */
static pthread_mutex_t raw_lock = PTHREAD_MUTEX_INITIALIZER;

/* Reads n pieces of our own memory; 0 only if all of them were read. */
static int peek(struct iovec *loc, struct iovec *rem, size_t n)
{
	size_t want = 0;
	for (size_t i = 0; i < n; i++)
		want += rem[i].iov_len;
	return process_vm_readv(getpid(), loc, n, rem, n, 0) == (ssize_t)want ? 0 : -EFAULT;
}

static struct raw_ring *raw_find(int fd)
{
	for (unsigned i = 0; i < raw_used; i++)
		if (raw[i].fd == fd)
			return &raw[i];
	return NULL;
}

int md__raw_ring_setup(int fd, const struct io_uring_params *p)
{
	/* The kernel's own thread takes the entries: no call to judge them at. */
	if (p->flags & IORING_SETUP_SQPOLL)
		return 1;
	pthread_mutex_lock(&raw_lock);
	struct raw_ring *r = raw_find(fd);	/* the descriptor of a ring closed since */
	if (!r && raw_used < RAW_RINGS) {
		r = &raw[raw_used];
		__atomic_store_n(&raw_used, raw_used + 1, __ATOMIC_RELEASE);	/* read unlocked by mmap */
	}
	for (unsigned i = 0; !r && i < RAW_RINGS; i++) {
		/* Full: take the slot of a descriptor that is no ring any more. */
		char path[32], link[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", raw[i].fd);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = 0;
		if (strcmp(link, "anon_inode:[io_uring]") != 0)
			r = &raw[i];
	}
	if (r)
		*r = (struct raw_ring){ .fd = fd, .flags = p->flags, .off = p->sq_off };
	pthread_mutex_unlock(&raw_lock);
	return 0;	/* a ring not recorded is judged unseen when it submits */
}

void md__raw_ring_mapped(int fd, uint64_t off, const void *addr, size_t len)
{
	if (!__atomic_load_n(&raw_used, __ATOMIC_RELAXED) || addr == MAP_FAILED)
		return;
	pthread_mutex_lock(&raw_lock);
	struct raw_ring *r = raw_find(fd);
	if (r && off == IORING_OFF_SQ_RING) {
		r->ring = (uintptr_t)addr;
		r->ring_len = len;
	} else if (r && off == IORING_OFF_SQES) {
		r->sqes = (uintptr_t)addr;
		r->sqes_len = len;
	}
	pthread_mutex_unlock(&raw_lock);
}

/* Whether the n entries from head (entries of 64 << shift bytes) leave
 * user memory alone, read a chunk at a time. */
static int raw_entries_write(const struct raw_ring *r, unsigned head, unsigned n, unsigned mask,
			     unsigned shift)
{
	uint32_t idx[RAW_CHUNK];
	unsigned char op[RAW_CHUNK];
	struct iovec loc[RAW_CHUNK], rem[RAW_CHUNK];
	for (unsigned done = 0; done < n;) {
		unsigned m = n - done < RAW_CHUNK ? n - done : RAW_CHUNK, first = (head + done) & mask;
		if (r->flags & IORING_SETUP_NO_SQARRAY) {
			for (unsigned i = 0; i < m; i++)
				idx[i] = (first + i) & mask;
		} else {
			/* The index array, in at most two pieces around the ring. */
			unsigned a = m < mask + 1 - first ? m : mask + 1 - first;
			struct iovec l[2] = { { idx, a * 4u }, { idx + a, (m - a) * 4u } };
			struct iovec q[2] = { { (void *)(r->ring + r->off.array + first * 4u), a * 4u },
					      { (void *)(r->ring + r->off.array), (m - a) * 4u } };
			if (peek(l, q, m > a ? 2 : 1))
				return 1;
		}
		size_t k = 0;
		for (unsigned i = 0; i < m; i++) {
			size_t at = ((size_t)idx[i] << shift) * sizeof(struct io_uring_sqe);
			if (idx[i] > mask)
				continue;	/* the kernel drops an entry out of range */
			if (at + (sizeof(struct io_uring_sqe) << shift) > r->sqes_len)
				return 1;
			loc[k] = (struct iovec){ &op[k], 1 };
			rem[k++] = (struct iovec){ (void *)(r->sqes + at + offsetof(struct io_uring_sqe, opcode)), 1 };
		}
		if (k && peek(loc, rem, k))
			return 1;
		for (size_t i = 0; i < k; i++)
			if (!op_leaves_memory(op[i]))
				return 1;
		done += m;
	}
	return 0;
}

int md__raw_ring_submits_writes(int fd, unsigned to_submit, unsigned enter_flags)
{
	if (!to_submit)
		return 0;
	/* A registered ring's number is no descriptor we know. */
	if (enter_flags & IORING_ENTER_REGISTERED_RING)
		return 1;
	pthread_mutex_lock(&raw_lock);
	struct raw_ring *found = raw_find(fd), r = found ? *found : (struct raw_ring){ .fd = -1 };
	pthread_mutex_unlock(&raw_lock);
	if (r.fd < 0 || !r.ring || !r.sqes)
		return 1;
	const struct io_sqring_offsets *o = &r.off;
	uint32_t head, tail, mask, entries;
	struct iovec loc[4] = { { &head, 4 }, { &tail, 4 }, { &mask, 4 }, { &entries, 4 } };
	struct iovec rem[4] = { { (void *)(r.ring + o->head), 4 }, { (void *)(r.ring + o->tail), 4 },
				{ (void *)(r.ring + o->ring_mask), 4 }, { (void *)(r.ring + o->ring_entries), 4 } };
	for (unsigned i = 0; i < 4; i++)
		if ((uintptr_t)rem[i].iov_base - r.ring + 4 > r.ring_len)
			return 1;
	if (peek(loc, rem, 4) || !entries || entries > 32768 || (entries & (entries - 1)) || mask != entries - 1)
		return 1;
	/* The kernel takes at most to_submit of what lies between head and
	 * tail, and never more than the ring holds. */
	unsigned n = tail - head;
	n = n < entries ? n : entries;
	n = n < to_submit ? n : to_submit;
	if (!(r.flags & IORING_SETUP_NO_SQARRAY) && (size_t)o->array + (size_t)entries * 4 > r.ring_len)
		return 1;
	return raw_entries_write(&r, head, n, mask, (r.flags & IORING_SETUP_SQE128) ? 1 : 0);
}

int md__ioctl_maps_dma(unsigned long request)
{
	/* The kernel looks at the low 32 bits only. */
	unsigned int r = (unsigned int)request;
	if (r == (unsigned int)VFIO_IOMMU_MAP_DMA || r == (unsigned int)IOMMU_IOAS_MAP)
		return 1;
	/* vhost-vdpa: a device behind it maps guest RAM through IOTLB
	 * updates, written to its descriptor; the set-up before them asks
	 * the vdpa-only ioctls (number 0x70 and up; the kernel's vhost-net,
	 * -scsi and -vsock, which copy through the page tables, stay
	 * below). */
	return _IOC_TYPE(r) == VHOST_VIRTIO && _IOC_NR(r) >= 0x70;
}
