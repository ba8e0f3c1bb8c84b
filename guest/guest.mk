# Test guest kit: Debian kernel + busybox initramfs + ext4 workload image.
# Included by the top Makefile (-include guest/guest.mk). `make guest` builds
#   $(B)/guest/vmlinuz, $(B)/guest/initramfs.cpio.gz  (guest/build-kernel.sh)
#   $(B)/guest/workload.img  ($(GUEST_WORKLOAD_MB) MiB of files, ext4)
# Nothing is rebuilt while the outputs exist and their scripts are unchanged
# (and, for workload.img, GUEST_WORKLOAD_MB and GUEST_SEED: workload.params);
# the kernel .deb is cached in $(B)/guest/cache. Other sizes:
# `make $(B)/guest/workload-96m.img`.
GUEST_DIR         := $(B)/guest
GUEST_WORKLOAD_MB ?= 160
GUEST_SEED        ?= 1

guest: $(GUEST_DIR)/vmlinuz $(GUEST_DIR)/initramfs.cpio.gz $(GUEST_DIR)/workload.img

$(GUEST_DIR)/vmlinuz $(GUEST_DIR)/initramfs.cpio.gz &: guest/build-kernel.sh guest/init
	scripts/install-deps.sh guest
	guest/build-kernel.sh $(GUEST_DIR)

# The image's parameters, rewritten only when they change: a new size or
# seed remakes the image, and the same ones do not. An image made before
# this stamp existed is made once more: what it was made with is unknown.
GUEST_PARAMS := mb=$(GUEST_WORKLOAD_MB) seed=$(GUEST_SEED)
$(GUEST_DIR)/workload.params: guest-params-force
	@mkdir -p $(@D)
	@[ "$$(cat $@ 2>/dev/null)" = '$(GUEST_PARAMS)' ] || echo '$(GUEST_PARAMS)' > $@
guest-params-force: ;

$(GUEST_DIR)/workload.img: guest/mkworkload.sh guest/mkimage.sh $(GUEST_DIR)/workload.params
	rm -rf $(GUEST_DIR)/workload.d
	guest/mkworkload.sh $(GUEST_DIR)/workload.d $(GUEST_WORKLOAD_MB) $(GUEST_SEED)
	guest/mkimage.sh $(GUEST_DIR)/workload.d $@
	rm -rf $(GUEST_DIR)/workload.d

$(GUEST_DIR)/workload-%m.img: guest/mkworkload.sh guest/mkimage.sh
	rm -rf $@.d
	guest/mkworkload.sh $@.d $* $(GUEST_SEED)
	guest/mkimage.sh $@.d $@
	rm -rf $@.d

guest-clean:
	rm -rf $(GUEST_DIR)/*.img $(GUEST_DIR)/workload.params $(GUEST_DIR)/vmlinuz $(GUEST_DIR)/initramfs.cpio.gz

.PHONY: guest guest-clean guest-params-force
