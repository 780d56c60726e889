"""pveoi: end-to-end tests for KVM's paravirtual End-Of-Interrupt (PV EOI)."""

__version__ = "0.1.0"
