"""fastgw's bench suite: fastgw side by side with nginx and the direct path.

``python -m bench`` starts a native upstream (nginx, one worker), then runs every
scenario three ways -- straight to the upstream (the ceiling), through nginx as a
reverse proxy, through fastgw -- interleaved for several rounds, with the proxy under
test pinned to its own core(s).  It writes a Markdown table, a JSON file and a PNG
chart, and checks the ratios in ``bench/targets.yaml``.  docs/bench.md explains how to
run it and how to read it.

One concept per module:
  cli          flags, the top-level flow, the exit code
  scenarios    what each scenario sends and which configurations it runs
  pinning      which CPUs the proxy and the load get, and the taskset prefix
  procs        starting, waiting for and stopping processes; free ports
  procstats    CPU time and USS/PSS of a process tree, from /proc
  nginx        nginx config rendering (upstream and reverse proxy), stub_status
  fastgw_config  fastgw config rendering (bare route, policy chain)
  systems      the configurations under test: direct, nginx, fastgw
  wrk          the wrk command line, its Lua script and its JSON summary
  openloop     a fixed-rate (open-loop) generator, run as ``python -m bench.openloop``
  load         wrk and openloop behind one interface, and what makes a run invalid
  runner       one measured run: warm up, measure, sample CPU/memory/upstream
  session      interleaved rounds over scenarios and configurations
  stats        medians, min..max and per-round ratios
  goals        bench/targets.yaml: loading and checking
  report       the Markdown and JSON writers
  interp       which interpreter fastgw runs under and how it was built (PGO, LTO)
  chart        the PNG chart (matplotlib, a bench-only extra)
"""
