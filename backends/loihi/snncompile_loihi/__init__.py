"""snncompile-loihi: the Intel Loihi 2 backend of snncompile (Lava, bit-accurate simulation)."""

__version__ = "0.1.0"
