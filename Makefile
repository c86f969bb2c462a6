# Kernel VM targets (see README, "Kernel VMs"). Run as root.
#   make vm-test                                   # root tests under Debian's 6.1 (qemu, TCG)
#   make vm-test TESTS=tests/test_ipvs.py          # one file, every test in it
#   make vm-test KERNELS="linux-image-amd64 linux-image-6.1.0-50-amd64"
#   make verifier-baseline [UPDATE=1]              # this kernel against vagrant/verifier-baseline.json
#   make vm-verifier-baseline [UPDATE=1]           # the same inside the qemu VMs
#   make vagrant-validate | vagrant-test           # the Vagrant machines

KERNELS ?= linux-image-amd64
TESTS ?= -m root tests
UPDATE ?=

kernel_flags = $(foreach k,$(KERNELS),--kernel $(k))
update_flag = $(if $(UPDATE),--update)

.PHONY: vm-test vm-verifier-baseline verifier-baseline vagrant-validate vagrant-test

vm-test:
	vagrant/qemu-run $(kernel_flags) -- $(TESTS)

vm-verifier-baseline:
	vagrant/verifier-baseline --vm $(kernel_flags) $(update_flag)

verifier-baseline:
	vagrant/verifier-baseline $(update_flag)

vagrant-validate:
	cd vagrant && vagrant validate --ignore-provider

vagrant-test:
	vagrant/run-all
