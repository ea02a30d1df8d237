"""The HMC server: the one Markov chain, the broker that feeds it, and the run's outputs."""
