"""Pure, synchronous readers of cgroupfs, procfs and network namespaces."""
