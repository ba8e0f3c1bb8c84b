/*
 * stub_ibverbs.c - a stand-in for libibverbs in the tests: there is no RDMA
 * adapter here. It answers as the real library does when a registration
 * works, so a test can tell the agent's interposer passed the call on.
 */
#include <stddef.h>
#include <stdint.h>

struct ibv_pd;
struct ibv_mr {
	void *addr;
	size_t length;
};

static struct ibv_mr region;

/* Not through the exported ibv_reg_mr: the agent's interposer would take
 * that call, and the test of ibv_reg_mr_iova2's could not fail. */
static struct ibv_mr *reg(void *addr, size_t length)
{
	region = (struct ibv_mr){ addr, length };
	return &region;
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);
struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				unsigned int access);

__attribute__((visibility("default"))) struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length,
								int access)
{
	(void)pd;
	(void)access;
	return reg(addr, length);
}

__attribute__((visibility("default"))) struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr,
								      size_t length, uint64_t iova,
								      unsigned int access)
{
	(void)pd;
	(void)iova;
	(void)access;
	return reg(addr, length);
}

/* 0, as the real one's success: the region now over addr (flags 1,
 * IBV_REREG_MR_CHANGE_TRANSLATION). */
int ibv_rereg_mr(struct ibv_mr *mr, int flags, struct ibv_pd *pd, void *addr, size_t length, int access);
__attribute__((visibility("default"))) int ibv_rereg_mr(struct ibv_mr *mr, int flags, struct ibv_pd *pd,
							void *addr, size_t length, int access)
{
	(void)mr;
	(void)pd;
	(void)access;
	if (flags & 1)
		reg(addr, length);
	return 0;
}
