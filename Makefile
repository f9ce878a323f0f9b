# The two commands a fresh machine needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := qemu-utils libnbd-bin nbdkit fio fuse3 socat e2fsprogs
# a command each package provides, in the same order, to tell whether it is installed
DEB_PROBES := qemu-img nbdinfo nbdkit fio fusermount3 socat mkfs.ext4

.PHONY: demo test bench build venv debs clean firmware firmware-debs fuzz

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0,<3.4"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# rebuilds only the kernels whose .pyx/.pxd changed (none with SPLITPOINT_NO_EXTENSIONS=1), and the
# firmware's cffi host build (boards/firmware/host/build.py), which has no Python twin
build: venv
	$(PY) setup.py -q build_ext --inplace

debs:
	@missing=""; probes=($(DEB_PROBES)); debs=($(DEBS)); \
	for i in $${!probes[@]}; do command -v $${probes[$$i]} >/dev/null 2>&1 || missing="$$missing $${debs[$$i]}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# the firmware's cross toolchain and QEMU (Debian packages), installed when missing like `debs`
FIRMWARE_DEBS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
FIRMWARE_PROBES := arm-none-eabi-gcc /usr/lib/arm-none-eabi/include/string.h qemu-system-arm
FIRMWARE_PORTS := $(wildcard boards/firmware/ports/*/Makefile)

firmware-debs:
	@missing=""; probes=($(FIRMWARE_PROBES)); debs=($(FIRMWARE_DEBS)); \
	for i in $${!probes[@]}; do p=$${probes[$$i]}; \
		if [ "$${p#/}" != "$$p" ]; then [ -e "$$p" ] || missing="$$missing $${debs[$$i]}"; \
		else command -v $$p >/dev/null 2>&1 || missing="$$missing $${debs[$$i]}"; fi; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# builds every port of boards/firmware/ports/ and prints its text/data/bss
firmware: firmware-debs
	@for mk in $(FIRMWARE_PORTS); do port=$$(dirname $$mk); echo "== $$(basename $$port)"; \
		$(MAKE) -s -C $$port || exit 1; done

# the firmware core's parsers under AddressSanitizer/UBSan: a long run (CI runs a short one in the tests)
fuzz:
	$(MAKE) -C boards/firmware/host fuzz FUZZ_RUNS=$${FUZZ_RUNS:-5000000}

test: build debs firmware
	$(PY) -m pytest -q -n 2 --dist loadgroup

demo: build debs
	$(PY) -m splitpoint demo

bench: build debs
	$(PY) -m bench

clean:
	rm -rf build $(VENV) pyx/*.c pyx/*.so pyx/*.html *.egg-info
