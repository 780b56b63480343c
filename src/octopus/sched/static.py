"""`static`: the compile-time partition, never changed (the traditional spatial mapping)."""

from octopus.sched.base import PartitionedScheduler


class StaticScheduler(PartitionedScheduler):
    name = "static"
