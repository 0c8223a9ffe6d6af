"""The reference simulator (the executable definition of the spiking semantics) and the
float forward of ANN graphs."""
