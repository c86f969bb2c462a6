# Kernel VM targets (see README, "Kernel VMs" and "Kernels"). Run as root.
# Kernels are Debian packages fetched through vagrant/qemu-run's private apt
# configuration (bookworm, bookworm-backports, bullseye): a series (5.10,
# 6.1, 6.12), an image package (linux-image-5.10.0-32-amd64) or a meta one.
#   make vm-test                                   # root tests under Debian's 6.1 (qemu, TCG)
#   make vm-test TESTS=tests/test_ipvs.py          # one file, every test in it
#   make vm-test KERNELS="5.10 6.12"
#   make vm-matrix                                 # the kernel suites on 5.10, 6.1 and 6.12
#   make ci-matrix                                 # what CI runs in qemu (vagrant/ci-matrix)
#   make verifier-baseline [UPDATE=1]              # this kernel against vagrant/verifier-baseline.json
#   make vm-verifier-baseline [UPDATE=1]           # the same in the qemu VMs of MATRIX
#   make vagrant-validate | vagrant-test           # the Vagrant machines

KERNELS ?= linux-image-amd64
MATRIX ?= 5.10 6.1 6.12
TESTS ?= -m root tests
KERNEL_SUITES ?= -m root tests/test_sock_lb.py tests/test_tc_nat.py tests/test_layout.py \
	tests/test_libbpf.py tests/test_kernel_fallbacks.py
UPDATE ?=

kernel_flags = $(foreach k,$(KERNELS),--kernel $(k))
matrix_flags = $(foreach k,$(MATRIX),--kernel $(k))
update_flag = $(if $(UPDATE),--update)

.PHONY: vm-test vm-matrix ci-matrix vm-verifier-baseline verifier-baseline vagrant-validate vagrant-test

vm-test:
	vagrant/qemu-run $(kernel_flags) -- $(TESTS)

vm-matrix:
	vagrant/qemu-run $(matrix_flags) -- $(KERNEL_SUITES)

ci-matrix:
	vagrant/ci-matrix

vm-verifier-baseline:
	vagrant/verifier-baseline --vm $(matrix_flags) $(update_flag)

verifier-baseline:
	vagrant/verifier-baseline $(update_flag)

vagrant-validate:
	cd vagrant && vagrant validate --ignore-provider

vagrant-test:
	vagrant/run-all
