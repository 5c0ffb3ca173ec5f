"""Facts about the host this process runs on."""
