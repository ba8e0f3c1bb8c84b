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

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access);
struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				unsigned int access);

__attribute__((visibility("default"))) struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length,
								int access)
{
	(void)pd;
	(void)access;
	region = (struct ibv_mr){ addr, length };
	return &region;
}

__attribute__((visibility("default"))) struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr,
								      size_t length, uint64_t iova,
								      unsigned int access)
{
	(void)iova;
	return ibv_reg_mr(pd, addr, length, (int)access);
}
