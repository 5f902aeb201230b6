"""Adapters: the technologies behind the ports, and the outer ring that wires
them (settings, container, CLI). Driven adapters never import each other."""
