package bpf

// The uapi headers come from Debian's linux-libc-dev (asm/ lives under the
// multiarch directory) and libbpf's from libbpf-dev.
//go:generate go tool bpf2go -target bpfel -go-package bpf -type pc_pod -type pc_port_key -type pc_conn_key -type pc_conn -type pc_counter -type pc_capture_mode -type pc_sock_key -type pc_upstream portcullis portcullis.bpf.c -- -O2 -g -Wall -Werror -I/usr/include/bpf -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu -Ilib
