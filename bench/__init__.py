"""Benchmarks: the redirect engines side by side against the no-redirect baselines (issue 4).

`python -m bench` builds a throwaway sandbox (sandbox/netns.py), starts nginx and `iperf3 -s` in
the server namespace and HAProxy as the unmodified sidecar in the app namespace, and measures,
interleaved round by round, each case: direct, explicit, iptables-nft, iptables-legacy, nftables,
ebpf, ebpf-noaccel. Then the exclusion-scale sweep (with the nftables engine's target) and the
control path (install, reconfigure, no-op reinstall and uninstall cost); the eBPF cases also
report what each BPF program itself costs (bpfstats.py).
Results land in bench/results/ (RESULTS.md, bench.png, results.json).

  cli.py      options and the entry point      runner.py   one session, start to end
  cases.py    what each case connects to and which install flags it needs
  configs.py  HAProxy/nginx configs, exclusion sets, CPU layout (pure)
  stack.py    the sandbox with its server, sidecar and tpctl calls
  procs.py    children timed with wait4 (wall time, rusage), CPU counters
  measure.py  one measurement: wrk / iperf3 run, verified through HAProxy's counters
  scale.py    connection rate vs the number of excluded ports and CIDRs
  control.py  wall time and peak memory of tpctl install / reinstall / uninstall
  bpfstats.py the eBPF programs' own runs and run time (BPF statistics)
  parse.py    wrk and iperf3 output (pure)   stats.py  medians, spread, ratios (pure)
  machine.py  the machine description       report.py RESULTS.md   plot.py  bench.png
"""
