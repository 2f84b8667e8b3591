"""proto: sans-IO codecs. Bytes in, events out; nothing here opens a socket or a loop."""
