"""shoal: many disks on many machines as one pool of storage.

Layers, imported downwards only: cli -> gateway -> index -> client -> master -> daemon
-> proto -> cluster -> engine. See DESIGN.md in the shared folder.
"""

__version__ = "0.1.0"
