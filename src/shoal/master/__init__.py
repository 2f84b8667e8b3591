"""master: the cluster map's authority (registration, heartbeats, epochs, pools, keys)."""
