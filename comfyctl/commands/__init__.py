"""One module per command (or group of related commands); each exports ``command``."""
