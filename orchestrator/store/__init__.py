"""The memory: leader lease, service state and the run journal (sqlite; etcd later)."""
