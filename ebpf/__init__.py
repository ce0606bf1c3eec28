"""tpctl's eBPF engine: cgroup2 and tc programs (bpf_src/) compiled at run time through BCC,
settings in pinned maps under <bpffs>/tpctl/. The interface is ebpf.engine."""
