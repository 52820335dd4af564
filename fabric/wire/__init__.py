"""What crosses the network, in every process: messages, payloads, authentication."""
