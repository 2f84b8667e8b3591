"""daemon: one per disk. Serves its engine on the native protocol (and reads over HTTP)."""
