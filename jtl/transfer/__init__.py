"""How a pretrained network is reused: the strategy registry, and linear probes on cached
frozen features (`probe` fits them; `linear_probe` is that strategy as a run)."""
