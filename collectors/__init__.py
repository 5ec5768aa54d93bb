"""NØMADE's collectors, node and head side: what the agent and the aggregator both read with.

One module per collector holds its read (the file it reads, the command it runs, with a timeout)
beside its pure parsers (`parse(text, source) -> records`, no I/O, no clock):
`cgroup`, `procio` (the agent's job sampler), `sysstat`, `pressure`, `gpu`, `nfs`, `disk`,
`health`, `scratch`, `licenses`, and `slurm/` for Slurm's commands.  `registry` lists them all
(name, side, default interval, read, `nomadectl parse` kinds); `runner` runs them.

This package imports neither side (`aggregator`, `nodeagent`) nor `models` (tests/layering.py),
and nothing the agent imports from it loads numpy.
"""
