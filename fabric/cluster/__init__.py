"""What the client and the nodes both know about the cluster: node statistics,
membership (gossip, and liveness by phi-accrual detection), and the
consistent-hash ring."""
