#!/bin/sh
# Runs inside the domain, in the job directory, from the InputSandbox.
echo "Hello, $1, from $(hostname): Linux $(uname -r) on $(uname -m)"
echo "VO image: $(head -n 1 /etc/sd-image)"
echo "Resources: $(nproc) vCPU, $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) MiB"
echo "Job directory: $(pwd), holding: $(ls)"
echo "hello from $(hostname) at $(date -u +%FT%TZ)" > hello.out
