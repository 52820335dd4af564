"""What the client and the nodes both know about the cluster: node statistics,
membership from heartbeats, and the consistent-hash ring."""
